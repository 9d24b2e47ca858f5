//! What every shape parser shares: the [`Reading`] it yields (every text the model will read,
//! grouped by message), the [`BadShape`] it refuses with (a field path and what belongs there,
//! never the value), and the typed field checks and text readers the parsers are built from.
//!
//! A parser checks the fields the guard reads and the known fields' types; extra fields are
//! `layers::body_fields`' business, not the shape's.

use std::{borrow::Cow, fmt};

use http::StatusCode;
use serde_json::{Map, Value};

use super::{anthropic, chat, inputs, responses, Shape};
use crate::proxy::reject::Reject;

/// Parses `body` (already a JSON object, `layers::json`) as `shape`, and returns what the model
/// reads from it.
pub fn read(shape: Shape, body: &Value) -> Result<Reading<'_>, BadShape> {
    let top = body
        .as_object()
        .ok_or_else(|| BadShape::new(&Loc::Root, "a JSON object"))?;
    let mut reading = Reading::default();
    match shape {
        Shape::ChatCompletions => chat::read(top, &mut reading)?,
        Shape::Completions => inputs::completions(top, &mut reading)?,
        Shape::Embeddings => inputs::embeddings(top, &mut reading)?,
        Shape::Moderations => inputs::moderations(top, &mut reading)?,
        Shape::Responses => responses::read(top, &mut reading)?,
        Shape::AnthropicMessages => anthropic::read(top, &mut reading)?,
        // Events an agent posts about itself: no model reads them.
        Shape::AgentEvents => {}
        Shape::None => {
            return Err(BadShape::new(
                &Loc::Root,
                "absent: this route takes no body",
            ));
        }
    }
    Ok(reading)
}

/// Every text the model will read, in body order.
#[derive(Debug, Default)]
pub struct Reading<'a> {
    pub texts: Vec<Text<'a>>,
}

/// One unit of reading: a message (its parts joined before any rule looks at it), a system
/// prompt, one input of a batch, or a tool definition.
#[derive(Debug)]
pub struct Text<'a> {
    /// Where in the body, for refusals: `messages[3]`, `tools[0]`, `instructions`.
    pub at: String,
    pub kind: Kind,
    pub parts: Vec<Cow<'a, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A message or a Responses input item: counted by `max_messages`, sized by
    /// `max_message_chars`. Completions prompts are messages too.
    Message,
    /// A system prompt, `instructions`, a prompt template's variables: sized, not counted.
    System,
    /// One input of an embeddings or moderations batch: sized, not counted (`caps.inputs`
    /// bounds the batch).
    Input,
    /// Tool definitions and output schemas: what the model reads about its tools.
    Tool,
    /// Token ids instead of text: nothing a pattern can match.
    Tokens,
}

impl<'a> Reading<'a> {
    /// Starts a text at `at`; its parts are pushed with [`Reading::part`].
    pub fn open(&mut self, at: &Loc<'_>, kind: Kind) {
        self.texts.push(Text {
            at: at.to_string(),
            kind,
            parts: Vec::new(),
        });
    }

    /// Adds a part to the text opened last.
    pub fn part(&mut self, text: impl Into<Cow<'a, str>>) {
        let text = text.into();
        if text.is_empty() {
            return;
        }
        if let Some(open) = self.texts.last_mut() {
            open.parts.push(text);
        }
    }

    /// One text of one string.
    pub fn text(&mut self, at: &Loc<'_>, kind: Kind, text: &'a str) {
        self.open(at, kind);
        self.part(text);
    }
}

impl Text<'_> {
    /// The parts joined with nothing between them: a pattern split over two parts still matches.
    pub fn joined(&self) -> Cow<'_, str> {
        match self.parts.as_slice() {
            [] => Cow::Borrowed(""),
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        }
    }

    pub fn chars(&self) -> usize {
        self.parts.iter().map(|part| part.chars().count()).sum()
    }
}

// ---- Refusals ------------------------------------------------------------------------------------

/// A body that is not its route's shape: the field's path and what belongs there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("body field {path} must be {expected}")]
pub struct BadShape {
    pub path: String,
    pub expected: &'static str,
}

impl BadShape {
    pub fn new(at: &Loc<'_>, expected: &'static str) -> BadShape {
        BadShape {
            path: at.to_string(),
            expected,
        }
    }

    pub fn into_reject(self, shape: Shape) -> Reject {
        let message = if self.path.is_empty() {
            format!(
                "the body is not a {shape} request: it must be {}",
                self.expected
            )
        } else {
            format!("the body is not a {shape} request: {self}")
        };
        Reject::new(StatusCode::BAD_REQUEST, "bad_shape", message)
    }
}

/// A field path, built on the stack as the parser descends and written out only when needed.
#[derive(Debug, Clone, Copy)]
pub enum Loc<'a> {
    Root,
    Field(&'a Loc<'a>, &'a str),
    Index(&'a Loc<'a>, usize),
}

