//! Reading tool calls out of the model's text as it streams. Under a tool grammar the model writes its calls in
//! its family's [`Format`], with exactly that layout (the grammar fixes it); by default the Hermes / Qwen one:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! [`CallParser`] turns text deltas into [`Piece`]s: plain text, the start of a call (its name), and fragments of
//! its arguments, as soon as each is certain, so a dialect can stream a call's arguments while they are
//! generated.

/// How a model family writes its calls: `prefix`, then calls (`open` name `mid` arguments `close`) separated by
/// `sep`, then `suffix`. An answer that starts with `trigger` is a call.
#[derive(Debug, PartialEq, Eq)]
pub struct Format {
    pub name: &'static str,
    pub prefix: &'static str,
    pub open: &'static str,
    pub mid: &'static str,
    pub close: &'static str,
    pub sep: &'static str,
    pub suffix: &'static str,
    pub trigger: &'static str,
    /// Whether a call may also follow text (the trigger is distinctive enough to never be text: `<tool_call>`),
    /// or only open the answer (a bare `{` or `[` may well be text).
    pub after_text: bool,
    /// Whether the family writes several calls in one answer.
    pub parallel: bool,
}

/// Hermes, Qwen 2.5/3 and rill's generic rendering: `<tool_call>` blocks, one per line.
pub const HERMES: Format = Format {
    name: "hermes",
    prefix: "",
    open: "<tool_call>\n{\"name\": \"",
    mid: "\", \"arguments\": ",
    close: "}\n</tool_call>",
    sep: "\n",
    suffix: "",
    trigger: "<tool_call>",
    after_text: true,
    parallel: true,
};

/// Llama 3.1–3.3 JSON tool calling: one `{"name": …, "parameters": {…}}` object.
pub const LLAMA_JSON: Format = Format {
    name: "llama3-json",
    prefix: "",
    open: "{\"name\": \"",
    mid: "\", \"parameters\": ",
    close: "}",
    sep: "",
    suffix: "",
    trigger: "{",
    after_text: false,
    parallel: false,
};

/// Mistral: a JSON list of `{"name": …, "arguments": {…}}` after its `[TOOL_CALLS]` control token (a special
/// token, which never shows in the text).
pub const MISTRAL: Format = Format {
    name: "mistral",
    prefix: "[",
    open: "{\"name\": \"",
    mid: "\", \"arguments\": ",
    close: "}",
    sep: ", ",
    suffix: "]",
    trigger: "[",
    after_text: false,
    parallel: true,
};

impl Format {
    /// The format a chat template asks for, from what its text says about calls: a template that does not
    /// take tools gets rill's generic rendering, which uses [`HERMES`].
    pub fn for_template(source: Option<&str>, takes_tools: bool) -> &'static Format {
        let Some(src) = source.filter(|_| takes_tools) else {
            return &HERMES;
        };
        if src.contains("<tool_call>") {
            &HERMES
        } else if src.contains("[TOOL_CALLS]") {
            &MISTRAL
        } else if src.contains("<|python_tag|>") || src.contains("\"parameters\"") {
            &LLAMA_JSON
        } else {
            &HERMES
        }
    }

    /// A fresh id for a call: the dialect's `prefix` and 24 random characters, or exactly 9 alphanumerics for
    /// Mistral, whose chat templates refuse any other id when the call is sent back.
    pub fn call_id(&self, prefix: &str) -> String {
        if *self == MISTRAL {
            use rand::distr::{Alphanumeric, SampleString};
            Alphanumeric.sample_string(&mut rand::rng(), 9)
        } else {
            crate::api::util::new_id(prefix)
        }
    }

    /// One call, as the grammar writes it.
    pub fn call(&self, name: &str, arguments: &str) -> String {
        format!("{}{name}{}{arguments}{}", self.open, self.mid, self.close)
    }
}

