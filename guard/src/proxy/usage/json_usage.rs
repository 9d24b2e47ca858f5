//! The `usage` of a JSON answer, read by an incremental scan of its frames as they pass to the
//! client: nothing of the answer is copied but its `usage` object.
//!
//! The scan follows the JSON structure (strings, escapes, nesting) byte by byte, skipping the
//! inside of strings with `memchr`, so a `"usage"` in the text (escaped there) or nested in the
//! content (an embedding's, a tool's) is never taken for the answer's own: only the top-level
//! `usage` object counts, or, from gateways that wrap a Responses answer, `response.usage`. That
//! object alone is kept (at most `MAX_USAGE` bytes) and parsed when the answer ends. On the way it
//! counts the characters of the generated text (the string values of `content`, `text`, ...), for
//! an estimate in case no usage comes. Memory per answer is a few words plus the usage object.
//!
//! The newest frame is held (a reference, not a copy) and scanned only when the next one comes:
//! when it turns out to end the answer, `json_tail` reads the usage at its end without the scan
//! (the usual case; an answer is often one frame), and only if that is not sure the scan runs.

use super::Reported;
use bytes::Bytes;

/// The largest `usage` object kept; OpenAI's, with its token details, is a few hundred bytes.
pub(super) const MAX_USAGE: usize = 4096;
/// Containers whose kind (object or array) is tracked; deeper ones are all taken for arrays, so
/// their keys are neither usage (which is at depth 1 or 2) nor counted text.
const TRACKED_DEPTH: u32 = 128;
/// The longest key compared (`partial_json`); longer keys are other keys.
const KEY_BYTES: usize = 16;

/// The bytes that change the scan's state outside strings.
static STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut at = 0;
    let bytes = b"\"{}[],:";
    while at < bytes.len() {
        table[bytes[at] as usize] = true;
        at += 1;
    }
    table
};

/// What a key says about the value that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Key {
    #[default]
    Other,
    Usage,
    Response,
    /// A key whose string value is generated text (as `estimate::streamed_text_chars` reads).
    Text,
}

fn classify(key: &[u8]) -> Key {
    // By the first byte before any comparison: most keys of an answer (`id`, `model`,
    // `choices`, `index`, ...) are none of these, and each compare is a `memcmp` call.
    let Some(first) = key.first() else {
        return Key::Other;
    };
    let found = match first {
        b'u' => key == b"usage",
        b'r' => return classify_r(key),
        b'c' => key == b"content",
        b't' => key == b"text" || key == b"thinking",
        b'a' => key == b"arguments",
        b'p' => key == b"partial_json",
        b'd' => key == b"delta",
        _ => false,
    };
    match (found, first) {
        (false, _) => Key::Other,
        (true, b'u') => Key::Usage,
        (true, _) => Key::Text,
    }
}

fn classify_r(key: &[u8]) -> Key {
    match key {
        b"response" => Key::Response,
        b"refusal" => Key::Text,
        _ => Key::Other,
    }
}

/// Where the scan is inside a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Str {
    /// Not in a string.
    Out,
    /// In a key (its bytes go to `key`).
    Key,
    /// In a value: `true` when its characters are counted as text.
    Value(bool),
}

/// What an answer's frames are read with: the newest frame, held, and the scan of the ones
/// before it, made only when a second frame comes (or the quick reading is not sure).
#[derive(Debug, Default)]
pub struct JsonUsage {
    /// The newest frame, not scanned yet.
    last: Option<Bytes>,
    /// The body ended with `last`: its end is the answer's.
    ended: bool,
    /// Boxed: most answers never need it, and the meter moves with the body.
    scan: Option<Box<Scan>>,
}

/// The scan's state between frames.
#[derive(Debug)]
struct Scan {
    depth: u32,
    /// Bit `d` is set when the container at depth `d + 1` is an object.
    objects: u128,
    /// The next string in the current object is a key.
    expect_key: bool,
    string: Str,
    /// After a backslash in a string; `hex` counts the digits of a `\u` still to come.
    escape: bool,
    hex: u8,
    key: [u8; KEY_BYTES],
    key_len: usize,
    /// The last key read applies to the value that follows it.
    pending: Key,
    /// The depth of the top-level `response` object's members while inside it, else 0.
    response_depth: u32,
    /// The usage object being read: its bytes so far, whether it is `response.usage`, and the
    /// depth its members are at.
    capture: Option<(Vec<u8>, bool, u32)>,
    /// What the top-level `usage` and `response.usage` objects reported, read as each closed.
    top: Option<Reported>,
    wrapped: Option<Reported>,
    chars: u64,
}

