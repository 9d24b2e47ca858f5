//! The batch shapes: OpenAI legacy completions (`prompt`), embeddings and moderations (`input`),
//! as the openai SDK (3.57, `completion_create_params.py`, `embedding_create_params.py`,
//! `moderation_create_params.py`) sends them: a string, an array of strings, token ids or arrays
//! of token ids, and for moderations text and image parts.

use serde_json::{Map, Value};

use super::{
    check::{kind_of, objects, opt_str, required, typed, Ty},
    read::{BadShape, Kind, Loc, Reading},
};

const COMPLETIONS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("suffix", Ty::Str),
    ("best_of", Ty::Num),
    ("echo", Ty::Bool),
    ("frequency_penalty", Ty::Num),
    ("presence_penalty", Ty::Num),
    ("logit_bias", Ty::Obj),
    ("logprobs", Ty::Num),
    ("max_tokens", Ty::Num),
    ("n", Ty::Num),
    ("seed", Ty::Num),
    ("stop", Ty::StrOrArr),
    ("stream", Ty::Bool),
    ("stream_options", Ty::Obj),
    ("temperature", Ty::Num),
    ("top_p", Ty::Num),
    ("user", Ty::Str),
    ("metadata", Ty::Obj),
    ("litellm_metadata", Ty::Obj),
];

const EMBEDDINGS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("dimensions", Ty::Num),
    ("encoding_format", Ty::Str),
    ("user", Ty::Str),
    ("metadata", Ty::Obj),
    ("litellm_metadata", Ty::Obj),
];

const MODERATIONS: &[(&str, Ty)] = &[
    ("model", Ty::Str),
    ("metadata", Ty::Obj),
    ("litellm_metadata", Ty::Obj),
];

/// Each prompt is a message; `suffix` (text after the insertion) is read too.
pub fn completions<'a>(
    top: &'a Map<String, Value>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let root = Loc::Root;
    typed(top, &root, COMPLETIONS)?;
    batch(top, "prompt", Kind::Message, reading)?;
    if let Some(suffix) = opt_str(top, &root, "suffix")? {
        reading.text(&root.field("suffix"), Kind::System, suffix);
    }
    Ok(())
}

pub fn embeddings<'a>(
    top: &'a Map<String, Value>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    typed(top, &Loc::Root, EMBEDDINGS)?;
    batch(top, "input", Kind::Input, reading)
}

pub fn moderations<'a>(
    top: &'a Map<String, Value>,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let root = Loc::Root;
    typed(top, &root, MODERATIONS)?;
    let at = root.field("input");
    const EXPECTED: &str = "a string, an array of strings, or an array of text and image_url parts";
    let input = required(top, &root, "input", EXPECTED)?;
    let Value::Array(items) = input else {
        return match input {
            Value::String(text) => {
                reading.text(&at, Kind::Input, text);
                Ok(())
            }
            _ => Err(BadShape::new(&at, EXPECTED)),
        };
    };
    if items.iter().all(Value::is_string) {
        for (i, item) in items.iter().enumerate() {
            reading.text(&at.index(i), Kind::Input, item.as_str().unwrap_or_default());
        }
        return Ok(());
    }
    for (i, part) in objects(items, &at, "a text or image_url part (an object)")?
        .into_iter()
        .enumerate()
    {
        let at = at.index(i);
        match kind_of(part) {
            "text" => {
                let text = opt_str(part, &at, "text")?
                    .ok_or_else(|| BadShape::new(&at.field("text"), "a string"))?;
                reading.text(&at, Kind::Input, text);
            }
            "image_url" => {
                if !part.get("image_url").is_some_and(Value::is_object) {
                    return Err(BadShape::new(
                        &at.field("image_url"),
                        "an object with a url",
                    ));
                }
            }
            _ => {
                return Err(BadShape::new(
                    &at.field("type"),
                    "\"text\" or \"image_url\"",
                ))
            }
        }
    }
    Ok(())
}

/// `prompt` or `input`: a string, or an array of strings, or token ids, or arrays of token ids.
fn batch<'a>(
    top: &'a Map<String, Value>,
    name: &'static str,
    kind: Kind,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    const EXPECTED: &str =
        "a string, an array of strings, an array of token ids, or an array of arrays of token ids";
    let root = Loc::Root;
    let at = root.field(name);
    let tokens = |items: &[Value]| items.iter().all(|t| t.as_u64().is_some());
    match required(top, &root, name, EXPECTED)? {
        Value::String(text) => reading.text(&at, kind, text),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            for (i, item) in items.iter().enumerate() {
                reading.text(&at.index(i), kind, item.as_str().unwrap_or_default());
            }
        }
        Value::Array(items) if tokens(items) => reading.open(&at, Kind::Tokens),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Array(ids) if tokens(ids) => reading.open(&at.index(i), Kind::Tokens),
                    _ => return Err(BadShape::new(&at.index(i), "an array of token ids")),
                }
            }
        }
        _ => return Err(BadShape::new(&at, EXPECTED)),
    }
    Ok(())
}

