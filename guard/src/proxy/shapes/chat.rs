//! OpenAI chat completions (`POST /v1/chat/completions`), as the openai SDK (3.57) sends it and
//! LiteLLM (1.108.7, `litellm/types/llms/openai.py` `ChatCompletion*MessageParam`) takes it:
//! `messages` of every role, content as a string or as parts of any type, tool calls and
//! legacy function calls, tool results, and the tool and output-schema definitions.

use serde_json::{Map, Value};

use super::{
    check::{kind_of, objects, opt_str, required, typed, Ty},
    read::{BadShape, Kind, Loc, Reading},
    text::{fields, schema, strings, tools},
};

/// The known top-level fields and their types.
const FIELDS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("messages", Ty::Arr),
    ("stream", Ty::Bool),
    ("stream_options", Ty::Obj),
    ("n", Ty::Num),
    ("max_tokens", Ty::Num),
    ("max_completion_tokens", Ty::Num),
    ("temperature", Ty::Num),
    ("top_p", Ty::Num),
    ("presence_penalty", Ty::Num),
    ("frequency_penalty", Ty::Num),
    ("seed", Ty::Num),
    ("logprobs", Ty::Bool),
    ("top_logprobs", Ty::Num),
    ("logit_bias", Ty::Obj),
    ("stop", Ty::StrOrArr),
    ("tools", Ty::Arr),
    ("functions", Ty::Arr),
    ("tool_choice", Ty::StrOrObj),
    ("function_call", Ty::StrOrObj),
    ("parallel_tool_calls", Ty::Bool),
    ("response_format", Ty::Obj),
    ("prediction", Ty::Obj),
    ("audio", Ty::Obj),
    ("modalities", Ty::Arr),
    ("metadata", Ty::Obj),
    ("litellm_metadata", Ty::Obj),
    ("store", Ty::Bool),
    ("user", Ty::Str),
    ("safety_identifier", Ty::Str),
    ("prompt_cache_key", Ty::Str),
    ("reasoning_effort", Ty::Str),
    ("service_tier", Ty::Str),
    ("verbosity", Ty::Str),
    ("web_search_options", Ty::Obj),
];

const MESSAGE_FIELDS: &[(&str, Ty)] = &[
    ("role", Ty::Str),
    ("name", Ty::Str),
    ("tool_call_id", Ty::Str),
    ("refusal", Ty::Str),
    ("reasoning_content", Ty::Str),
    ("tool_calls", Ty::Arr),
    ("function_call", Ty::Obj),
    ("thinking_blocks", Ty::Arr),
    ("audio", Ty::Obj),
];

pub fn read<'a>(top: &'a Map<String, Value>, reading: &mut Reading<'a>) -> Result<(), BadShape> {
    let root = Loc::Root;
    typed(top, &root, FIELDS)?;
    let at = root.field("messages");
    let Value::Array(messages) = required(top, &root, "messages", "an array of messages")? else {
        return Err(BadShape::new(&at, "an array of messages"));
    };
    for (i, message) in objects(messages, &at, "a message (an object with a role)")?
        .into_iter()
        .enumerate()
    {
        self::message(message, &at.index(i), reading)?;
    }
    tools(top, "tools", reading)?;
    tools(top, "functions", reading)?;
    schema(
        top.get("response_format"),
        &root.field("response_format"),
        reading,
    );
    if let Some(prediction) = top.get("prediction").filter(|v| v.is_object()) {
        reading.open(&root.field("prediction"), Kind::System);
        strings(prediction, reading);
    }
    Ok(())
}

