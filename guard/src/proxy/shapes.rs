//! The request shapes the guard understands (issue 12): one per kind of POST body a route takes.
//! A route names its shape; the body is parsed as that shape before anything is forwarded, and
//! the content rules read the texts the shape says the model will read.
//!
//! This file holds the names only, the contract between the route table and the parsers; the
//! parsers live beside it.

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// OpenAI chat completions (`messages`).
    ChatCompletions,
    /// OpenAI legacy completions (`prompt`).
    Completions,
    /// OpenAI embeddings (`input`).
    Embeddings,
    /// OpenAI Responses (`input`, `instructions`).
    Responses,
    /// Anthropic messages (`system`, `messages`).
    AnthropicMessages,
    /// OpenAI moderations (`input`).
    Moderations,
    /// agent-lightning 1.0 events posted by an agent: a JSON object the model never reads.
    AgentEvents,
    /// No body: GET routes.
    None,
}

impl Shape {
    pub const ALL: &'static [Shape] = &[
        Shape::ChatCompletions,
        Shape::Completions,
        Shape::Embeddings,
        Shape::Responses,
        Shape::AnthropicMessages,
        Shape::Moderations,
        Shape::AgentEvents,
        Shape::None,
    ];

    /// The name config and docs use.
    pub fn name(self) -> &'static str {
        match self {
            Shape::ChatCompletions => "chat",
            Shape::Completions => "completions",
            Shape::Embeddings => "embeddings",
            Shape::Responses => "responses",
            Shape::AnthropicMessages => "anthropic-messages",
            Shape::Moderations => "moderations",
            Shape::AgentEvents => "agent-events",
            Shape::None => "none",
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown body shape {0:?}")]
pub struct UnknownShape(pub String);

impl FromStr for Shape {
    type Err = UnknownShape;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Shape::ALL
            .iter()
            .copied()
            .find(|shape| shape.name() == name)
            .ok_or_else(|| UnknownShape(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for shape in Shape::ALL {
            assert_eq!(shape.name().parse::<Shape>().unwrap(), *shape);
        }
        assert!("xml".parse::<Shape>().is_err());
    }
}
