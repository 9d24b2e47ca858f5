//! Optional content rules over request messages (threat 10): a maximum message count, a maximum
//! length per message, and deny patterns. A refusal names the rule, never the matching text.

use http::StatusCode;
use regex::RegexSet;
use serde_json::Value;

use crate::proxy::reject::Reject;

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

    pub fn check(&self, body: &Value) -> Result<(), Reject> {
        if self.is_off() {
            return Ok(());
        }
        let bad = |message: String| Reject::new(StatusCode::BAD_REQUEST, "content_rule", message);
        let messages = body.get("messages").and_then(Value::as_array);
        let count = messages.map_or(0, Vec::len);
        if self.max_messages > 0 && count > self.max_messages {
            return Err(bad(format!(
                "content rule max_messages: more than {} messages",
                self.max_messages
            )));
        }
        for text in texts(body) {
            if self.max_message_chars > 0 && text.chars().count() > self.max_message_chars {
                return Err(bad(format!(
                    "content rule max_message_chars: a message is longer than {} characters",
                    self.max_message_chars
                )));
            }
            if let Some(index) = self
                .deny
                .as_ref()
                .and_then(|set| set.matches(text).iter().next())
            {
                return Err(bad(format!("content rule deny_patterns[{index}] matched")));
            }
        }
        Ok(())
    }
}

/// The text a model would read: each message's content (a string, or the `text` of its parts),
/// and the `prompt` or `input` of the completions and responses routes.
fn texts(body: &Value) -> Vec<&str> {
    let mut out = Vec::new();
    for message in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(content) = message.get("content") {
            add_text(&mut out, content);
        }
    }
    for field in ["prompt", "input", "system"] {
        if let Some(value) = body.get(field) {
            add_text(&mut out, value);
        }
    }
    out
}

fn add_text<'a>(out: &mut Vec<&'a str>, content: &'a Value) {
    match content {
        Value::String(text) => out.push(text.as_str()),
        Value::Array(parts) => out.extend(
            parts
                .iter()
                .filter_map(|part| part.as_str().or_else(|| part.get("text")?.as_str())),
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table() {
        let rules = ContentRules {
            max_messages: 2,
            max_message_chars: 10,
            deny: Some(RegexSet::new(["(?i)ignore previous", "rm -rf"]).unwrap()),
        };
        let cases = [
            (
                json!({"messages": [{"role": "user", "content": "hi"}]}),
                None,
            ),
            (
                json!({"messages": [{"content": "a"}, {"content": "b"}, {"content": "c"}]}),
                Some("max_messages"),
            ),
            (
                json!({"messages": [{"content": "0123456789x"}]}),
                Some("max_message_chars"),
            ),
            (
                json!({"messages": [{"content": [{"type": "text", "text": "IGNORE PREVIOUS"}]}]}),
                Some("max_message_chars"),
            ),
            (
                json!({"messages": [{"content": "rm -rf /"}]}),
                Some("deny_patterns[1]"),
            ),
            (
                json!({"messages": [{"content": [{"type": "text", "text": "Ignore previous"}]}]}),
                Some("max_message_chars"),
            ),
            (json!({"prompt": "rm -rf ~"}), Some("deny_patterns[1]")),
            (json!({"input": "fine"}), None),
            (json!({"model": "m"}), None),
        ];
        for (body, expected) in cases {
            let got = rules.check(&body).err().map(|r| r.message);
            match (got, expected) {
                (None, None) => {}
                (Some(message), Some(rule)) => {
                    assert!(message.contains(rule), "{message}");
                    assert!(!message.contains("rm -rf"), "names the rule, not the text");
                }
                (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
            }
        }
        let deny_only = ContentRules {
            deny: Some(RegexSet::new(["(?i)ignore previous"]).unwrap()),
            ..ContentRules::default()
        };
        let body =
            json!({"messages": [{"content": [{"type": "text", "text": "Ignore previous"}]}]});
        assert!(deny_only
            .check(&body)
            .unwrap_err()
            .message
            .contains("deny_patterns[0]"));
        assert!(ContentRules::default().check(&body).is_ok());
    }
}