/// One message: its content, refusal, reasoning and tool calls are one text.
fn message<'a>(
    message: &'a Map<String, Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    typed(message, at, MESSAGE_FIELDS)?;
    required(message, at, "role", "a string")?;
    reading.open(at, Kind::Message);
    content(message.get("content"), &at.field("content"), reading)?;
    for field in ["refusal", "reasoning_content"] {
        if let Some(text) = opt_str(message, at, field)? {
            reading.part(text);
        }
    }
    if let Some(Value::Array(blocks)) = message.get("thinking_blocks") {
        blocks.iter().for_each(|block| strings(block, reading));
    }
    if let Some(Value::Array(calls)) = message.get("tool_calls") {
        let at = at.field("tool_calls");
        for (i, call) in objects(calls, &at, "a tool call (an object)")?
            .into_iter()
            .enumerate()
        {
            tool_call(call, &at.index(i), reading)?;
        }
    }
    if let Some(call @ Value::Object(_)) = message.get("function_call") {
        function(call, &at.field("function_call"), reading)?;
    }
    Ok(())
}

/// Content: a string, null (an assistant turn that only calls tools), or parts.
pub fn content<'a>(
    content: Option<&'a Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    const EXPECTED: &str = "a string, an array of content parts, or null";
    match content {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) => {
            reading.part(text.as_str());
            Ok(())
        }
        Some(Value::Array(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                let at = at.index(i);
                match part {
                    // Not in OpenAI's types, but LiteLLM joins bare strings like text parts.
                    Value::String(text) => reading.part(text.as_str()),
                    Value::Object(part) => self::part(part, &at, reading)?,
                    _ => return Err(BadShape::new(&at, "a content part (an object)")),
                }
            }
            Ok(())
        }
        Some(_) => Err(BadShape::new(at, EXPECTED)),
    }
}

/// A content part: `text` and `refusal` by their field, media parts read nothing (their URLs
/// are `layers::media`'s), any other type by every string it holds.
fn part<'a>(
    part: &'a Map<String, Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let object = |name: &str| match part.get(name) {
        Some(Value::Object(_)) | None => Ok(()),
        // LiteLLM takes `image_url` as a bare URL string too.
        Some(Value::String(_)) if name == "image_url" => Ok(()),
        Some(_) => Err(BadShape::new(&at.field(name), "an object")),
    };
    match part.get("type") {
        Some(Value::String(_)) | None => {}
        Some(_) => return Err(BadShape::new(&at.field("type"), "a string")),
    }
    match kind_of(part) {
        "text" => {
            let text = opt_str(part, at, "text")?
                .ok_or_else(|| BadShape::new(&at.field("text"), "a string"))?;
            reading.part(text);
        }
        "refusal" => {
            if let Some(text) = opt_str(part, at, "refusal")? {
                reading.part(text);
            }
        }
        "image_url" => object("image_url")?,
        "input_audio" => object("input_audio")?,
        "file" => object("file")?,
        _ => fields(part, reading),
    }
    Ok(())
}

fn tool_call<'a>(
    call: &'a Map<String, Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    if let Some(function) = call.get("function") {
        self::function(function, &at.field("function"), reading)?;
    }
    if let Some(custom) = call.get("custom") {
        let at = at.field("custom");
        let custom = custom
            .as_object()
            .ok_or_else(|| BadShape::new(&at, "an object"))?;
        typed(custom, &at, &[("name", Ty::Str), ("input", Ty::Str)])?;
        for field in ["name", "input"] {
            if let Some(text) = opt_str(custom, &at, field)? {
                reading.part(text);
            }
        }
    }
    Ok(())
}