impl Default for Scan {
    fn default() -> Scan {
        Scan {
            depth: 0,
            objects: 0,
            expect_key: false,
            string: Str::Out,
            escape: false,
            hex: 0,
            key: [0; KEY_BYTES],
            key_len: 0,
            pending: Key::Other,
            response_depth: 0,
            capture: None,
            top: None,
            wrapped: None,
            chars: 0,
        }
    }
}

impl Scan {
    fn in_object(&self) -> bool {
        self.depth >= 1
            && self.depth <= TRACKED_DEPTH
            && self.objects & (1 << (self.depth - 1)) != 0
    }

    fn open(&mut self, object: bool) {
        self.depth = self.depth.saturating_add(1);
        if self.depth <= TRACKED_DEPTH {
            let bit = 1u128 << (self.depth - 1);
            if object {
                self.objects |= bit;
            } else {
                self.objects &= !bit;
            }
        }
        self.expect_key = object && self.depth <= TRACKED_DEPTH;
    }

    fn scan(&mut self, data: &[u8]) {
        // Where the usage object being captured starts in this frame.
        let mut captured_from = 0;
        let mut i = 0;
        if self.string != Str::Out {
            i = self.rest_of_string(data, 0);
        }
        while i < data.len() {
            let byte = data[i];
            // Digits, letters of literals and whitespace change nothing: most bytes outside
            // strings, passed with one table load.
            if !STRUCTURAL[usize::from(byte)] {
                i += 1;
                continue;
            }
            match byte {
                b'"' => {
                    i = self.string_at(data, i + 1);
                    continue;
                }
                b'{' => {
                    let members = self.depth + 1;
                    if self.capture.is_none() && self.pending == Key::Usage {
                        if self.depth == 1 {
                            self.capture = Some((Vec::new(), false, members));
                        } else if self.response_depth != 0 && self.depth == self.response_depth {
                            self.capture = Some((Vec::new(), true, members));
                        }
                        captured_from = i;
                    } else if self.pending == Key::Response && self.depth == 1 {
                        self.response_depth = members;
                    }
                    self.pending = Key::Other;
                    self.open(true);
                }
                b'[' => {
                    self.pending = Key::Other;
                    self.open(false);
                }
                b'}' | b']' => {
                    if self.capture.as_ref().is_some_and(|c| c.2 == self.depth) {
                        if let Some((mut bytes, wrapped, _)) = self.capture.take() {
                            // Whole in this frame (the usual case), it is read where it is.
                            let text = if bytes.is_empty() {
                                &data[captured_from..=i]
                            } else {
                                bytes.extend_from_slice(&data[captured_from..=i]);
                                &bytes[..]
                            };
                            if text.len() <= MAX_USAGE {
                                *if wrapped {
                                    &mut self.wrapped
                                } else {
                                    &mut self.top
                                } = super::reported_from_slice(text);
                            }
                        }
                    }
                    if self.depth == self.response_depth {
                        self.response_depth = 0;
                    }
                    self.depth = self.depth.saturating_sub(1);
                    self.pending = Key::Other;
                    self.expect_key = false;
                }
                b',' => {
                    self.pending = Key::Other;
                    self.expect_key = self.in_object();
                }
                b':' => self.expect_key = false,
                _ => {}
            }
            i += 1;
        }
        if let Some((bytes, _, _)) = &mut self.capture {
            if bytes.len() + (data.len() - captured_from) > MAX_USAGE {
                // Too long for a usage object: not one the guard reads.
                self.capture = None;
            } else {
                bytes.extend_from_slice(&data[captured_from..]);
            }
        }
    }

