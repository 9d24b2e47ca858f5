//! The `usage` of a JSON answer, read from a bounded copy of it while it passes to the client.
//!
//! Answers up to `WHOLE` bytes are copied whole and parsed once they end. A longer one (a large
//! embeddings answer) keeps only its last `TAIL` bytes: every shape the guard meters puts `usage`
//! after the content (`choices`, `data`, `output`, `content`), so the last `"usage":` of the tail
//! is the answer's own. Memory per answer is bounded either way.

use bytes::Bytes;
use serde_json::Value;

use super::Reported;

/// Answers up to this size are parsed whole.
const WHOLE: usize = 64 * 1024;
/// What a longer answer keeps of its end.
const TAIL: usize = 8 * 1024;

/// The parts of an answer that carry usage: its own `usage`, or (from gateways that wrap a
/// Responses answer) `response.usage`.
#[derive(serde::Deserialize)]
struct Answer {
    usage: Option<Value>,
    response: Option<Wrapped>,
}

#[derive(serde::Deserialize)]
struct Wrapped {
    usage: Option<Value>,
}

#[derive(Default)]
pub struct JsonUsage {
    buf: Vec<u8>,
    /// The copy lost its beginning: only the tail is left.
    truncated: bool,
}

impl JsonUsage {
    pub fn feed(&mut self, data: &Bytes) {
        self.buf.extend_from_slice(data);
        if self.buf.len() > WHOLE {
            let cut = self.buf.len() - TAIL;
            self.buf.drain(..cut);
            self.truncated = true;
        }
    }

    /// What the answer reported, and the characters of its text (for an estimate).
    pub fn finish(&mut self) -> (Reported, u64) {
        let buf = std::mem::take(&mut self.buf);
        if !self.truncated {
            // Only `usage` is kept: serde skips the rest without building it.
            let reported = serde_json::from_slice::<Answer>(&buf)
                .ok()
                .and_then(|answer| {
                    answer
                        .usage
                        .or_else(|| answer.response.and_then(|r| r.usage))
                })
                .and_then(|usage| super::reported(&usage))
                .unwrap_or_default();
            // The characters matter only for an estimate.
            let complete = reported.input.is_some() && reported.output.is_some();
            let chars = if complete {
                0
            } else {
                super::estimate::streamed_text_chars(&buf)
            };
            return (reported, chars);
        }
        let reported = memchr::memmem::rfind(&buf, b"\"usage\"")
            .and_then(|at| {
                let rest = &buf[at + b"\"usage\"".len()..];
                let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
                let rest = rest[colon..].strip_prefix(b":")?;
                serde_json::Deserializer::from_slice(rest)
                    .into_iter::<Value>()
                    .next()?
                    .ok()
            })
            .and_then(|usage| super::reported(&usage))
            .unwrap_or_default();
        // A long answer's text is mostly its content: its size stands in for its characters.
        (reported, (WHOLE + TAIL) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(body: &[u8], chunk: usize) -> Reported {
        let mut json = JsonUsage::default();
        for piece in body.chunks(chunk.max(1)) {
            json.feed(&Bytes::copy_from_slice(piece));
        }
        json.finish().0
    }

    #[test]
    fn every_shape_in_any_chunking() {
        type Counts = (Option<u64>, Option<u64>);
        let cases: &[(&str, Counts)] = &[
            (
                r#"{"id":"c","choices":[{"message":{"content":"hi"}}],"usage":{"completion_tokens":20,"prompt_tokens":10,"total_tokens":30}}"#,
                (Some(10), Some(20)),
            ),
            (
                r#"{"object":"list","data":[{"embedding":[0.1,0.2]}],"model":"e","usage":{"prompt_tokens":4,"total_tokens":4}}"#,
                (Some(4), Some(0)),
            ),
            (
                r#"{"id":"resp","output":[],"usage":{"input_tokens":3,"output_tokens":5,"total_tokens":8}}"#,
                (Some(3), Some(5)),
            ),
            (
                r#"{"type":"message","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":12,"output_tokens":6}}"#,
                (Some(12), Some(6)),
            ),
            (r#"{"choices":[]}"#, (None, None)),
            (r#"not json"#, (None, None)),
        ];
        for (body, want) in cases {
            for chunk in [1, 3, 7, 1000] {
                let got = fed(body.as_bytes(), chunk);
                assert_eq!((got.input, got.output), *want, "{body} by {chunk}");
            }
        }
    }

    #[test]
    fn a_long_answer_keeps_only_its_tail_and_still_finds_usage() {
        let vector = "0.123456,".repeat(20_000);
        let body = format!(
            r#"{{"data":[{{"embedding":[{vector}0.1],"usage":"decoy"}}],"usage":{{"prompt_tokens":77,"total_tokens":77}}}}"#
        );
        let mut json = JsonUsage::default();
        for piece in body.as_bytes().chunks(4096) {
            json.feed(&Bytes::copy_from_slice(piece));
            assert!(json.buf.len() <= WHOLE + 4096);
        }
        let (reported, _) = json.finish();
        assert_eq!((reported.input, reported.output), (Some(77), Some(0)));
    }
}