/// How an answer is read for calls: the format they are written in, and whether the request forced a call
/// (`required` or a named tool), so that the answer is calls and nothing else.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub format: &'static Format,
    pub forced: bool,
}

impl Reading {
    /// An answer that may be text or calls.
    pub fn auto(format: &'static Format) -> Self {
        Self {
            format,
            forced: false,
        }
    }
}

/// A piece of the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// Call number `index` (from 0) begins; its arguments follow.
    Start {
        index: usize,
        name: String,
    },
    /// More of call `index`'s arguments (JSON text).
    Args {
        index: usize,
        fragment: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not yet known whether the answer is text or calls (it may be a prefix of [`OPEN`]).
    Undecided,
    Text,
    Name,
    Mid,
    Args,
    Close,
    /// After a call: another one, or the end.
    Between,
    /// After the suffix: nothing more.
    Done,
}

/// The whitespace a call may follow (what the grammar allows before it).
const WS: [char; 4] = [' ', '\t', '\r', '\n'];

/// Splits an answer into text and tool calls, incrementally.
#[derive(Debug)]
pub struct CallParser {
    format: &'static Format,
    /// The answer is calls only: a call cut off before its name is dropped rather than given back as text.
    forced: bool,
    state: State,
    /// The text of the call being opened, until its name is known (given back as text if the answer ends
    /// there).
    opening: String,
    buf: String,
    index: usize,
    /// Inside the arguments: bracket depth, and whether in a string (and after a backslash there).
    depth: usize,
    in_str: bool,
    escaped: bool,
}

impl CallParser {
    pub fn new(reading: Reading) -> Self {
        Self {
            format: reading.format,
            forced: reading.forced,
            state: State::Undecided,
            opening: String::new(),
            buf: String::new(),
            index: 0,
            depth: 0,
            in_str: false,
            escaped: false,
        }
    }

    /// How this parser reads the answer.
    pub fn reading(&self) -> Reading {
        Reading {
            format: self.format,
            forced: self.forced,
        }
    }

    /// How many calls have started.
    pub fn calls(&self) -> usize {
        self.index
            + usize::from(matches!(
                self.state,
                State::Mid | State::Args | State::Close
            ))
    }