    /// A string opens at `at` (after its quote); returns where the scan goes on. A key or an
    /// uncounted value whose closing quote is in this frame with no escape before it (nearly
    /// every string of an answer) is passed here; anything else goes through `in_string`.
    fn string_at(&mut self, data: &[u8], at: usize) -> usize {
        let rest = &data[at..];
        let counted = !self.expect_key && self.pending == Key::Text;
        if !counted {
            let short = rest.len().min(32);
            let stop = match rest[..short].iter().position(|b| matches!(b, b'"' | b'\\')) {
                Some(n) => Some(n),
                None if short < rest.len() => {
                    memchr::memchr2(b'"', b'\\', &rest[short..]).map(|n| n + short)
                }
                None => None,
            };
            if let Some(n) = stop.filter(|&n| rest[n] == b'"') {
                if self.expect_key {
                    self.pending = if n <= KEY_BYTES {
                        classify(&rest[..n])
                    } else {
                        Key::Other
                    };
                    self.expect_key = false;
                } else {
                    self.pending = Key::Other;
                }
                return at + n + 1;
            }
        }
        if self.expect_key {
            self.string = Str::Key;
            self.key_len = 0;
        } else {
            self.string = Str::Value(counted);
            self.pending = Key::Other;
        }
        self.rest_of_string(data, at)
    }

    /// `in_string` until the string ends or the frame does (it stops after each escape).
    fn rest_of_string(&mut self, data: &[u8], at: usize) -> usize {
        let mut i = at;
        loop {
            i = self.in_string(data, i);
            if self.string == Str::Out || i >= data.len() {
                return i;
            }
        }
    }

    /// Reads string bytes from `at`; returns where the scan goes on.
    fn in_string(&mut self, data: &[u8], at: usize) -> usize {
        let counted = self.string == Str::Value(true);
        let mut i = at;
        while i < data.len() && (self.escape || self.hex > 0) {
            if self.hex > 0 {
                self.hex -= 1;
            } else {
                self.escape = false;
                if data[i] == b'u' {
                    self.hex = 4;
                }
                // An escape is one character, whatever its length.
                self.chars += u64::from(counted);
                if self.string == Str::Key {
                    self.key_len = KEY_BYTES + 1;
                }
            }
            i += 1;
        }
        let rest = &data[i..];
        // Most strings of an answer are short (names, ids, roles): a plain loop finds their end
        // sooner than setting up `memchr2`, which takes over for long text.
        let short = rest.len().min(32);
        let stop_at = match rest[..short].iter().position(|b| matches!(b, b'"' | b'\\')) {
            Some(n) => Some(n),
            None if short < rest.len() => {
                memchr::memchr2(b'"', b'\\', &rest[short..]).map(|n| n + short)
            }
            None => None,
        };
        let (run, stop) = match stop_at {
            Some(n) => (&rest[..n], Some(rest[n])),
            None => (rest, None),
        };
        match self.string {
            // Continuation bytes of UTF-8 are not characters of their own.
            Str::Value(true) => {
                self.chars += run.iter().filter(|b| **b & 0xC0 != 0x80).count() as u64
            }
            // A key whole in this frame (the usual case) is read where it is, below; only one
            // that a frame boundary or an escape splits is gathered in `key`.
            Str::Key if !(self.key_len == 0 && stop == Some(b'"')) => {
                let end = self.key_len + run.len();
                if end <= KEY_BYTES {
                    self.key[self.key_len..end].copy_from_slice(run);
                }
                self.key_len = end;
            }
            _ => {}
        }
        i += run.len();
        match stop {
            Some(b'\\') => self.escape = true,
            Some(_) => {
                if self.string == Str::Key {
                    self.pending = if self.key_len == 0 {
                        // Whole in `run` (an empty key too); a gathered one never has length 0
                        // here, as an escape makes it too long.
                        if run.len() <= KEY_BYTES {
                            classify(run)
                        } else {
                            Key::Other
                        }
                    } else if self.key_len <= KEY_BYTES {
                        classify(&self.key[..self.key_len])
                    } else {
                        Key::Other
                    };
                    self.expect_key = false;
                }
                self.string = Str::Out;
            }
            None => return i,
        }
        i + 1
    }

    /// What the answer reported, and the characters of its text.
    fn finish(&self) -> (Reported, u64) {
        let reported = self.top.or(self.wrapped).unwrap_or_default();
        (reported, self.chars)
    }
}

impl JsonUsage {
    pub fn feed(&mut self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(previous) = self.last.replace(data.clone()) {
            self.scan().scan(&previous);
        }
    }

