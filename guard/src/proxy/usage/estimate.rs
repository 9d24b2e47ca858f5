//! Estimates from characters, for when no usage arrives: about four characters a token, the
//! usual rule of thumb for English text and code with BPE tokenizers. An estimate is always
//! marked as one (`Usage::estimated`).

use serde_json::Value;

/// Characters per token.
const CHARS_PER_TOKEN: u64 = 4;

/// Tokens for `chars` characters, rounded up (one character is a token).
pub fn tokens(chars: u64) -> u64 {
    chars.div_ceil(CHARS_PER_TOKEN)
}

/// Characters of the text a request gives the model: every string in the body but the ones that
/// name things (`model`, `user`, roles, ids), which the model never reads as text.
pub fn prompt_chars(body: &Value) -> u64 {
    fn walk(value: &Value, budget: &mut usize) -> u64 {
        // The body was checked for depth and size already; this bounds the walk's work anyway.
        if *budget == 0 {
            return 0;
        }
        *budget -= 1;
        match value {
            Value::String(text) => text.chars().count() as u64,
            Value::Array(items) => items.iter().map(|item| walk(item, budget)).sum(),
            Value::Object(map) => map
                .iter()
                .filter(|(name, _)| !naming(name))
                .map(|(_, item)| walk(item, budget))
                .sum(),
            _ => 0,
        }
    }
    // A `match` on the names: one length test and compare, not one call per name.
    fn naming(name: &str) -> bool {
        matches!(
            name,
            "model" | "user" | "role" | "type" | "id" | "tool_call_id" | "name"
        )
    }
    let mut budget = 100_000;
    walk(body, &mut budget)
}

/// The characters of generated text in one streamed event's JSON: the string values of the keys
/// that carry it (`content`, `text`, `arguments`, `partial_json`, `thinking`, `refusal`, and the
/// Responses API's string `delta`). A scan, not a parse, since it runs on every event.
pub fn streamed_text_chars(line: &[u8]) -> u64 {
    const KEYS: &[&[u8]] = &[
        b"\"content\"",
        b"\"text\"",
        b"\"arguments\"",
        b"\"partial_json\"",
        b"\"thinking\"",
        b"\"refusal\"",
        b"\"delta\"",
    ];
    let mut chars = 0;
    for key in KEYS {
        for at in memchr::memmem::find_iter(line, key) {
            let mut rest = &line[at + key.len()..];
            rest = trim_start(rest);
            let Some(after_colon) = rest.strip_prefix(b":") else {
                continue;
            };
            let Some(string) = trim_start(after_colon).strip_prefix(b"\"") else {
                continue;
            };
            chars += string_chars(string);
        }
    }
    chars
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    &bytes[skip..]
}

/// Characters of a JSON string's body up to its closing quote (an escape counts as one).
fn string_chars(bytes: &[u8]) -> u64 {
    let mut chars = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => break,
            b'\\' => {
                // `\uXXXX` is one character; any other escape is two bytes.
                i += if bytes.get(i + 1) == Some(&b'u') {
                    6
                } else {
                    2
                };
                chars += 1;
                continue;
            }
            // Continuation bytes of UTF-8 are not characters of their own.
            byte if byte & 0xC0 == 0x80 => {}
            _ => chars += 1,
        }
        i += 1;
    }
    chars
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tokens_round_up() {
        for (chars, want) in [(0, 0), (1, 1), (4, 1), (5, 2), (400, 100)] {
            assert_eq!(tokens(chars), want, "{chars}");
        }
    }

    #[test]
    fn prompt_chars_count_text_not_names() {
        let body = json!({
            "model": "gpt-4o-mini-long-name",
            "user": "someone",
            "messages": [
                {"role": "system", "content": "abcd"},
                {"role": "user", "content": [{"type": "text", "text": "éé"}]}
            ],
            "max_tokens": 10
        });
        assert_eq!(prompt_chars(&body), 6);
    }

    #[test]
    fn streamed_text_is_found_in_every_shape() {
        let cases: &[(&[u8], u64)] = &[
            (br#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#, 3),
            (br#"{"choices":[{"delta":{"content":"a\"b\u00e9"}}]}"#, 4),
            (br#"{"choices":[{"delta":{}}],"usage":{"prompt_tokens":1}}"#, 0),
            ("{\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"héllo\"}}".as_bytes(), 5),
            (br#"{"type":"response.output_text.delta","delta":"abc"}"#, 3),
            (br#"{"choices":[{"delta":{"content": null}}]}"#, 0),
            (br#"{"choices":[{"text":"xy"}]}"#, 2),
        ];
        for (line, want) in cases {
            assert_eq!(
                streamed_text_chars(line),
                *want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
