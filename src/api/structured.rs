//! Structured output, as the dialects ask for it: OpenAI's `response_format` and Ollama's `format` become one
//! engine [`Grammar`], compiled before the first byte so that a bad schema is a 400.

use serde_json::{json, Value};

use super::error::ApiError;
use crate::engine::grammar::{Constraint, Grammar, GrammarError};
use crate::engine::Shared;

/// How JSON is laid out under a schema: one space after `:` and `,`, no other whitespace. A small model given
/// free whitespace can emit newlines forever; a fixed layout also makes outputs repeatable.
fn layout() -> Value {
    json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
}

/// A JSON-schema grammar with rill's layout (unless the schema sets its own `x-guidance` options). Objects
/// allow no properties beyond their own unless the schema says otherwise ([`close_objects`]), and numbers stay
/// within JSON's safe-integer range unless it sets bounds ([`bound_numbers`]): still valid answers, and a small
/// model can neither wander into keys nobody asked for nor write a 70-digit integer.
pub fn json_grammar(schema: &Value) -> Result<Grammar, ApiError> {
    let Value::Object(_) = schema else {
        return Err(ApiError::bad_request(format!(
            "a JSON schema must be an object, got {schema}"
        )));
    };
    let mut schema = schema.clone();
    close_objects(&mut schema);
    bound_numbers(&mut schema);
    let Value::Object(mut map) = schema else {
        unreachable!("checked above")
    };
    map.entry("x-guidance").or_insert_with(layout);
    Ok(Grammar::JsonSchema(Value::Object(map)))
}

/// An object schema that does not say otherwise allows no properties beyond its own (OpenAI's strict mode;
/// applied to every object schema inside, too).
pub fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            schemas_inside(map).into_iter().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Keywords whose value maps names to schemas.
const NAMED_SUBSCHEMAS: [&str; 5] = [
    "properties",
    "patternProperties",
    "dependentSchemas",
    "$defs",
    "definitions",
];

/// Keywords whose value is a literal, never to be rewritten.
const LITERALS: [&str; 4] = ["const", "enum", "default", "examples"];

/// The schemas directly inside a schema object, by keyword: a property's name is never read as a keyword
/// (a property called `default` is a schema; one called `properties` is not a map of them), and literal
/// values are never rewritten. Every other value may hold schemas (`items`, `anyOf`, or anything a `$ref` may
/// point to, such as `#/components/A`), so it is walked.
fn schemas_inside(map: &mut serde_json::Map<String, Value>) -> Vec<&mut Value> {
    let mut inside = Vec::new();
    for (k, v) in map.iter_mut() {
        let k = k.as_str();
        if LITERALS.contains(&k) {
            continue;
        }
        if NAMED_SUBSCHEMAS.contains(&k) && v.is_object() {
            inside.extend(v.as_object_mut().expect("an object").values_mut());
        } else {
            inside.push(v);
        }
    }
    inside
}

/// ±(2^53 − 1): the integers every JSON reader holds exactly.
const SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Gives every integer or number schema without a bound the safe-integer bound on that side (applied to every
/// schema inside, too).
pub fn bound_numbers(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let numeric = |t: &Value| matches!(t.as_str(), Some("integer" | "number"));
            let is_numeric = map.get("type").is_some_and(|t| match t {
                Value::Array(ts) => ts.iter().any(numeric),
                t => numeric(t),
            });
            if is_numeric {
                if !map.contains_key("minimum") && !map.contains_key("exclusiveMinimum") {
                    map.insert("minimum".into(), json!(-SAFE_INTEGER));
                }
                if !map.contains_key("maximum") && !map.contains_key("exclusiveMaximum") {
                    map.insert("maximum".into(), json!(SAFE_INTEGER));
                }
            }
            schemas_inside(map).into_iter().for_each(bound_numbers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_numbers),
        _ => {}
    }
}

/// Any JSON object.
pub fn any_object() -> Grammar {
    json_grammar(&json!({ "type": "object" })).expect("an object schema")
}

/// OpenAI's `response_format`: `text` (nothing), `json_object`, or `json_schema` with its `schema`.
pub fn openai_response_format(v: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match v.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(any_object())),
        Some("json_schema") => {
            let spec = v.get("json_schema").ok_or_else(|| {
                ApiError::bad_request("`response_format.json_schema` is required for type `json_schema`")
            })?;
            match spec.get("schema") {
                None | Some(Value::Null) => Ok(Some(any_object())),
                Some(schema) => json_grammar(schema).map(Some),
            }
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "`response_format` type `{other}` is not supported; use text, json_object or json_schema"
        ))),
        None => Err(ApiError::bad_request("`response_format` needs a `type`")),
    }
}