impl<'a> Loc<'a> {
    pub fn field(&'a self, name: &'a str) -> Loc<'a> {
        Loc::Field(self, name)
    }

    pub fn index(&'a self, i: usize) -> Loc<'a> {
        Loc::Index(self, i)
    }
}

impl fmt::Display for Loc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Root => Ok(()),
            Loc::Field(Loc::Root, name) => f.write_str(name),
            Loc::Field(parent, name) => write!(f, "{parent}.{name}"),
            Loc::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

// ---- Typed field checks --------------------------------------------------------------------------

/// The JSON type a known field must have. `null` passes for every optional field: clients send
/// it for "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Bool,
    /// A number, or a string holding one (LiteLLM coerces those; `body_fields` caps them).
    Num,
    Obj,
    Arr,
    StrOrArr,
    StrOrObj,
}

impl Ty {
    fn expected(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Bool => "a boolean",
            Ty::Num => "a number",
            Ty::Obj => "an object",
            Ty::Arr => "an array",
            Ty::StrOrArr => "a string or an array",
            Ty::StrOrObj => "a string or an object",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Ty::Str, Value::String(_)) | (Ty::Bool, Value::Bool(_)) => true,
            (Ty::Num, Value::Number(_)) => true,
            (Ty::Num, Value::String(s)) => s.trim().parse::<f64>().is_ok(),
            (Ty::Obj | Ty::StrOrObj, Value::Object(_)) => true,
            (Ty::Arr | Ty::StrOrArr, Value::Array(_)) => true,
            (Ty::StrOrArr | Ty::StrOrObj, Value::String(_)) => true,
            _ => false,
        }
    }
}

/// Checks the type of each known field present in `object`.
pub fn typed(
    object: &Map<String, Value>,
    at: &Loc<'_>,
    fields: &[(&str, Ty)],
) -> Result<(), BadShape> {
    for (name, ty) in fields {
        if let Some(value) = object.get(*name) {
            if !ty.admits(value) {
                return Err(BadShape::new(&at.field(name), ty.expected()));
            }
        }
    }
    Ok(())
}

/// `object[name]`, which must be present and not null.
pub fn required<'v>(
    object: &'v Map<String, Value>,
    at: &Loc<'_>,
    name: &str,
    expected: &'static str,
) -> Result<&'v Value, BadShape> {
    match object.get(name) {
        None | Some(Value::Null) => Err(BadShape::new(&at.field(name), expected)),
        Some(value) => Ok(value),
    }
}

/// An array's items as objects, each with an optional string `type`.
pub fn objects<'v>(
    items: &'v [Value],
    at: &Loc<'_>,
    expected: &'static str,
) -> Result<Vec<&'v Map<String, Value>>, BadShape> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let object = item
                .as_object()
                .ok_or_else(|| BadShape::new(&at.index(i), expected))?;
            match object.get("type") {
                None | Some(Value::String(_)) => Ok(object),
                Some(_) => Err(BadShape::new(&at.index(i).field("type"), "a string")),
            }
        })
        .collect()
}

/// The `type` of an object, or "".
pub fn kind_of(object: &Map<String, Value>) -> &str {
    object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A string field that must be a string when present (`null` is absent).
pub fn opt_str<'v>(
    object: &'v Map<String, Value>,
    at: &Loc<'_>,
    name: &str,
) -> Result<Option<&'v str>, BadShape> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BadShape::new(&at.field(name), "a string")),
    }
}

// ---- Readers -------------------------------------------------------------------------------------

/// Keys whose strings the model does not read as text: ids, roles, enums, signatures, and media
/// (URLs and base64 data, which `layers::media` checks).
const NOT_TEXT: &[&str] = &[
    "type",
    "id",
    "call_id",
    "tool_call_id",
    "tool_use_id",
    "role",
    "status",
    "encrypted_content",
    "signature",
    "cache_control",
    "detail",
    "format",
    "media_type",
    "mime_type",
    "filename",
    "file_id",
    "file_data",
    "file_url",
    "image_url",
    "image_id",
    "audio_url",
    "video_url",
    "input_audio",
    "url",
    "data",
];

/// Every string value under `value` but those under [`NOT_TEXT`] keys: the text of a content
/// part or input item of a type the parser has no specific reader for.
pub fn strings<'a>(value: &'a Value, reading: &mut Reading<'a>) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => reading.part(s.as_str()),
            // Reversed onto the stack so parts come out in order: arrays as sent, an
            // object's fields by name (serde_json's map is sorted).
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => {
                // A text source (`{"type": "text", "data": "..."}`, Anthropic's document form,
                // which LiteLLM takes in chat content too): its `data` is text, not media.
                if map.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(data @ Value::String(_)) = map.get("data") {
                        stack.push(data);
                    }
                }
                stack.extend(
                    map.iter()
                        .rev()
                        .filter(|(key, _)| !NOT_TEXT.contains(&key.as_str()))
                        .map(|(_, v)| v),
                )
            }
            _ => {}
        }
    }
}

