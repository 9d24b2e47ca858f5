//! An incremental scanner over a streamed (SSE) answer, with bounded memory: it reads each
//! `data:` line as it completes for the usage it reports (OpenAI's usage chunk, Anthropic's
//! `message_start` and `message_delta`, the Responses API's `response.completed`) and counts the
//! characters of the generated text for an estimate, in case no usage comes.
//!
//! When the guard added `stream_options.include_usage` itself, the scanner also removes the
//! usage-only chunk the client did not ask for. It then holds back the current event (at most
//! `MAX_EVENT` bytes, then it lets that event through as it is) until its blank line says
//! whether it is that chunk; every other event goes out whole as soon as it ends.
//!
//! Lines end in `\n` or `\r\n` (what OpenAI, Anthropic and LiteLLM send). A line longer than
//! `MAX_LINE` is not kept: only its size counts, as characters of text.

use bytes::Bytes;
use serde_json::Value;

use super::{estimate, Reported};

/// The longest line kept for reading; usage chunks are a few hundred bytes.
const MAX_LINE: usize = 64 * 1024;
/// The longest event held back while stripping.
const MAX_EVENT: usize = 64 * 1024;

pub struct SseScanner {
    strip: bool,
    /// The current line so far, without its `\n`.
    line: Vec<u8>,
    /// The current line outgrew `MAX_LINE`: the rest of it is only counted.
    overflow: u64,
    /// While stripping: the current event's bytes, not yet sent.
    held: Vec<u8>,
    /// While stripping: the current event outgrew `MAX_EVENT` and was sent; the rest of it goes
    /// straight out.
    passing: bool,
    /// The current event is a usage-only chunk.
    usage_only: bool,
    reported: Reported,
    output_chars: u64,
    ended: bool,
}

impl SseScanner {
    pub fn new(strip: bool) -> SseScanner {
        SseScanner {
            strip,
            line: Vec::new(),
            overflow: 0,
            held: Vec::new(),
            passing: false,
            usage_only: false,
            reported: Reported::default(),
            output_chars: 0,
            ended: false,
        }
    }

    pub fn reported(&self) -> Reported {
        self.reported
    }

    pub fn output_chars(&self) -> u64 {
        self.output_chars
    }

    /// Reads `data`. While stripping, returns what to send instead of it (possibly empty);
    /// otherwise `None`: the frame goes out unchanged.
    pub fn feed(&mut self, data: &[u8]) -> Option<Bytes> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let (piece, complete) = match memchr::memchr(b'\n', rest) {
                Some(at) => (&rest[..=at], true),
                None => (rest, false),
            };
            rest = &rest[piece.len()..];
            let text = if complete {
                &piece[..piece.len() - 1]
            } else {
                piece
            };
            self.take(text);
            if self.strip {
                self.hold(piece, &mut out);
            }
            if complete {
                self.end_line(&mut out);
            }
        }
        self.strip.then(|| Bytes::from(out))
    }

    /// The stream ended: reads a last line that had no `\n`, and returns what a stripping
    /// scanner still held (an event without its blank line goes out as it is).
    pub fn end(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        self.ended = true;
        if !self.line.is_empty() || self.overflow > 0 {
            self.read_line();
        }
        let held = std::mem::take(&mut self.held);
        (self.strip && !held.is_empty()).then(|| Bytes::from(held))
    }

    fn take(&mut self, text: &[u8]) {
        if self.overflow > 0 {
            self.overflow += text.len() as u64;
        } else if self.line.len() + text.len() > MAX_LINE {
            self.overflow = (self.line.len() + text.len()) as u64;
            self.line = Vec::new();
        } else {
            self.line.extend_from_slice(text);
        }
    }

    fn hold(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if self.passing {
            out.extend_from_slice(piece);
            return;
        }
        self.held.extend_from_slice(piece);
        if self.held.len() > MAX_EVENT {
            out.append(&mut self.held);
            self.passing = true;
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        let blank = self.overflow == 0 && matches!(self.line.as_slice(), [] | [b'\r']);
        if blank {
            if self.strip {
                if self.usage_only && !self.passing {
                    self.held.clear();
                } else {
                    out.append(&mut self.held);
                }
            }
            self.passing = false;
            self.usage_only = false;
        } else {
            self.read_line();
        }
        self.line.clear();
        self.overflow = 0;
    }

    fn read_line(&mut self) {
        if self.overflow > 0 {
            self.output_chars += self.overflow;
            return;
        }
        let mut line = self.line.as_slice();
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        // Comments (`: keep-alive`), `event:`, `id:` and `retry:` say nothing about usage.
        let Some(payload) = line.strip_prefix(b"data:") else {
            return;
        };
        let payload = payload.strip_prefix(b" ").unwrap_or(payload);
        let finder = memchr::memmem::find(payload, b"\"usage\"");
        if finder.is_none() {
            self.output_chars += estimate::streamed_text_chars(payload);
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            self.output_chars += estimate::streamed_text_chars(payload);
            return;
        };
        let usage = match value.get("type").and_then(Value::as_str) {
            Some("message_start") => value.get("message").and_then(|m| m.get("usage")),
            Some("response.completed") => value.get("response").and_then(|r| r.get("usage")),
            _ => value.get("usage"),
        };
        match usage.and_then(super::reported) {
            Some(reported) => {
                self.reported.merge(reported);
                self.usage_only = is_usage_only(&value);
                if !self.usage_only {
                    self.output_chars += estimate::streamed_text_chars(payload);
                }
            }
            None => self.output_chars += estimate::streamed_text_chars(payload),
        }
    }
}