/// `{name, arguments}`: the arguments are a JSON string the model wrote and reads back.
fn function<'a>(
    function: &'a Value,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let function = function
        .as_object()
        .ok_or_else(|| BadShape::new(at, "an object with name and arguments"))?;
    typed(function, at, &[("name", Ty::Str), ("arguments", Ty::Str)])?;
    for field in ["name", "arguments"] {
        if let Some(text) = opt_str(function, at, field)? {
            reading.part(text);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::proxy::shapes::{read::testing::lines, Shape};

    /// What the model reads from each chat body the openai SDK sends, one line per text.
    #[test]
    fn walker_table() {
        let cases = [
            (
                json!({"model": "m", "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "look "},
                        {"type": "image_url", "image_url": {"url": "https://x.example/a.png", "detail": "low"}},
                        {"type": "input_audio", "input_audio": {"data": "QUJD", "format": "wav"}},
                        {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
                        {"type": "text", "text": "here"}]},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{\"path\":\"/etc\"}"}},
                        {"id": "call_2", "type": "custom", "custom": {"name": "sh", "input": "rm x"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "passwd shadow"},
                    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "done"}]},
                    {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "refusal": "still no",
                     "reasoning_content": "thought", "function_call": {"name": "old", "arguments": "{}"}},
                    {"role": "function", "name": "old", "content": "legacy result"},
                    {"role": "user", "content": [{"type": "video_url", "video_url": {"url": "u"}, "caption": "odd part"}]},
                    {"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc text"}},
                                                 {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}]}
                ],
                "tools": [{"type": "function", "function": {"name": "ls", "description": "List files",
                    "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "dir"}}}}}],
                "functions": [{"name": "old", "description": "legacy"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}}),
                vec![
                    "Message messages[0]: be brief",
                    "Message messages[1]: dev",
                    "Message messages[2]: look here",
                    "Message messages[3]: ls{\"path\":\"/etc\"}shrm x",
                    "Message messages[4]: passwd shadow",
                    "Message messages[5]: done",
                    "Message messages[6]: nostill nothoughtold{}",
                    "Message messages[7]: legacy result",
                    "Message messages[8]: odd part",
                    "Message messages[9]: doc text",
                    "Tool tools[0]: description List files name ls parameters properties path description dir type string type object ",
                    "Tool functions[0]: legacy old ",
                    "Tool response_format: json_schema name r schema type object type json_schema ",
                ],
            ),
            (json!({"messages": []}), vec![]),
            (
                json!({"messages": [{"role": "user", "content": ["bare", "strings"]}], "stream": true, "n": "2"}),
                vec!["Message messages[0]: barestrings"],
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                lines(Shape::ChatCompletions, &body).unwrap(),
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn parser_table() {
        let cases = [
            (
                json!({"model": "m"}),
                "messages must be an array of messages",
            ),
            (
                json!({"messages": {"role": "user"}}),
                "messages must be an array",
            ),
            (json!({"messages": ["hi"]}), "messages[0] must be a message"),
            (
                json!({"messages": [{"content": "hi"}]}),
                "messages[0].role must be a string",
            ),
            (
                json!({"messages": [{"role": 1, "content": "hi"}]}),
                "messages[0].role must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content must be a string, an array of content parts, or null",
            ),
            (
                json!({"messages": [{"role": "user", "content": {"text": "x"}}]}),
                "messages[0].content must be",
            ),
            (
                json!({"messages": [{"role": "user", "content": [7]}]}),
                "messages[0].content[0] must be a content part",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}),
                "messages[0].content[0].text must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "text", "text": ["x"]}]}]}),
                "messages[0].content[0].text must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": 3}]}]}),
                "messages[0].content[0].type must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 1}]}]}),
                "image_url must be an object",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]}),
                "messages[0].tool_calls must be an array",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}]}),
                "messages[0].tool_calls[0].function.arguments must be a string",
            ),
            (
                json!({"messages": [], "model": ["a"]}),
                "model must be a string",
            ),
            (
                json!({"messages": [], "stream": "yes"}),
                "stream must be a boolean",
            ),
            (json!({"messages": [], "n": "many"}), "n must be a number"),
            (
                json!({"messages": [], "metadata": "{\"api_base\":\"x\"}"}),
                "metadata must be an object",
            ),
            (
                json!({"messages": [], "tools": [1]}),
                "tools[0] must be a tool definition",
            ),
            (
                json!({"messages": [], "tools": {"a": 1}}),
                "tools must be an array",
            ),
        ];
        for (body, want) in cases {
            let got = lines(Shape::ChatCompletions, &body).expect_err(&body.to_string());
            assert!(got.contains(want), "{body}: {got}");
        }
    }
}