/// [`strings`] over an object's fields.
pub fn fields<'a>(object: &'a Map<String, Value>, reading: &mut Reading<'a>) {
    if object.get("type").and_then(Value::as_str) == Some("text") {
        if let Some(Value::String(data)) = object.get("data") {
            reading.part(data.as_str());
        }
    }
    for (key, value) in object {
        if !NOT_TEXT.contains(&key.as_str()) {
            strings(value, reading);
        }
    }
}

/// Every key and string value under `value`: what the model reads of a JSON schema or a tool
/// call's arguments, where the names matter as much as the values.
pub fn json_text<'a>(value: &'a Value, reading: &mut Reading<'a>) {
    let mut stack = vec![(None, value)];
    while let Some((key, value)) = stack.pop() {
        if let Some(key) = key {
            reading.part(key);
            reading.part(" ");
        }
        match value {
            Value::String(s) => {
                reading.part(s.as_str());
                reading.part(" ");
            }
            Value::Array(items) => stack.extend(items.iter().rev().map(|v| (None, v))),
            Value::Object(map) => {
                stack.extend(map.iter().rev().map(|(k, v)| (Some(k.as_str()), v)))
            }
            _ => {}
        }
    }
}

/// Tool definitions (`tools`, `functions`): each one a [`Kind::Tool`] text of its names,
/// descriptions and schemas, whatever the tool type.
pub fn tools<'a>(
    top: &'a Map<String, Value>,
    name: &'a str,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let at = Loc::Root;
    let at = at.field(name);
    let Some(Value::Array(items)) = top.get(name) else {
        return Ok(()); // Type checked by `typed`.
    };
    for (i, tool) in objects(items, &at, "a tool definition (an object)")?
        .into_iter()
        .enumerate()
    {
        let at = at.index(i);
        reading.open(&at, Kind::Tool);
        for (key, value) in tool {
            if key != "type" {
                json_text(value, reading);
            }
        }
    }
    Ok(())
}

/// An output schema (`response_format`, `text.format`): the model reads it like a tool's.
pub fn schema<'a>(value: Option<&'a Value>, at: &Loc<'_>, reading: &mut Reading<'a>) {
    if let Some(value @ Value::Object(_)) = value {
        reading.open(at, Kind::Tool);
        json_text(value, reading);
    }
}

#[cfg(test)]
pub mod testing {
    //! Helpers for the per-shape tables: what a body reads as, one line per text.

    use super::*;

    /// `kind at: joined` per text.
    pub fn lines(shape: Shape, body: &Value) -> Result<Vec<String>, String> {
        let reading = read(shape, body).map_err(|bad| bad.to_string())?;
        Ok(reading
            .texts
            .iter()
            .map(|t| format!("{:?} {}: {}", t.kind, t.at, t.joined()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_render_like_the_body() {
        let root = Loc::Root;
        let messages = root.field("messages");
        let third = messages.index(3);
        let content = third.field("content");
        assert_eq!(content.index(0).to_string(), "messages[3].content[0]");
        assert_eq!(root.to_string(), "");
    }

    #[test]
    fn readers_skip_media_and_ids_but_keep_schema_names() {
        let mut reading = Reading::default();
        let part = json!({"type": "x", "id": "i", "text": "a", "image_url": {"url": "u"}, "more": ["b", {"c": "d"}]});
        reading.open(&Loc::Root, Kind::Message);
        strings(&part, &mut reading);
        assert_eq!(reading.texts[0].joined(), "bda");
        let schema = json!({"properties": {"path": {"description": "where"}}});
        reading.open(&Loc::Root, Kind::Tool);
        json_text(&schema, &mut reading);
        assert_eq!(
            reading.texts[1].joined(),
            "properties path description where "
        );
    }

    #[test]
    fn null_passes_for_optional_fields_and_wrong_types_name_the_field() {
        let body = json!({"stream": null, "n": "2", "model": "m"});
        let fields = [("stream", Ty::Bool), ("n", Ty::Num), ("model", Ty::Str)];
        assert!(typed(body.as_object().unwrap(), &Loc::Root, &fields).is_ok());
        let body = json!({"stream": "yes"});
        let err = typed(body.as_object().unwrap(), &Loc::Root, &fields).unwrap_err();
        assert_eq!(err.to_string(), "body field stream must be a boolean");
        let reject = err.into_reject(Shape::ChatCompletions);
        assert_eq!(reject.reason, "bad_shape");
        assert!(!reject.message.contains("yes"));
    }
}