/// An OpenAI chunk that carries usage and nothing for the client: no choices, or choices with an
/// empty delta and no finish reason (LiteLLM sends `[{"index":0,"delta":{}}]`).
fn is_usage_only(chunk: &Value) -> bool {
    let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
        return false;
    };
    choices.iter().all(|choice| {
        let empty_delta = match choice.get("delta") {
            None | Some(Value::Null) => true,
            Some(Value::Object(delta)) => delta.values().all(Value::is_null),
            Some(_) => false,
        };
        let finished = choice.get("finish_reason").is_some_and(|r| !r.is_null());
        let text = choice.get("text").is_some_and(|t| t != "");
        empty_delta && !finished && !text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LiteLLM 1.108 stream with `include_usage` (as it answers `mock_response` models).
    const LITELLM: &str = concat!(
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo.\"}}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"completion_tokens\":6,\"prompt_tokens\":8,\"total_tokens\":14}}\n\n",
        "data: [DONE]\n\n",
    );

    /// Without the usage chunk: what a client that did not ask must see.
    fn without_usage_chunk(stream: &str) -> String {
        stream
            .split_inclusive("\n\n")
            .filter(|event| !event.contains("\"usage\""))
            .collect()
    }

    /// Feeds `pieces` in turn; returns what went out (stripping) and what was read.
    fn run(strip: bool, pieces: &[&[u8]]) -> (Vec<u8>, Reported, u64) {
        let mut scanner = SseScanner::new(strip);
        let mut out = Vec::new();
        for piece in pieces {
            match scanner.feed(piece) {
                Some(bytes) => out.extend_from_slice(&bytes),
                None => out.extend_from_slice(piece),
            }
            assert!(scanner.line.len() <= MAX_LINE && scanner.held.len() <= MAX_EVENT + MAX_LINE);
        }
        if let Some(rest) = scanner.end() {
            out.extend_from_slice(&rest);
        }
        (out, scanner.reported(), scanner.output_chars())
    }

    /// Every split of `stream` in two, and byte by byte.
    fn every_split(
        stream: &[u8],
        mut check: impl FnMut(&str, (Vec<u8>, Reported, u64)),
        strip: bool,
    ) {
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            check(&format!("split at {at}"), run(strip, &[a, b]));
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        check("byte by byte", run(strip, &bytes));
        // Three pieces, the middle one a few bytes long (the usage line cut twice).
        for at in 0..stream.len().saturating_sub(5) {
            let pieces = [&stream[..at], &stream[at..at + 5], &stream[at + 5..]];
            check(&format!("three at {at}"), run(strip, &pieces));
        }
    }

    #[test]
    fn openai_usage_chunk_in_every_split() {
        for strip in [false, true] {
            every_split(
                LITELLM.as_bytes(),
                |how, (out, reported, chars)| {
                    assert_eq!(
                        (reported.input, reported.output),
                        (Some(8), Some(6)),
                        "{how}"
                    );
                    assert_eq!(chars, 6, "{how}");
                    let want = if strip {
                        without_usage_chunk(LITELLM)
                    } else {
                        LITELLM.to_owned()
                    };
                    assert_eq!(String::from_utf8(out).unwrap(), want, "{how} strip={strip}");
                },
                strip,
            );
        }
    }

    #[test]
    fn crlf_comments_and_keep_alives() {
        let stream = concat!(
            ": keep-alive\r\n\r\n",
            "\r\n",
            "event: chunk\r\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"abcd\"}}]}\r\n\r\n",
            ":ping\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\r\n\r\n",
            "data: [DONE]\r\n\r\n",
        );
        for strip in [false, true] {
            every_split(
                stream.as_bytes(),
                |how, (out, reported, chars)| {
                    assert_eq!(
                        (reported.input, reported.output),
                        (Some(3), Some(1)),
                        "{how}"
                    );
                    assert_eq!(chars, 4, "{how}");
                    let out = String::from_utf8(out).unwrap();
                    assert_eq!(out.contains("usage"), !strip, "{how}");
                    assert!(
                        out.contains(": keep-alive") && out.ends_with("[DONE]\r\n\r\n"),
                        "{how}"
                    );
                },
                strip,
            );
        }
    }

    #[test]
    fn a_stream_without_its_usage_chunk_counts_characters() {
        // Cut off after the first content event and in the middle of the next.
        let stream =
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello world\"}}]}\n\ndata: {\"choi";
        for strip in [false, true] {
            every_split(
                stream.as_bytes(),
                |how, (out, reported, chars)| {
                    assert_eq!(reported, Reported::default(), "{how}");
                    assert_eq!(chars, 11, "{how}");
                    assert_eq!(out, stream.as_bytes(), "{how}: every byte still goes out");
                },
                strip,
            );
        }
    }

    #[test]
    fn anthropic_start_and_delta() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi there\"}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        every_split(
            stream.as_bytes(),
            |how, (_, reported, chars)| {
                assert_eq!(
                    (reported.input, reported.output),
                    (Some(25), Some(15)),
                    "{how}"
                );
                assert_eq!(chars, 8, "{how}");
            },
            false,
        );
    }

    #[test]
    fn responses_completed_event() {
        let stream = concat!(
            "event: response.output_text.delta\n",
            "data: {\"type\":\"response.output_text.delta\",\"delta\":\"ab\"}\n\n",
            "event: response.completed\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"usage\":{\"input_tokens\":4,\"output_tokens\":2,\"total_tokens\":6}}}\n\n",
        );
        let (_, reported, _) = run(false, &[stream.as_bytes()]);
        assert_eq!((reported.input, reported.output), (Some(4), Some(2)));
    }

    #[test]
    fn long_lines_and_events_stay_bounded() {
        let content = "x".repeat(3 * MAX_LINE);
        let stream = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{content}\"}}}}]}}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":2}}}}\n\n"
        );
        for strip in [false, true] {
            let pieces: Vec<&[u8]> = stream.as_bytes().chunks(1000).collect();
            let (out, reported, chars) = run(strip, &pieces);
            assert_eq!((reported.input, reported.output), (Some(1), Some(2)));
            assert!(chars >= content.len() as u64);
            let out = String::from_utf8(out).unwrap();
            assert!(out.contains(&content), "the long event went out whole");
            assert_eq!(out.contains("usage"), !strip);
        }
    }

    #[test]
    fn a_megabyte_stream_keeps_its_buffers_bounded() {
        let event =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789abcdef\"}}]}\n\n";
        let stream = event.repeat((1 << 20) / event.len() + 1);
        for strip in [false, true] {
            let mut scanner = SseScanner::new(strip);
            let mut out = 0;
            for frame in stream.as_bytes().chunks(16 * 1024) {
                out += scanner.feed(frame).map_or(frame.len(), |bytes| bytes.len());
                // What the scanner keeps between frames, whatever the stream's length.
                assert!(
                    scanner.line.capacity() <= 2 * MAX_LINE,
                    "{}",
                    scanner.line.capacity()
                );
                assert!(
                    scanner.held.capacity() <= 2 * MAX_EVENT,
                    "{}",
                    scanner.held.capacity()
                );
            }
            out += scanner.end().map_or(0, |rest| rest.len());
            assert_eq!(out, stream.len());
            assert_eq!(
                scanner.output_chars(),
                16 * (stream.len() / event.len()) as u64
            );
        }
    }

    #[test]
    fn a_chunk_with_content_and_usage_is_kept() {
        let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        let (out, reported, _) = run(true, &[stream.as_bytes()]);
        assert_eq!(out, stream.as_bytes());
        assert_eq!(reported.output, Some(1));
    }
}
