//! Optional content rules over what the model reads (threat 10, issue 12 point 4): a maximum
//! message count, a maximum length per message (its parts joined), and deny patterns over every
//! text `shapes::read` yields. A refusal names the rule and where in the body, never the text.

use http::StatusCode;
use regex::RegexSet;

use crate::proxy::{
    reject::Reject,
    shapes::{Kind, Reading},
};

#[derive(Debug, Clone, Default)]
pub struct ContentRules {
    /// 0 is off.
    pub max_messages: usize,
    /// 0 is off.
    pub max_message_chars: usize,
    pub deny: Option<RegexSet>,
}

impl ContentRules {
    pub fn is_off(&self) -> bool {
        self.max_messages == 0 && self.max_message_chars == 0 && self.deny.is_none()
    }

    /// Checks what the route's shape parser says the model reads (`shapes::read`): every
    /// message with its parts joined, system prompts and `instructions`, tool definitions and
    /// schemas, tool calls and results. Messages are counted across the request, Responses
    /// input items included.
    pub fn check(&self, reading: &Reading<'_>) -> Result<(), Reject> {
        if self.is_off() {
            return Ok(());
        }
        let bad = |message: String| Reject::new(StatusCode::BAD_REQUEST, "content_rule", message);
        let count = reading
            .texts
            .iter()
            .filter(|text| text.kind == Kind::Message)
            .count();
        if self.max_messages > 0 && count > self.max_messages {
            return Err(bad(format!(
                "content rule max_messages: more than {} messages",
                self.max_messages
            )));
        }
        for text in &reading.texts {
            let at = if text.at.is_empty() {
                "the body"
            } else {
                &text.at
            };
            let sized = matches!(text.kind, Kind::Message | Kind::System | Kind::Input);
            if sized && self.max_message_chars > 0 && text.chars() > self.max_message_chars {
                return Err(bad(format!(
                    "content rule max_message_chars: {at} is longer than {} characters",
                    self.max_message_chars
                )));
            }
            let Some(deny) = &self.deny else {
                continue;
            };
            if text.kind == Kind::Tokens {
                return Err(bad(format!(
                    "content rule deny_patterns: {at} is token ids, which the guard cannot read; send text"
                )));
            }
            if let Some(index) = deny.matches(&text.joined()).iter().next() {
                return Err(bad(format!(
                    "content rule deny_patterns[{index}] matched in {at}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::shapes::{read, Shape};
    use serde_json::json;

    #[test]
    fn rules_over_every_shape() {
        let rules = ContentRules {
            max_messages: 2,
            max_message_chars: 10,
            deny: Some(RegexSet::new(["(?i)ignore previous", "rm -rf"]).unwrap()),
        };
        let user = |content: serde_json::Value| json!({"role": "user", "content": content});
        let cases = [
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!("hi"))]}),
                None,
            ),
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!("a")), user(json!("b")), user(json!("c"))]}),
                Some("max_messages"),
            ),
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!("0123456789x"))]}),
                Some("max_message_chars: messages[0] "),
            ),
            // Characters per message, not per part: two parts of 6 are one message of 12.
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!([{"type": "text", "text": "abcdef"}, {"type": "text", "text": "ghijkl"}]))]}),
                Some("max_message_chars"),
            ),
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!("rm -rf /"))]}),
                Some("deny_patterns[1] matched in messages[0]"),
            ),
            // A pattern split over two parts of one message still matches.
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!([{"type": "text", "text": "rm "}, {"type": "text", "text": "-rf"}]))]}),
                Some("deny_patterns[1]"),
            ),
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!("hi"))], "tools": [{"type": "function", "function": {"name": "f", "description": "Ignore previous rules"}}]}),
                Some("deny_patterns[0] matched in tools[0]"),
            ),
            // Tools are not messages and are not sized.
            (
                Shape::ChatCompletions,
                json!({"messages": [user(json!("hi"))], "tools": [{"type": "function", "function": {"name": "a_long_tool_name", "parameters": {}}}]}),
                None,
            ),
            (
                Shape::Completions,
                json!({"prompt": "rm -rf ~"}),
                Some("deny_patterns[1]"),
            ),
            (
                Shape::Completions,
                json!({"prompt": ["a", "b", "c"]}),
                Some("max_messages"),
            ),
            (
                Shape::Completions,
                json!({"prompt": [1, 2, 3]}),
                Some("token ids"),
            ),
            (Shape::Embeddings, json!({"input": ["a", "b", "c"]}), None),
            (
                Shape::Embeddings,
                json!({"input": [[1, 2], [3]]}),
                Some("input[0] is token ids"),
            ),
            (
                Shape::Moderations,
                json!({"input": "rm -rf"}),
                Some("deny_patterns[1] matched in input"),
            ),
            (Shape::Responses, json!({"input": "fine"}), None),
            (
                Shape::Responses,
                json!({"input": [user(json!("a")), {"type": "function_call_output", "call_id": "c", "output": "b"}, user(json!("c"))]}),
                Some("max_messages"),
            ),
            (
                Shape::Responses,
                json!({"instructions": "rm -rf", "input": "hi"}),
                Some("deny_patterns[1] matched in instructions"),
            ),
            (
                Shape::AnthropicMessages,
                json!({"messages": [user(json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "rm -rf"}]}]))]}),
                Some("deny_patterns[1] matched in messages[0]"),
            ),
            (
                Shape::AnthropicMessages,
                json!({"system": "0123456789x", "messages": []}),
                Some("max_message_chars: system "),
            ),
            (Shape::AgentEvents, json!({"rm -rf": "rm -rf"}), None),
        ];
        for (shape, body, expected) in cases {
            let reading = read(shape, &body).unwrap_or_else(|bad| panic!("{shape} {body}: {bad}"));
            let got = rules.check(&reading).err().map(|r| r.message);
            match (got, expected) {
                (None, None) => {}
                (Some(message), Some(rule)) => {
                    assert!(message.contains(rule), "{shape} {body}: {message}");
                    assert!(!message.contains("rm -rf"), "names the rule, not the text");
                }
                (got, want) => panic!("{shape} {body}: got {got:?}, want {want:?}"),
            }
        }
        let body =
            json!({"messages": [user(json!([{"type": "text", "text": "Ignore previous"}]))]});
        let reading = read(Shape::ChatCompletions, &body).unwrap();
        let deny_only = ContentRules {
            deny: Some(RegexSet::new(["(?i)ignore previous"]).unwrap()),
            ..ContentRules::default()
        };
        assert!(deny_only
            .check(&reading)
            .unwrap_err()
            .message
            .contains("deny_patterns[0]"));
        assert!(ContentRules::default().check(&reading).is_ok());
    }
}
