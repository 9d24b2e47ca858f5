//! What every shape parser yields and refuses with: the [`Reading`] (every text the model will
//! read, grouped by message) and [`BadShape`] (a field path and what belongs there, never the
//! value), with the dispatch from a route's [`Shape`] to its parser. The parsers are built from
//! `check.rs` (typed field checks) and `text.rs` (text readers).
//!
//! A parser checks the fields the guard reads and the known fields' types; extra fields are
//! `layers::body_fields`' business, not the shape's.

use std::{borrow::Cow, fmt};

use http::StatusCode;
use serde_json::Value;

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

    #[test]
    fn paths_render_like_the_body() {
        let root = Loc::Root;
        let messages = root.field("messages");
        let third = messages.index(3);
        let content = third.field("content");
        assert_eq!(content.index(0).to_string(), "messages[3].content[0]");
        assert_eq!(root.to_string(), "");
    }
}