    /// The body ended: the frame held last is the end of the answer.
    pub fn end(&mut self) {
        self.ended = true;
    }

    fn scan(&mut self) -> &mut Scan {
        self.scan.get_or_insert_with(Box::default)
    }

    /// What the answer reported, and the characters of its text (for an estimate): counted only
    /// when the answer reports no output count, the one case they are needed.
    pub fn finish(&mut self) -> (Reported, u64) {
        if let Some(last) = self.last.take() {
            if let Some(reported) = self
                .ended
                .then(|| super::json_tail::top_usage(&last))
                .flatten()
            {
                return (reported, 0);
            }
            self.scan().scan(&last);
        }
        self.scan
            .as_ref()
            .map_or_else(Default::default, |scan| scan.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fed(body: &[u8], chunk: usize) -> (Reported, u64) {
        let mut json = JsonUsage::default();
        for piece in body.chunks(chunk.max(1)) {
            json.feed(&Bytes::copy_from_slice(piece));
        }
        json.finish()
    }

    type Counts = (Option<u64>, Option<u64>);

    #[test]
    fn every_shape_in_any_chunking() {
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
            (
                r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":2,"output_tokens":1}}}"#,
                (Some(2), Some(1)),
            ),
            (
                r#"{ "usage" : { "prompt_tokens" : 1 , "completion_tokens" : 2 } , "id" : "x" }"#,
                (Some(1), Some(2)),
            ),
            (r#"{"choices":[]}"#, (None, None)),
            (r#"not json"#, (None, None)),
            (r#"["usage",{"usage":{"prompt_tokens":1}}]"#, (None, None)),
        ];
        for (body, want) in cases {
            for chunk in [1, 2, 3, 7, 1000] {
                let (got, _) = fed(body.as_bytes(), chunk);
                assert_eq!((got.input, got.output), *want, "{body} by {chunk}");
            }
        }
    }

    #[test]
    fn only_the_answers_own_usage_counts() {
        let cases: &[(&str, Counts)] = &[
            // In the text (escaped there) and nested in the content, before and after the real one.
            (
                r#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":999}","tool_calls":[{"usage":{"prompt_tokens":998}}]}}],"usage":{"prompt_tokens":5,"completion_tokens":6},"extra":{"usage":{"prompt_tokens":997}}}"#,
                (Some(5), Some(6)),
            ),
            // A top-level usage wins over a wrapped one.
            (
                r#"{"response":{"usage":{"input_tokens":9,"output_tokens":9}},"usage":{"input_tokens":1,"output_tokens":2}}"#,
                (Some(1), Some(2)),
            ),
            // A usage that is not an object is none.
            (r#"{"usage":"decoy","data":[]}"#, (None, None)),
        ];
        for (body, want) in cases {
            for chunk in [1, 5, 1000] {
                let (got, _) = fed(body.as_bytes(), chunk);
                assert_eq!((got.input, got.output), *want, "{body} by {chunk}");
            }
        }
    }

    /// `body` in `pieces` with the end of the body marked, as `record::Tracked` feeds it.
    fn ended(pieces: &[&[u8]]) -> (Reported, u64) {
        let mut json = JsonUsage::default();
        for piece in pieces {
            json.feed(&Bytes::copy_from_slice(piece));
        }
        json.end();
        json.finish()
    }

    #[test]
    fn the_reading_at_the_end_agrees_with_the_scan_in_every_split() {
        let bodies: &[&str] = &[
            r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}},"service_tier":"default","system_fingerprint":"fp_x"}"#,
            // "usage" in the text, escaped, before and after; nested at depth 2; in an array.
            r#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":999,\"completion_tokens\":1}}"}}],"usage":{"prompt_tokens":5,"completion_tokens":6},"extra":{"usage":{"prompt_tokens":997,"completion_tokens":1}}}"#,
            r#"{"a":{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
            r#"{"usage":{"prompt_tokens":2,"completion_tokens":2},"a":{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
            r#"{"data":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}],"usage":{"prompt_tokens":1,"total_tokens":1}}"#,
            r#"{"data":[{"usage":{"prompt_tokens":9,"completion_tokens":9}}]}"#,
            r#"[{"usage":{"prompt_tokens":9,"completion_tokens":9}}]"#,
            r#"{"content":"x\\","usage":{"prompt_tokens":1,"completion_tokens":7},"t":"\\\"usage\":{}}"}"#,
            r#"{"a":1,"\"usage":{"prompt_tokens":9,"completion_tokens":9}}"#,
            r#"{"x":"usage","y":{"prompt_tokens":9,"completion_tokens":9}}"#,
            // Wrapped, and a top-level one that wins over the wrapped one.
            r#"{"type":"response.completed","response":{"id":"r","usage":{"input_tokens":2,"output_tokens":1}}}"#,
            r#"{"response":{"usage":{"input_tokens":9,"output_tokens":9}},"usage":{"input_tokens":1,"output_tokens":2}}"#,
            // A later top-level usage that is not read plainly, or is empty, or not an object.
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{}}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":null}"#,
            r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":1.5,"completion_tokens":1}}"#,
            r#"{"usage":{"input_tokens":10,"cache_creation":{"e":0},"output_tokens":5,"service_tier":"standard"}}"#,
            "{ \"usage\" :\n { \"input_tokens\" : 7 , \"output_tokens\" : 8 } \r\n}\n",
            // An SSE stream served as JSON: every event is a top-level object to the scan.
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
            "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
            r#"{"usage":{"prompt_tokens":9,"completion_tokens":9}}}"#,
            r#"{"choices":[{"message":{"content":"no usage"}}]}"#,
            "not json",
        ];
        for body in bodies {
            let bytes = body.as_bytes();
            let (want, want_chars) = fed(bytes, bytes.len());
            let check = |(got, chars): (Reported, u64), how: &str| {
                assert_eq!(got, want, "{body} {how}");
                if want.output.is_none() {
                    assert_eq!(chars, want_chars, "{body} {how}");
                }
            };
            for split in 0..=bytes.len() {
                check(
                    ended(&[&bytes[..split], &bytes[split..]]),
                    &format!("split at {split}"),
                );
            }
            for chunk in [1, 3, 7] {
                let pieces: Vec<&[u8]> = bytes.chunks(chunk).collect();
                check(ended(&pieces), &format!("by {chunk}"));
            }
        }
        // The usual answers take the quick way.
        for body in &bodies[..3] {
            assert!(super::super::json_tail::top_usage(body.as_bytes()).is_some());
        }
    }

    #[test]
    fn text_characters_for_an_estimate() {
        let body = "{\"choices\":[{\"message\":{\"role\":\"assistant\",\"content\":\"h\u{e9}llo \\\"x\\\" \\u00e9\"}}],\"id\":\"abc\"}";
        for chunk in [1, 2, 3, 1000] {
            let (reported, chars) = fed(body.as_bytes(), chunk);
            assert_eq!(reported, Reported::default());
            // h é l l o ␠ " x " ␠ é
            assert_eq!(chars, 11, "by {chunk}");
        }
    }

    #[test]
    fn a_long_answer_is_never_copied_and_still_finds_usage() {
        let vector = "0.123456,".repeat(20_000);
        let body = format!(
            r#"{{"data":[{{"embedding":[{vector}0.1],"usage":"decoy"}}],"usage":{{"prompt_tokens":77,"total_tokens":77}}}}"#
        );
        let mut json = JsonUsage::default();
        for piece in body.as_bytes().chunks(4096) {
            json.feed(&Bytes::copy_from_slice(piece));
            assert!(json
                .scan
                .as_ref()
                .and_then(|scan| scan.capture.as_ref())
                .is_none_or(|c| c.0.len() <= MAX_USAGE));
        }
        let (reported, _) = json.finish();
        assert_eq!((reported.input, reported.output), (Some(77), Some(0)));
        // A "usage" too long to be one is dropped, not kept growing.
        let huge = format!(
            r#"{{"usage":{{"x":"{}","prompt_tokens":1}}}}"#,
            "a".repeat(10_000)
        );
        let mut json = JsonUsage::default();
        for piece in huge.as_bytes().chunks(1000) {
            json.feed(&Bytes::copy_from_slice(piece));
            assert!(json
                .scan
                .as_ref()
                .and_then(|scan| scan.capture.as_ref())
                .is_none_or(|c| c.0.len() <= MAX_USAGE));
        }
        assert_eq!(json.finish().0, Reported::default());
    }
}
