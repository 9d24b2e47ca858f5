//! Anthropic messages (`POST /v1/messages`), as Anthropic's API documents it and LiteLLM
//! (1.108.7, `litellm/types/llms/anthropic.py`, the `/v1/messages` passthrough) takes it:
//! `system` as a string or text blocks, `messages` with string or block content, blocks of
//! every type (text, image, document with text or content sources, tool_use and its `input`,
//! `tool_result` with string or block content, thinking, search results), and tools.

use serde_json::{Map, Value};

use super::{
    check::{kind_of, objects, opt_str, required, typed, Ty},
    read::{BadShape, Kind, Loc, Reading},
    text::{fields, json_text, schema, tools},
};

const FIELDS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("messages", Ty::Arr),
    ("system", Ty::StrOrArr),
    ("max_tokens", Ty::Num),
    ("stop_sequences", Ty::Arr),
    ("stream", Ty::Bool),
    ("temperature", Ty::Num),
    ("top_k", Ty::Num),
    ("top_p", Ty::Num),
    ("tools", Ty::Arr),
    ("tool_choice", Ty::Obj),
    ("metadata", Ty::Obj),
    ("litellm_metadata", Ty::Obj),
    ("thinking", Ty::Obj),
    ("service_tier", Ty::Str),
    ("container", Ty::StrOrObj),
    ("mcp_servers", Ty::Arr),
    ("output_format", Ty::Obj),
];

pub fn read<'a>(top: &'a Map<String, Value>, reading: &mut Reading<'a>) -> Result<(), BadShape> {
    let root = Loc::Root;
    typed(top, &root, FIELDS)?;
    let at = root.field("system");
    match top.get("system") {
        Some(Value::String(text)) => reading.text(&at, Kind::System, text),
        Some(Value::Array(blocks)) => {
            reading.open(&at, Kind::System);
            self::blocks(blocks, &at, reading)?;
        }
        _ => {}
    }
    let at = root.field("messages");
    let Value::Array(messages) = required(top, &root, "messages", "an array of messages")? else {
        return Err(BadShape::new(&at, "an array of messages"));
    };
    for (i, message) in objects(messages, &at, "a message (an object with a role)")?
        .into_iter()
        .enumerate()
    {
        let at = at.index(i);
        typed(message, &at, &[("role", Ty::Str)])?;
        required(message, &at, "role", "a string")?;
        reading.open(&at, Kind::Message);
        content(message.get("content"), &at.field("content"), reading)?;
    }
    tools(top, "tools", reading)?;
    schema(
        top.get("output_format"),
        &root.field("output_format"),
        reading,
    );
    Ok(())
}

/// Content: a string or blocks (`tool_result` and document `content` sources nest the same).
fn content<'a>(
    content: Option<&'a Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    match content {
        Some(Value::String(text)) => {
            reading.part(text.as_str());
            Ok(())
        }
        Some(Value::Array(blocks)) => self::blocks(blocks, at, reading),
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(BadShape::new(at, "a string or an array of content blocks")),
    }
}

fn blocks<'a>(
    blocks: &'a [Value],
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    for (i, block) in objects(blocks, at, "a content block (an object)")?
        .into_iter()
        .enumerate()
    {
        self::block(block, &at.index(i), reading)?;
    }
    Ok(())
}

