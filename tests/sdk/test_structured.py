"""Structured output against rill through the real clients: JSON-schema constrained decoding must make every
answer of the tiny model parse and validate, whatever its quality.

- openai: `chat.completions.parse(response_format=PydanticModel)` and the `chat.completions.stream(...)` helper,
  `response_format={"type": "json_object"}`, and a hand-written list of varied JSON schemas sent as
  `{"type": "json_schema", "json_schema": {"name", "schema", "strict": True}}`, a few streamed, all validated
  with `jsonschema` and all finishing with "stop" (a cut answer would be incomplete JSON);
- bad schemas and bad `response_format`s are a 400 before the first byte, streamed or not;
- ollama: `format="json"` and `format=<JSON schema>` on chat and generate, streamed and not.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import ollama
import openai
import pytest
from conftest import TIMEOUT
from pydantic import BaseModel, Field

# Constrained output must be complete JSON, so every structured request leaves room for the whole answer.
SCHEMA_MAX_TOKENS = 400
# The schema list runs this many requests at a time.
CONCURRENCY = 4


def obj(properties, required=None, **extra):
    """An object schema with no other properties; every property is required unless `required` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


def text(max_length=40, **extra):
    return {"type": "string", "maxLength": max_length, **extra}


# (name, prompt, schema): each answer must validate. Strings mostly have a maxLength and arrays a maxItems so that
# a weak model cannot ramble past SCHEMA_MAX_TOKENS; a few are left unbounded, as pydantic models send them.
SCHEMAS = [
    ("person", "Describe a person named Alice who is 30 years old.",
     obj({"name": text(), "age": {"type": "integer", "minimum": 0, "maximum": 130}})),
    ("person_unbounded", "Give the name and job of a famous scientist.",
     obj({"name": {"type": "string"}, "job": {"type": "string"}})),
    ("city_country", "Name a large city and the country it is in.",
     obj({"city": text(), "country": text()})),
    ("yes_no", "Is the sky blue on a clear day?",
     obj({"answer": {"type": "boolean"}})),
    ("color_enum", "What color is grass?",
     obj({"color": {"type": "string", "enum": ["red", "green", "blue"]}})),
    ("const_version", "Give a short name for a software project, version 1.",
     obj({"version": {"const": 1}, "name": text(20)})),
    ("integer_range", "Pick a number from 1 to 10.",
     obj({"n": {"type": "integer", "minimum": 1, "maximum": 10}})),
    ("exclusive_number", "What is the temperature outside today in celsius?",
     obj({"temperature": {"type": "number", "exclusiveMinimum": -50, "exclusiveMaximum": 60}})),
    ("probability", "How likely is rain tomorrow, as a probability?",
     obj({"p": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("tags", "Give one to three tags for a blog post about cooking pasta.",
     obj({"tags": {"type": "array", "items": text(15), "minItems": 1, "maxItems": 3}})),
    ("coordinates_pair", "Give the coordinates of Paris as two numbers.",
     obj({"coords": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}})),
    ("nested_address", "Give the name and postal address of a bakery.",
     obj({"name": text(), "address": obj({"street": text(), "city": text(), "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})})),
    ("optional_subtitle", "Give the title of a book.",
     obj({"title": text(), "subtitle": text()}, required=["title"])),
    ("nullable_middle_name", "Give the first, middle and last name of a person; the middle name may be null.",
     obj({"first": text(20), "middle": {"anyOf": [text(20), {"type": "null"}]}, "last": text(20)})),
    ("null_value", "Answer with nothing at all.",
     obj({"nothing": {"type": "null"}})),
    ("anyof_id", "Give an identifier for a user: a number or a short code.",
     obj({"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 1000}, {"type": "string", "pattern": "^[a-z]{3}[0-9]{2}$"}]}})),
    ("airport_code", "What is the three-letter code of an airport in London?",
     obj({"code": {"type": "string", "pattern": "^[A-Z]{3}$"}})),
    ("phone_number", "Give a short phone number.",
     obj({"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}})),
    ("word_length", "Give a word of three to twelve letters that describes the sea.",
     obj({"word": {"type": "string", "minLength": 3, "maxLength": 12}})),
    ("shopping_list", "Make a shopping list of up to three items with quantities.",
     obj({"items": {"type": "array", "minItems": 1, "maxItems": 3,
                    "items": obj({"name": text(20), "qty": {"type": "integer", "minimum": 1, "maximum": 99}})}})),
    ("matrix_2x2", "Give a 2 by 2 matrix of small integers.",
     obj({"matrix": {"type": "array", "minItems": 2, "maxItems": 2,
                     "items": {"type": "array", "minItems": 2, "maxItems": 2,
                               "items": {"type": "integer", "minimum": -9, "maximum": 9}}}})),
    ("star_rating", "Rate the movie Titanic from 1 to 5 stars.",
     obj({"rating": {"type": "integer", "enum": [1, 2, 3, 4, 5]}})),
    ("switch_state", "Is the light switch on, off, or unknown (null)?",
     obj({"status": {"enum": ["on", "off", None]}})),
    ("book", "Describe a classic novel: title, author, year and up to two genres.",
     obj({"title": text(), "author": text(), "year": {"type": "integer", "minimum": 1450, "maximum": 2030},
          "genres": {"type": "array", "maxItems": 2, "items": {"type": "string", "enum": ["fiction", "mystery", "romance", "science", "history"]}}})),
    ("recipe", "Give a simple recipe for pancakes.",
     obj({"name": text(), "ingredients": {"type": "array", "minItems": 1, "maxItems": 4, "items": text(20)},
          "minutes": {"type": "integer", "minimum": 1, "maximum": 300}})),
    ("event_date", "Describe a party on the first of May 2025.",
     obj({"name": text(), "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
          "attendees": {"type": "integer", "minimum": 0, "maximum": 500}})),
    ("deep_nesting", "Put the number 7 deep inside nested objects a, b, c.",
     obj({"a": obj({"b": obj({"c": obj({"value": {"type": "integer"}})})})})),
    ("user_flags", "Describe the flags of a new user account.",
     obj({"is_admin": {"type": "boolean"}, "is_active": {"type": "boolean"}, "verified": {"type": "boolean"}})),
    ("rgb_color", "Give the RGB values of orange.",
     obj({c: {"type": "integer", "minimum": 0, "maximum": 255} for c in ("r", "g", "b")})),
    ("weather_report", "Report the weather in Madrid.",
     obj({"city": text(), "temperature": {"type": "number", "minimum": -90, "maximum": 60},
          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
          "conditions": {"type": "string", "enum": ["sunny", "cloudy", "rainy", "snowy"]}})),
    ("product", "Describe a product in a shop: its SKU, price and whether it is in stock.",
     obj({"sku": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{4}$"},
          "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000}, "in_stock": {"type": "boolean"}})),
    ("shape", "Describe a circle or a square and its size.",
     obj({"shape": {"anyOf": [
         obj({"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0, "maximum": 100}}),
         obj({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 100}})]}})),
    ("greeting", "Say hello to a friend.",
     obj({"type": {"const": "greeting"}, "text": text()})),
    ("sentiment", "What is the sentiment of the sentence 'I love this phone'?",
     obj({"sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
          "confidence": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("todo_list", "Write a to-do list of up to three tasks for a Saturday.",
     obj({"todos": {"type": "array", "maxItems": 3, "items": obj({"task": text(30), "done": {"type": "boolean"}})}})),
    ("optional_settings", "Describe a user named Bob and, if you like, his theme setting.",
     obj({"user": obj({"name": text(20)}), "settings": obj({"theme": {"type": "string", "enum": ["light", "dark"]}})},
         required=["user"])),
    ("key_values", "Give up to three short lowercase keys with integer values.",
     obj({"pairs": {"type": "array", "maxItems": 3,
                    "items": obj({"key": {"type": "string", "pattern": "^[a-z]{1,8}$"}, "value": {"type": "integer", "minimum": -1000, "maximum": 1000}})}})),
    ("line_segment", "Give a line from one point to another.",
     {**obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}),
      "$defs": {"point": obj({"x": {"type": "integer", "minimum": -100, "maximum": 100},
                              "y": {"type": "integer", "minimum": -100, "maximum": 100}})}}),
    ("negative_offset", "Give a timezone offset west of London, in hours, as a negative number.",
     obj({"offset": {"type": "integer", "minimum": -12, "maximum": -1}})),
    ("exclusive_integer", "How many wheels does a tricycle have?",
     obj({"count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 5}})),
    ("bank_balance", "What is the balance of a bank account?",
     obj({"balance": {"type": "number", "minimum": -1000, "maximum": 1000}})),
    ("empty_metadata", "Give an empty metadata object.",
     obj({"metadata": obj({})})),
    ("single_enum", "Do you agree?",
     obj({"answer": {"type": "string", "enum": ["yes"]}})),
    ("integer_or_boolean", "Give a value that is either a number or true/false.",
     obj({"value": {"type": ["integer", "boolean"]}})),
    ("some_numbers", "List three to five small integers.",
     obj({"numbers": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "minItems": 3, "maxItems": 5}})),
    ("movie", "Describe the movie Jaws.",
     obj({"title": text(), "year": {"type": "integer", "minimum": 1888, "maximum": 2030},
          "rating": {"type": "number", "minimum": 0, "maximum": 10}, "cast": {"type": "array", "maxItems": 3, "items": text(30)}})),
    ("email", "Give an email address for a person named Tom.",
     obj({"email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.[a-z]{2,3}$"}})),
    ("clock_time", "At what time does a school day start?",
     obj({"time": {"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"}})),
    ("invoice", "Write an invoice with up to three lines.",
     obj({"number": {"type": "string", "pattern": "^INV-[0-9]{4}$"},
          "lines": {"type": "array", "maxItems": 3, "items": obj({"description": text(30), "amount": {"type": "number", "minimum": 0, "maximum": 1000}})},
          "total": {"type": "number", "minimum": 0, "maximum": 3000}})),
    ("language", "Which language is spoken in Spain, and what is its two-letter code?",
     obj({"language": {"type": "string", "enum": ["english", "spanish", "french", "german"]},
          "iso": {"type": "string", "pattern": "^[a-z]{2}$"}})),
    ("lat_lon", "Where is Tokyo? Give latitude and longitude.",
     obj({"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}})),
    ("boolean_or_null", "Is the door locked? Answer true, false or null if unknown.",
     obj({"locked": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}})),
    ("teams", "Name up to two sports teams and up to three of their players.",
     obj({"teams": {"type": "array", "maxItems": 2,
                    "items": obj({"name": text(30), "members": {"type": "array", "maxItems": 3, "items": text(20)}})}})),
    ("summary", "Summarize the story of Cinderella.",
     obj({"summary": text(80), "keywords": {"type": "array", "maxItems": 3, "items": text(15)}})),
    ("year_only_minimum", "In which year did the 21st century start?",
     obj({"year": {"type": "integer", "minimum": 2000}})),
    ("pet", "Describe a pet: its name, species and age; the age is optional.",
     obj({"name": text(20), "species": {"type": "string", "enum": ["cat", "dog", "fish", "bird"]},
          "age": {"type": "integer", "minimum": 0, "maximum": 40}}, required=["name", "species"])),
    ("score_board", "Give the score of a football match between two teams.",
     obj({"home": obj({"team": text(20), "goals": {"type": "integer", "minimum": 0, "maximum": 20}}),
          "away": obj({"team": text(20), "goals": {"type": "integer", "minimum": 0, "maximum": 20}})})),
    ("unit_conversion", "Convert 1 mile to kilometers.",
     obj({"from_unit": {"const": "mile"}, "to_unit": {"const": "km"}, "value": {"type": "number", "exclusiveMinimum": 0, "maximum": 10}})),
]

# A few of the schemas also go through the streamed path.
STREAMED = {"person", "nested_address", "shopping_list", "shape", "line_segment", "teams"}

assert len(SCHEMAS) >= 50 and len({name for name, _, _ in SCHEMAS}) == len(SCHEMAS)
assert STREAMED <= {name for name, _, _ in SCHEMAS}
for _name, _prompt, _schema in SCHEMAS:
    jsonschema.Draft202012Validator.check_schema(_schema)


class Address(BaseModel):
    street: str
    city: str


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    address: Address


class City(BaseModel):
    city: str
    country: str


PERSON_PROMPT = [{"role": "user", "content": "Invent a person with a name, an age and an address."}]
CITY_PROMPT = [{"role": "user", "content": "Name a big city and its country."}]


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


@pytest.fixture(scope="module")
def ollama_client(base):
    return ollama.Client(host=base, timeout=TIMEOUT)


def json_schema_format(name, schema):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


def complete(client, model, prompt, response_format, stream):
    """One greedy request; returns (content, finish_reason), accumulating the deltas when streamed."""
    args = dict(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=SCHEMA_MAX_TOKENS,
                temperature=0, response_format=response_format)
    if not stream:
        r = client.chat.completions.create(**args)
        return r.choices[0].message.content, r.choices[0].finish_reason
    parts, finish = [], []
    for chunk in client.chat.completions.create(**args, stream=True):
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            if chunk.choices[0].finish_reason:
                finish.append(chunk.choices[0].finish_reason)
    assert len(finish) == 1, f"finish_reason in {len(finish)} chunks"
    return "".join(parts), finish[0]


def check_schema_answer(client, model, name, prompt, schema):
    """None when the answer validates, else a line saying what went wrong."""
    stream = name in STREAMED
    try:
        content, finish = complete(client, model, prompt, json_schema_format(name, schema), stream)
        assert finish == "stop", f"finish_reason {finish!r}"
        jsonschema.validate(json.loads(content), schema)
    except Exception as e:  # noqa: BLE001: every failure is reported together below
        return f"{name}{' (streamed)' if stream else ''}: {type(e).__name__}: {str(e)[:300]}"
    return None


def test_every_schema_answer_validates(client, model):
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        results = list(pool.map(lambda s: check_schema_answer(client, model, *s), SCHEMAS))
    failures = [r for r in results if r]
    assert not failures, f"{len(failures)} of {len(SCHEMAS)} schemas failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", ["nested_address", "anyof_id", "key_values"])
def test_streamed_schema_answer_matches_non_streamed(client, model, name):
    _, prompt, schema = next(s for s in SCHEMAS if s[0] == name)
    fmt = json_schema_format(name, schema)
    assert complete(client, model, prompt, fmt, stream=True) == complete(client, model, prompt, fmt, stream=False)


def test_json_object_mode(client, model):
    prompt = "Return a JSON object with the keys name and age for a person called Alice who is 30."
    for stream in (False, True):
        content, finish = complete(client, model, prompt, {"type": "json_object"}, stream)
        assert finish == "stop"
        assert isinstance(json.loads(content), dict)


def test_parse_with_pydantic_model(client, model):
    r = client.chat.completions.parse(model=model, messages=PERSON_PROMPT, response_format=Person,
                                      max_tokens=SCHEMA_MAX_TOKENS, temperature=0)
    message = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Person)
    assert message.refusal is None
    assert Person.model_validate_json(message.content) == message.parsed


def test_stream_helper_with_pydantic_model(client, model):
    whole = client.chat.completions.parse(model=model, messages=CITY_PROMPT, response_format=City,
                                          max_tokens=SCHEMA_MAX_TOKENS, temperature=0)
    with client.chat.completions.stream(model=model, messages=CITY_PROMPT, response_format=City,
                                        max_tokens=SCHEMA_MAX_TOKENS, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    done = [e for e in events if e.type == "content.done"]
    assert len(done) == 1 and isinstance(done[0].parsed, City)
    assert "".join(e.delta for e in events if e.type == "content.delta") == done[0].content
    assert final.choices[0].finish_reason == "stop"
    assert isinstance(final.choices[0].message.parsed, City)
    assert final.choices[0].message.parsed == whole.choices[0].message.parsed == done[0].parsed


BAD_SCHEMA = {"type": "object", "properties": {"a": {"type": "nonsense"}}}
# The schema must be invalid for any JSON Schema implementation, or the 400 below would prove nothing.
try:
    jsonschema.Draft202012Validator.check_schema(BAD_SCHEMA)
    raise AssertionError("BAD_SCHEMA is valid")
except jsonschema.SchemaError:
    pass
BAD_RESPONSE_FORMATS = {
    "unknown_type_in_schema": json_schema_format("bad", BAD_SCHEMA),
    "dangling_ref": json_schema_format("bad", {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}),
    "json_schema_missing": {"type": "json_schema"},
    "unknown_format_type": {"type": "yaml"},
}


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
@pytest.mark.parametrize("case", list(BAD_RESPONSE_FORMATS))
def test_bad_response_format_is_400_before_any_byte(client, model, case, stream):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=CITY_PROMPT, max_tokens=16, temperature=0,
                                       response_format=BAD_RESPONSE_FORMATS[case], stream=stream)
    assert e.value.status_code == 400


OLLAMA_OPTIONS = {"num_predict": SCHEMA_MAX_TOKENS, "temperature": 0}
OLLAMA_PROMPT = "Name a big city and its country. Answer in JSON."


def ollama_chat(client, model, fmt, stream):
    args = dict(model=model, messages=[{"role": "user", "content": OLLAMA_PROMPT}], format=fmt, options=OLLAMA_OPTIONS)
    if not stream:
        r = client.chat(**args, stream=False)
        return r.message.content, r.done_reason
    parts = list(client.chat(**args, stream=True))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    return "".join(p.message.content for p in parts), parts[-1].done_reason


def ollama_generate(client, model, fmt, stream):
    args = dict(model=model, prompt=OLLAMA_PROMPT, format=fmt, options=OLLAMA_OPTIONS)
    if not stream:
        r = client.generate(**args, stream=False)
        return r.response, r.done_reason
    parts = list(client.generate(**args, stream=True))
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    return "".join(p.response for p in parts), parts[-1].done_reason


@pytest.mark.parametrize("call", [ollama_chat, ollama_generate], ids=["chat", "generate"])
def test_ollama_format_json(ollama_client, model, call):
    whole = call(ollama_client, model, "json", stream=False)
    assert whole[1] == "stop"
    assert isinstance(json.loads(whole[0]), dict)
    assert call(ollama_client, model, "json", stream=True) == whole


@pytest.mark.parametrize("call", [ollama_chat, ollama_generate], ids=["chat", "generate"])
def test_ollama_format_schema(ollama_client, model, call):
    schema = City.model_json_schema()
    whole = call(ollama_client, model, schema, stream=False)
    assert whole[1] == "stop"
    jsonschema.validate(json.loads(whole[0]), schema)
    City.model_validate_json(whole[0])
    assert call(ollama_client, model, schema, stream=True) == whole


def test_ollama_nested_schema(ollama_client, model):
    schema = Person.model_json_schema()
    r = ollama_client.chat(model=model, messages=PERSON_PROMPT, format=schema, options=OLLAMA_OPTIONS)
    assert r.done_reason == "stop"
    jsonschema.validate(json.loads(r.message.content), schema)
    assert isinstance(Person.model_validate_json(r.message.content), Person)
