//! OpenAI Responses (`POST /v1/responses`), as the openai SDK (3.57,
//! `types/responses/response_create_params.py`, `response_input_item_param.py`) sends it:
//! `input` as a string or a list of items of every type (messages with string or part content,
//! function and custom tool calls and their outputs, reasoning, shell, MCP, ...), `instructions`,
//! a prompt template's variables, tools and the `text.format` schema.
//!
//! Not readable here: what `previous_response_id` or `conversation` pull in upstream.

use serde_json::{Map, Value};

use super::{
    check::{kind_of, objects, opt_str, typed, Ty},
    read::{BadShape, Kind, Loc, Reading},
    text::{fields, schema, tools},
};

const FIELDS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("input", Ty::StrOrArr),
    ("instructions", Ty::Str),
    ("previous_response_id", Ty::Str),
    ("conversation", Ty::StrOrObj),
    ("prompt", Ty::Obj),
    ("max_output_tokens", Ty::Num),
    ("max_tool_calls", Ty::Num),
    ("temperature", Ty::Num),
    ("top_p", Ty::Num),
    ("top_logprobs", Ty::Num),
    ("stream", Ty::Bool),
    ("stream_options", Ty::Obj),
    ("store", Ty::Bool),
    ("background", Ty::Bool),
    ("parallel_tool_calls", Ty::Bool),
    ("tools", Ty::Arr),
    ("tool_choice", Ty::StrOrObj),
    ("text", Ty::Obj),
    ("reasoning", Ty::Obj),
    ("include", Ty::Arr),
    ("truncation", Ty::Str),
    ("metadata", Ty::Obj),
    ("litellm_metadata", Ty::Obj),
    ("user", Ty::Str),
    ("safety_identifier", Ty::Str),
    ("prompt_cache_key", Ty::Str),
    ("service_tier", Ty::Str),
];

/// Fields of input items whose types the guard relies on.
const ITEM_FIELDS: &[(&str, Ty)] = &[
    ("role", Ty::Str),
    ("content", Ty::StrOrArr),
    ("name", Ty::Str),
    ("arguments", Ty::Str),
    ("input", Ty::Str),
    ("output", Ty::StrOrArr),
    ("summary", Ty::Arr),
];

pub fn read<'a>(top: &'a Map<String, Value>, reading: &mut Reading<'a>) -> Result<(), BadShape> {
    let root = Loc::Root;
    typed(top, &root, FIELDS)?;
    if let Some(text) = opt_str(top, &root, "instructions")? {
        reading.text(&root.field("instructions"), Kind::System, text);
    }
    if let Some(prompt) = top.get("prompt").and_then(Value::as_object) {
        if let Some(variables) = prompt.get("variables") {
            let at = root.field("prompt");
            let at = at.field("variables");
            let Value::Object(variables) = variables else {
                return Err(BadShape::new(&at, "an object"));
            };
            reading.open(&at, Kind::System);
            fields(variables, reading);
        }
    }
    let at = root.field("input");
    match top.get("input") {
        Some(Value::String(text)) => reading.text(&at, Kind::Message, text),
        Some(Value::Array(items)) => {
            for (i, item) in objects(items, &at, "an input item (an object)")?
                .into_iter()
                .enumerate()
            {
                self::item(item, &at.index(i), reading)?;
            }
        }
        _ => {} // Absent or null: the input is `previous_response_id`'s or the prompt's.
    }
    tools(top, "tools", reading)?;
    if let Some(text) = top.get("text").and_then(Value::as_object) {
        let at = root.field("text");
        schema(text.get("format"), &at.field("format"), reading);
    }
    Ok(())
}