fn block<'a>(
    block: &'a Map<String, Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let text = |name: &str, reading: &mut Reading<'a>| -> Result<(), BadShape> {
        if let Some(text) = opt_str(block, at, name)? {
            reading.part(text);
        }
        Ok(())
    };
    match kind_of(block) {
        "text" => {
            required(block, at, "text", "a string")?;
            text("text", reading)?;
        }
        "thinking" => text("thinking", reading)?,
        "image" | "redacted_thinking" => {}
        "document" => {
            text("title", reading)?;
            text("context", reading)?;
            let at = at.field("source");
            match block.get("source") {
                Some(Value::Object(source)) => match kind_of(source) {
                    "text" => {
                        let data = opt_str(source, &at, "data")?
                            .ok_or_else(|| BadShape::new(&at.field("data"), "a string"))?;
                        reading.part(data);
                    }
                    "content" => content(source.get("content"), &at.field("content"), reading)?,
                    _ => {}
                },
                _ => return Err(BadShape::new(&at, "an object")),
            }
        }
        "search_result" => {
            text("title", reading)?;
            content(block.get("content"), &at.field("content"), reading)?;
        }
        // tool_use, server_tool_use, mcp_tool_use: the call the model made, read back.
        kind if kind.ends_with("tool_use") => {
            text("name", reading)?;
            match block.get("input") {
                Some(input @ Value::Object(_)) => json_text(input, reading),
                None | Some(Value::Null) => {}
                Some(_) => return Err(BadShape::new(&at.field("input"), "an object")),
            }
        }
        // tool_result, mcp_tool_result, web_search_tool_result, ...: what a tool returned.
        // A server tool's error result is an object.
        kind if kind.ends_with("tool_result") => match block.get("content") {
            Some(Value::Object(error)) => fields(error, reading),
            other => content(other, &at.field("content"), reading)?,
        },
        _ => fields(block, reading),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::proxy::shapes::{read::testing::lines, Shape};

    #[test]
    fn walker_table() {
        let cases = [
            (
                json!({"model": "claude", "max_tokens": 100, "system": "sys", "messages": [{"role": "user", "content": "hi"}]}),
                vec!["System system: sys", "Message messages[0]: hi"],
            ),
            (
                json!({"model": "claude", "max_tokens": 100,
                    "system": [{"type": "text", "text": "one ", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "two"}],
                    "messages": [
                        {"role": "user", "content": [
                            {"type": "text", "text": "read "},
                            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                            {"type": "document", "title": "T", "context": "C", "source": {"type": "text", "media_type": "text/plain", "data": "doc body"}},
                            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "inner"}]}},
                            {"type": "document", "source": {"type": "url", "url": "https://x.example/a.pdf"}},
                            {"type": "search_result", "source": "https://x.example", "title": "S", "content": [{"type": "text", "text": "found"}]}]},
                        {"role": "assistant", "content": [
                            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                            {"type": "redacted_thinking", "data": "enc"},
                            {"type": "text", "text": "calling"},
                            {"type": "tool_use", "id": "tu_1", "name": "bash", "input": {"command": "ls /"}},
                            {"type": "server_tool_use", "id": "st_1", "name": "web_search", "input": {"query": "q"}}]},
                        {"role": "user", "content": [
                            {"type": "tool_result", "tool_use_id": "tu_1", "content": "bin etc"},
                            {"type": "tool_result", "tool_use_id": "tu_2", "is_error": true, "content": [{"type": "text", "text": "failed"}, {"type": "image", "source": {"type": "url", "url": "https://x.example/i.png"}}]},
                            {"type": "web_search_tool_result", "tool_use_id": "st_1", "content": [{"type": "web_search_result", "url": "https://x.example", "title": "hit", "encrypted_content": "e"}]},
                            {"type": "web_search_tool_result", "tool_use_id": "st_2", "content": {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"}}]}
                    ],
                    "tools": [{"name": "bash", "description": "Run", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
                              {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]}),
                vec![
                    "System system: one two",
                    "Message messages[0]: read TCdoc bodyinnerSfound",
                    "Message messages[1]: hmmcallingbashcommand ls / web_searchquery q ",
                    "Message messages[2]: bin etcfailedhitmax_uses_exceeded",
                    "Tool tools[0]: Run properties command type string type object bash ",
                    "Tool tools[1]: web_search ",
                ],
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                lines(Shape::AnthropicMessages, &body).unwrap(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn parser_table() {
        let cases = [
            (
                json!({"model": "c"}),
                "messages must be an array of messages",
            ),
            (
                json!({"messages": [{"content": "x"}]}),
                "messages[0].role must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": 1}]}),
                "messages[0].content must be a string or an array of content blocks",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages[0].content[0].text must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]}),
                "messages[0].content[0].text must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_use", "name": "x", "input": "ls"}]}]}),
                "messages[0].content[0].input must be an object",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 4}]}]}),
                "messages[0].content[0].content must be a string or an array",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text"}}]}]}),
                "messages[0].content[0].source.data must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "document"}]}]}),
                "messages[0].content[0].source must be an object",
            ),
            (
                json!({"messages": [], "system": 5}),
                "system must be a string or an array",
            ),
            (
                json!({"messages": [], "system": [5]}),
                "system[0] must be a content block",
            ),
            (
                json!({"messages": [], "max_tokens": "lots"}),
                "max_tokens must be a number",
            ),
            (
                json!({"messages": [], "metadata": "x"}),
                "metadata must be an object",
            ),
        ];
        for (body, want) in cases {
            let got = lines(Shape::AnthropicMessages, &body).expect_err(&body.to_string());
            assert!(got.contains(want), "{body}: {got}");
        }
    }
}
