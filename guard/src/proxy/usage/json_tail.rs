//! The quick way to a JSON answer's usage: read at the end of the answer's last frame, where
//! OpenAI, Anthropic and LiteLLM write it (with at most a few short members after it). When this
//! finds nothing it is sure of, `json_usage` scans the answer as before; this only saves that scan.
//!
//! Candidates are the `{`s nearest the end whose key before them is `"usage"`; each is read as a
//! usage object, and the members after it are followed to a `}` with nothing but whitespace after
//! it. Why that proves the key is the answer's top-level `usage`: in JSON, the bytes `"usage"`
//! are a string of their own when their first quote is not escaped (inside a string, a quote
//! follows an odd run of backslashes, and the quote after `usage` would need one too), and a
//! string followed by `:` is a key. Its members read to a `}` that is the answer's last byte, so
//! the object holding the key closes last: the top-level one. The first candidate from the end
//! that passes is the last top-level `usage`, the one the scan would keep too.
//!
//! That reasoning holds for JSON. Bytes that are not JSON can read differently on the two ways;
//! only the upstream writes the structure of its answer (what a model generates is inside
//! strings, escaped), and it is the upstream's own report that is charged in any case.

use super::{json_usage::MAX_USAGE, Plain, Reported};

/// How far before the end a candidate's `{` may be: a usage object is at most `MAX_USAGE` bytes,
/// and what follows it is a few short members.
const TAIL: usize = MAX_USAGE + 4096;
/// How many `{`s from the end are tried (a usage object's own token details are objects too).
const CANDIDATES: usize = 8;

/// What a candidate `{` turned out to be.
enum Candidate {
    /// The top-level usage, read.
    Usage(Reported),
    /// Not the value of a top-level `usage` key: the one before it may be.
    Other,
    /// Something this reading cannot decide (or a usage it does not read): the scan decides.
    Unsure,
}

/// The top-level usage of the answer that `frame` ends, if this reading is sure of it and it
/// reports an output count; `None` when the full scan must decide.
pub fn top_usage(frame: &[u8]) -> Option<Reported> {
    let floor = frame.len().saturating_sub(TAIL);
    let mut end = frame.len();
    for _ in 0..CANDIDATES {
        let brace = floor + memchr::memrchr(b'{', &frame[floor..end])?;
        end = brace;
        match candidate(frame, brace) {
            Candidate::Usage(reported) => return Some(reported),
            Candidate::Other => continue,
            Candidate::Unsure => return None,
        }
    }
    None
}

fn candidate(frame: &[u8], brace: usize) -> Candidate {
    // The key before it: `"usage"`, then optional whitespace and `:`.
    let Some(colon) = last_non_ws(frame, brace) else {
        return Candidate::Other;
    };
    if frame[colon] != b':' {
        return Candidate::Other;
    }
    let Some(close) = last_non_ws(frame, colon) else {
        return Candidate::Other;
    };
    if close < 6 || &frame[close - 6..=close] != b"\"usage\"" {
        return Candidate::Other;
    }
    let open = close - 6;
    let backslashes = frame[..open]
        .iter()
        .rev()
        .take_while(|b| **b == b'\\')
        .count();
    if backslashes == open {
        // The frame starts there: what came before (an escaping backslash?) is out of sight.
        return Candidate::Unsure;
    }
    if backslashes % 2 == 1 {
        // An escaped quote: `"usage"` ends a longer string.
        return Candidate::Other;
    }
    let mut plain = Plain {
        text: frame,
        at: brace,
    };
    let Some(counts) = plain.object() else {
        return Candidate::Unsure;
    };
    if plain.at - brace > MAX_USAGE {
        return Candidate::Unsure;
    }
    match closes_last(frame, plain.at) {
        Some(true) => {}
        Some(false) => return Candidate::Other,
        None => return Candidate::Unsure,
    }
    // A usage without an output count leaves the text's characters to count: the scan does.
    match counts.reported() {
        Some(reported) if reported.output.is_some() => Candidate::Usage(reported),
        _ => Candidate::Unsure,
    }
}