/// One input item, whatever its type, is one message: a message's content parts, a call's name
/// and arguments, a call output, a reasoning summary.
fn item<'a>(
    item: &'a Map<String, Value>,
    at: &Loc<'_>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    typed(item, at, ITEM_FIELDS)?;
    let message = matches!(kind_of(item), "" | "message");
    if message && item.get("role").is_none_or(Value::is_null) {
        return Err(BadShape::new(&at.field("role"), "a string"));
    }
    for field in ["content", "output", "summary"] {
        if let Some(Value::Array(parts)) = item.get(field) {
            let at = at.field(field);
            for (i, part) in objects(parts, &at, "a content part (an object)")?
                .into_iter()
                .enumerate()
            {
                if matches!(kind_of(part), "input_text" | "output_text" | "summary_text")
                    && !part.get("text").is_some_and(Value::is_string)
                {
                    return Err(BadShape::new(&at.index(i).field("text"), "a string"));
                }
            }
        }
    }
    reading.open(at, Kind::Message);
    fields(item, reading);
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
                json!({"model": "m", "input": "hello"}),
                vec!["Message input: hello"],
            ),
            (
                json!({"model": "m", "previous_response_id": "resp_1"}),
                vec![],
            ),
            (
                json!({"model": "m", "instructions": "be kind",
                    "prompt": {"id": "pmpt_1", "variables": {"city": "Paris", "pic": {"type": "input_image", "image_url": "https://x.example/p.png"}}},
                    "input": [
                        {"role": "user", "content": "plain"},
                        {"type": "message", "role": "user", "content": [
                            {"type": "input_text", "text": "see "},
                            {"type": "input_image", "image_url": "https://x.example/a.png", "detail": "auto"},
                            {"type": "input_file", "file_id": "file-1", "filename": "a.pdf"},
                            {"type": "input_text", "text": "this"}]},
                        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "content": [
                            {"type": "output_text", "text": "prior answer", "annotations": [{"type": "url_citation", "url": "https://x.example", "title": "src"}]}]},
                        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "I thought"}], "encrypted_content": "gAAA"},
                        {"type": "function_call", "call_id": "c1", "name": "ls", "arguments": "{\"p\":1}"},
                        {"type": "function_call_output", "call_id": "c1", "output": "a b"},
                        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "parts out"}]},
                        {"type": "custom_tool_call", "call_id": "c3", "name": "sh", "input": "echo"},
                        {"type": "custom_tool_call_output", "call_id": "c3", "output": "echoed"},
                        {"type": "mcp_call", "id": "m1", "server_label": "s", "name": "t", "arguments": "{}", "output": "mcp out"},
                        {"type": "item_reference", "id": "msg_0"}
                    ],
                    "tools": [{"type": "function", "name": "ls", "description": "List", "parameters": {"type": "object"}},
                              {"type": "web_search"}],
                    "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}}}),
                vec![
                    "System instructions: be kind",
                    "System prompt.variables: Paris",
                    "Message input[0]: plain",
                    "Message input[1]: see this",
                    "Message input[2]: srcprior answer",
                    "Message input[3]: I thought",
                    "Message input[4]: {\"p\":1}ls",
                    "Message input[5]: a b",
                    "Message input[6]: parts out",
                    "Message input[7]: echosh",
                    "Message input[8]: echoed",
                    "Message input[9]: {}tmcp outs",
                    "Message input[10]: ",
                    "Tool tools[0]: List ls type object ",
                    "Tool tools[1]: ",
                    "Tool text.format: name out schema type object type json_schema ",
                ],
            ),
        ];
        for (body, want) in cases {
            assert_eq!(lines(Shape::Responses, &body).unwrap(), want, "{body}");
        }
    }

    #[test]
    fn parser_table() {
        let cases = [
            (json!({"input": 5}), "input must be a string or an array"),
            (json!({"input": ["hi"]}), "input[0] must be an input item"),
            (
                json!({"input": [{"content": "hi"}]}),
                "input[0].role must be a string",
            ),
            (
                json!({"input": [{"type": "message", "role": "user", "content": 1}]}),
                "input[0].content must be a string or an array",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_text", "text": 1}]}]}),
                "input[0].content[0].text must be a string",
            ),
            (
                json!({"input": [{"role": "user", "content": ["x"]}]}),
                "input[0].content[0] must be a content part",
            ),
            (
                json!({"input": [{"type": "function_call", "name": "f", "arguments": {}}]}),
                "input[0].arguments must be a string",
            ),
            (
                json!({"input": [{"type": "function_call_output", "output": 3}]}),
                "input[0].output must be a string or an array",
            ),
            (
                json!({"input": [{"type": 7}]}),
                "input[0].type must be a string",
            ),
            (
                json!({"input": "x", "instructions": ["a"]}),
                "instructions must be a string",
            ),
            (
                json!({"input": "x", "prompt": {"id": "p", "variables": "x"}}),
                "prompt.variables must be an object",
            ),
            (
                json!({"input": "x", "tools": [null]}),
                "tools[0] must be a tool definition",
            ),
            (
                json!({"input": "x", "max_output_tokens": true}),
                "max_output_tokens must be a number",
            ),
        ];
        for (body, want) in cases {
            let got = lines(Shape::Responses, &body).expect_err(&body.to_string());
            assert!(got.contains(want), "{body}: {got}");
        }
    }
}