/// Ollama's `format`: `"json"`, a JSON schema object, or empty for none.
pub fn ollama_format(v: Option<&Value>) -> Result<Option<Grammar>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(any_object())),
        Some(Value::String(s)) => Err(ApiError::bad_request(format!(
            "format `{s}` is not supported; use \"json\" or a JSON schema"
        ))),
        Some(schema @ Value::Object(_)) => json_grammar(schema).map(Some),
        Some(other) => Err(ApiError::bad_request(format!(
            "format must be \"json\" or a JSON schema object, got {other}"
        ))),
    }
}

/// Compiles `grammar` for the served model: an invalid or unsupported schema is the request's fault (400).
pub fn compile(shared: &Shared, grammar: &Grammar) -> Result<Constraint, ApiError> {
    shared.constraint(grammar).map_err(|e| match e {
        GrammarError::Invalid(m) => {
            ApiError::bad_request(format!("invalid schema or grammar: {m}"))
        }
        GrammarError::Unavailable(m) => ApiError::Internal(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats() {
        assert_eq!(openai_response_format(None).unwrap(), None);
        assert_eq!(
            openai_response_format(Some(&json!({"type": "text"}))).unwrap(),
            None
        );
        assert_eq!(
            openai_response_format(Some(&json!({"type": "json_object"}))).unwrap(),
            Some(any_object())
        );
        let Some(Grammar::JsonSchema(s)) = openai_response_format(Some(&json!({
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "array"}, "strict": true}
        })))
        .unwrap() else {
            panic!("a schema grammar")
        };
        assert_eq!(s["type"], "array");
        let Some(Grammar::JsonSchema(s)) = openai_response_format(Some(&json!({
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "c": {"type": "object", "properties": {}, "additionalProperties": true}
            }}}
        })))
        .unwrap() else {
            panic!("a schema grammar")
        };
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert_eq!(s["properties"]["c"]["additionalProperties"], true);
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
        for bad in [
            json!({"type": "xml"}),
            json!({}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            assert!(openai_response_format(Some(&bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn property_names_are_not_read_as_keywords() {
        let schema = json!({"type": "object", "properties": {
            "default": {"type": "integer"},
            "enum": {"type": "object", "properties": {"x": {"type": "number"}}},
            "properties": {"type": "string"},
        }, "$defs": {"n": {"type": "integer"}}, "anyOf": [{"type": "object", "properties": {}}],
           "default": {"type": "integer"}, "enum": [{"properties": {}}],
           "components": {"A": {"type": "object", "properties": {"n": {"type": "integer"}}}}});
        let Grammar::JsonSchema(s) = json_grammar(&schema).unwrap() else {
            panic!("a schema grammar")
        };
        let p = &s["properties"];
        assert_eq!(p["default"]["maximum"], SAFE_INTEGER);
        assert_eq!(p["enum"]["additionalProperties"], false);
        assert_eq!(p["enum"]["properties"]["x"]["minimum"], -SAFE_INTEGER);
        assert_eq!(p.as_object().unwrap().len(), 3, "{p}");
        assert_eq!(s["$defs"]["n"]["minimum"], -SAFE_INTEGER);
        assert_eq!(s["anyOf"][0]["additionalProperties"], false);
        // A schema under another key (a `$ref` may point there) is closed and bounded too.
        let a = &s["components"]["A"];
        assert_eq!(a["additionalProperties"], false);
        assert_eq!(a["properties"]["n"]["maximum"], SAFE_INTEGER);
        // Literal values stay as they were.
        assert_eq!(s["default"], json!({"type": "integer"}));
        assert_eq!(s["enum"], json!([{"properties": {}}]));
    }

    #[test]
    fn ollama_formats() {
        assert_eq!(ollama_format(Some(&json!(""))).unwrap(), None);
        assert_eq!(
            ollama_format(Some(&json!("json"))).unwrap(),
            Some(any_object())
        );
        assert!(matches!(
            ollama_format(Some(&json!({"type": "object"}))).unwrap(),
            Some(Grammar::JsonSchema(_))
        ));
        assert!(ollama_format(Some(&json!("yaml"))).is_err());
        assert!(ollama_format(Some(&json!(7))).is_err());
    }
}