/// The index of the last byte before `end` that is not JSON whitespace.
fn last_non_ws(frame: &[u8], end: usize) -> Option<usize> {
    frame[..end]
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Whether the members from `at` (just after a value of an object) close that object with the
/// frame's last non-whitespace byte: `Some(false)` when it closes before, `None` when what is
/// there is not members of an object.
fn closes_last(frame: &[u8], at: usize) -> Option<bool> {
    let mut scan = Plain { text: frame, at };
    loop {
        scan.ws();
        match scan.next()? {
            b'}' => {
                scan.ws();
                return Some(scan.at == frame.len());
            }
            b',' => {
                scan.ws();
                scan.eat(b'"')?;
                scan.at = string_end(frame, scan.at)?;
                scan.ws();
                scan.eat(b':')?;
                scan.ws();
                scan.at = value_end(frame, scan.at)?;
            }
            _ => return None,
        }
    }
}

/// Where the string whose body starts at `at` ends (after its closing quote).
fn string_end(frame: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at += memchr::memchr2(b'"', b'\\', frame.get(at..)?)?;
        if frame[at] == b'"' {
            return Some(at + 1);
        }
        at += 2;
    }
}

/// Where the value that starts at `at` ends.
fn value_end(frame: &[u8], at: usize) -> Option<usize> {
    match *frame.get(at)? {
        b'"' => string_end(frame, at + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < frame.len() {
                match frame[i] {
                    b'"' => {
                        i = string_end(frame, i + 1)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        _ => {
            // A number or `true`/`false`/`null`.
            let len = frame[at..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
                .count();
            (len > 0).then_some(at + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_top_level_usage_at_the_end_and_nothing_else() {
        let yes: &[(&str, (u64, u64))] = &[
            (
                r#"{"id":"c","choices":[{"message":{"content":"ok"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
                (1, 2),
            ),
            // Members after it, with strings that hold braces, quotes and backslashes.
            (
                r#"{"usage":{"prompt_tokens":4,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":0}},"service_tier":"default","x":{"a":["}\"{","\\"]},"n":null,"f":-1.5e3}"#,
                (4, 5),
            ),
            (
                "{ \"usage\" :\n { \"input_tokens\" : 7 , \"output_tokens\" : 8 } \r\n}\n",
                (7, 8),
            ),
            // A nested one after the top-level one: the top-level one.
            (
                r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"tool":{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
                (1, 1),
            ),
            // Two top-level ones: the last, as the scan keeps.
            (
                r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2}}"#,
                (2, 2),
            ),
        ];
        for (body, (input, output)) in yes {
            let got = top_usage(body.as_bytes());
            assert_eq!(
                got,
                Some(Reported {
                    input: Some(*input),
                    output: Some(*output)
                }),
                "{body}"
            );
        }
        let no: &[&str] = &[
            // Nested at depth 2, in an array, or wrapped: not the top-level usage.
            r#"{"a":{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
            r#"{"data":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}]}"#,
            r#"[{"usage":{"prompt_tokens":9,"completion_tokens":9}}]"#,
            r#"{"response":{"usage":{"input_tokens":9,"output_tokens":9}}}"#,
            // In a string value, escaped; as the end of an escaped key.
            r#"{"content":"\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":9}}"}"#,
            r#"{"a":1,"\"usage":{"prompt_tokens":9,"completion_tokens":9}}"#,
            r#"{"x":"usage","y":{"prompt_tokens":9,"completion_tokens":9}}"#,
            // Not closing the answer: more after it.
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":9}} x"#,
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
            // Read by the scan instead: no output count, not a plain object, an empty one.
            r#"{"usage":{"prompt_tokens":9}}"#,
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":"9"}}"#,
            r#"{"usage":{}}"#,
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":9},"usage":{}}"#,
            // The frame starts inside the key: what was before is unknown.
            r#""usage":{"prompt_tokens":9,"completion_tokens":9}}"#,
            r#"\"usage":{"prompt_tokens":9,"completion_tokens":9}}"#,
            "",
            "}",
            "{",
        ];
        for body in no {
            assert_eq!(top_usage(body.as_bytes()), None, "{body}");
        }
    }
}