/// How many inputs a batch holds (what `caps.inputs` bounds): 1 for a string or one token array.
pub fn batch_len(value: &Value) -> usize {
    match value {
        Value::Array(items) if items.iter().all(Value::is_number) => 1,
        Value::Array(items) => items.len(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::proxy::shapes::{read::testing::lines, Shape};

    #[test]
    fn walker_table() {
        use Shape::*;
        let cases = [
            (
                Completions,
                json!({"model": "m", "prompt": "say", "suffix": "end"}),
                vec!["Message prompt: say", "System suffix: end"],
            ),
            (
                Completions,
                json!({"prompt": ["a", "b"]}),
                vec!["Message prompt[0]: a", "Message prompt[1]: b"],
            ),
            (
                Completions,
                json!({"prompt": [1, 2, 3]}),
                vec!["Tokens prompt: "],
            ),
            (
                Completions,
                json!({"prompt": [[1], [2, 3]]}),
                vec!["Tokens prompt[0]: ", "Tokens prompt[1]: "],
            ),
            (
                Embeddings,
                json!({"model": "e", "input": "x", "encoding_format": "base64"}),
                vec!["Input input: x"],
            ),
            (
                Embeddings,
                json!({"input": ["x", "y"], "dimensions": 8}),
                vec!["Input input[0]: x", "Input input[1]: y"],
            ),
            (Embeddings, json!({"input": [5, 6]}), vec!["Tokens input: "]),
            (Embeddings, json!({"input": []}), vec![]),
            (
                Moderations,
                json!({"input": "bad words"}),
                vec!["Input input: bad words"],
            ),
            (
                Moderations,
                json!({"input": ["a", "b"], "model": "omni-moderation-latest"}),
                vec!["Input input[0]: a", "Input input[1]: b"],
            ),
            (
                Moderations,
                json!({"input": [{"type": "text", "text": "t"}, {"type": "image_url", "image_url": {"url": "https://x.example/i.png"}}]}),
                vec!["Input input[0]: t"],
            ),
        ];
        for (shape, body, want) in cases {
            assert_eq!(lines(shape, &body).unwrap(), want, "{shape} {body}");
        }
    }

    #[test]
    fn parser_table() {
        use Shape::*;
        let cases = [
            (
                Completions,
                json!({"model": "m"}),
                "prompt must be a string, an array of strings",
            ),
            (Completions, json!({"prompt": 5}), "prompt must be"),
            (
                Completions,
                json!({"prompt": ["a", 1]}),
                "prompt[0] must be an array of token ids",
            ),
            (
                Completions,
                json!({"prompt": [[1, "a"]]}),
                "prompt[0] must be an array of token ids",
            ),
            (
                Completions,
                json!({"prompt": "x", "suffix": 1}),
                "suffix must be a string",
            ),
            (
                Completions,
                json!({"prompt": "x", "echo": "no"}),
                "echo must be a boolean",
            ),
            (Embeddings, json!({"model": "e"}), "input must be"),
            (Embeddings, json!({"input": {"text": "x"}}), "input must be"),
            (
                Embeddings,
                json!({"input": [-1]}),
                "input[0] must be an array of token ids",
            ),
            (
                Embeddings,
                json!({"input": [1.5]}),
                "input[0] must be an array of token ids",
            ),
            (
                Embeddings,
                json!({"input": "x", "dimensions": []}),
                "dimensions must be a number",
            ),
            (Moderations, json!({}), "input must be"),
            (Moderations, json!({"input": 3}), "input must be"),
            (
                Moderations,
                json!({"input": [{"type": "audio"}]}),
                "input[0].type must be \"text\" or \"image_url\"",
            ),
            (
                Moderations,
                json!({"input": [{"type": "text"}]}),
                "input[0].text must be a string",
            ),
            (
                Moderations,
                json!({"input": [{"type": "image_url", "image_url": "u"}]}),
                "input[0].image_url must be an object",
            ),
        ];
        for (shape, body, want) in cases {
            let got = lines(shape, &body).expect_err(&body.to_string());
            assert!(got.contains(want), "{shape} {body}: {got}");
        }
    }
}