    /// Feeds more text; returns what became certain.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while self.step(&mut out) {}
        out
    }

    /// The end of the answer: text still held back comes out as text, and so does a call cut off before its
    /// name was complete, unless calls were forced: then the answer was never text, and the unfinished opening
    /// is dropped. A call whose name is known was already reported, with what it has of arguments.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buf);
        let text = match self.state {
            State::Undecided | State::Name if self.forced => String::new(),
            State::Undecided | State::Text => rest,
            State::Name => std::mem::take(&mut self.opening) + &rest,
            _ => String::new(),
        };
        if text.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Text(text)]
        }
    }

    /// Enters a call whose opening text (`taken`) was just consumed.
    fn open_call(&mut self, taken: String) {
        self.opening = taken;
        self.state = State::Name;
    }

    /// Makes one move; false when more text is needed.
    fn step(&mut self, out: &mut Vec<Piece>) -> bool {
        match self.state {
            State::Undecided => {
                let head = format!("{}{}", self.format.prefix, self.format.open);
                let t = self.buf.trim_start_matches(WS);
                if t.starts_with(&head) {
                    let skip = self.buf.len() - t.len() + head.len();
                    let taken = self.buf.drain(..skip).collect();
                    self.open_call(taken);
                    true
                } else if head.starts_with(t) {
                    false
                } else {
                    self.state = State::Text;
                    true
                }
            }
            State::Text => {
                if !self.format.after_text {
                    if !self.buf.is_empty() {
                        out.push(Piece::Text(std::mem::take(&mut self.buf)));
                    }
                    return false;
                }
                // A call may follow text: text up to the trigger goes out, and what follows is read as a call
                // when it is (or may still become) one; a trigger that opens no call is text.
                if let Some(at) = self.buf.find(self.format.trigger) {
                    let head = format!("{}{}", self.format.prefix, self.format.open);
                    let rest = &self.buf[at..];
                    if rest.starts_with(&head) || head.starts_with(rest) {
                        if at > 0 {
                            out.push(Piece::Text(self.buf.drain(..at).collect()));
                        }
                        self.state = State::Undecided;
                    } else {
                        let end = at + self.format.trigger.len();
                        out.push(Piece::Text(self.buf.drain(..end).collect()));
                    }
                    return true;
                }
                // Hold back a tail that may be the start of the trigger.
                let keep = (1..self.format.trigger.len())
                    .rev()
                    .find(|&n| {
                        self.buf.is_char_boundary(self.buf.len().saturating_sub(n))
                            && self.buf.ends_with(&self.format.trigger[..n])
                    })
                    .unwrap_or(0)
                    .min(self.buf.len());
                let emit = self.buf.len() - keep;
                if emit > 0 {
                    out.push(Piece::Text(self.buf.drain(..emit).collect()));
                }
                false
            }
            State::Name => match self.buf.find('"') {
                Some(end) => {
                    let name = self.buf[..end].to_string();
                    self.buf.drain(..=end);
                    self.opening.clear();
                    out.push(Piece::Start {
                        index: self.index,
                        name,
                    });
                    // The name's closing quote was the first character of `mid`.
                    self.state = State::Mid;
                    true
                }
                None => false,
            },
            State::Mid => self.expect(&self.format.mid[1..], State::Args),
            State::Args => {
                let end = self.scan_args();
                if end > 0 {
                    out.push(Piece::Args {
                        index: self.index,
                        fragment: self.buf.drain(..end).collect(),
                    });
                }
                if self.depth == 0 && end > 0 {
                    self.state = State::Close;
                    return true;
                }
                false
            }
            State::Close => {
                if self.expect(self.format.close, State::Between) {
                    self.index += 1;
                    return true;
                }
                false
            }
            State::Between => {
                let next = format!("{}{}", self.format.sep, self.format.open);
                if self.buf.starts_with(&next) {
                    let taken = self.buf.drain(..next.len()).collect();
                    self.open_call(taken);
                    true
                } else if !self.format.suffix.is_empty() {
                    self.expect(self.format.suffix, State::Done)
                } else {
                    false
                }
            }
            State::Done => false,
        }
    }

    /// Consumes `lit` once the buffer holds it, then moves to `next`.
    fn expect(&mut self, lit: &str, next: State) -> bool {
        if self.buf.starts_with(lit) {
            self.buf.drain(..lit.len());
            self.state = next;
            true
        } else {
            false
        }
    }

    /// How many bytes of the buffer belong to the arguments (all of it, or up to the bracket that closes them).
    fn scan_args(&mut self) -> usize {
        for (i, c) in self.buf.char_indices() {
            if self.in_str {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_str = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_str = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
        }
        self.buf.len()
    }
}

/// A whole call, gathered from pieces.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// Text and calls of a whole answer.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    pub text: String,
    pub calls: Vec<Call>,
}

impl Parsed {
    pub fn add(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Text(t) => self.text.push_str(&t),
                Piece::Start { name, .. } => self.calls.push(Call {
                    name,
                    arguments: String::new(),
                }),
                Piece::Args { index, fragment } => self.calls[index].arguments.push_str(&fragment),
            }
        }
    }
}

/// Splits a whole answer when it may hold calls (read as `reading` says); otherwise it is all text.
pub fn parse_if(text: &str, reading: Option<Reading>) -> Parsed {
    if let Some(r) = reading {
        parse(text, r)
    } else {
        Parsed {
            text: text.to_string(),
            calls: vec![],
        }
    }
}

/// Splits a whole answer.
pub fn parse(text: &str, reading: Reading) -> Parsed {
    let mut p = CallParser::new(reading);
    let mut parsed = Parsed::default();
    parsed.add(p.push(text));
    parsed.add(p.finish());
    parsed
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
