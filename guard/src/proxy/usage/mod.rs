//! Token usage, read from the upstream's answers as they pass (issue 14), never by holding them
//! back: a JSON answer's `usage` object (`json_usage`), a streamed answer's usage chunk or
//! Anthropic's `message_start`/`message_delta` (`sse`), and, when no usage arrives (an aborted
//! stream, an upstream that reports none), an estimate from characters (`estimate`), marked so.
//!
//! `Meter` is what the response body wrapper (`record::Tracked`) feeds every frame to.

pub mod estimate;
pub mod json_tail;
pub mod json_usage;
pub mod sse;

use bytes::Bytes;
use serde_json::Value;

/// Tokens of one request, as the upstream reported them or as estimated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    /// No usage arrived (or only part of it): some figure is an estimate from characters.
    pub estimated: bool,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// What one answer reported: either count may be missing (Anthropic's stream sends input and
/// output in different events).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    pub input: Option<u64>,
    pub output: Option<u64>,
}

impl Reported {
    /// Later figures win: Anthropic's `message_delta` output count is cumulative.
    pub fn merge(&mut self, other: Reported) {
        self.input = other.input.or(self.input);
        self.output = other.output.or(self.output);
    }
}

/// The counts of a `usage` object: OpenAI's `prompt_tokens`/`completion_tokens` (chat,
/// completions, embeddings) or `input_tokens`/`output_tokens` (Responses, Anthropic). Anthropic's
/// cache reads and writes are input tokens too (they are billed, and they fill the context).
pub fn reported(usage: &Value) -> Option<Reported> {
    let object = usage.as_object()?;
    let get = |name: &str| object.get(name).and_then(Value::as_u64);
    Counts {
        prompt_tokens: Count(get("prompt_tokens")),
        completion_tokens: Count(get("completion_tokens")),
        input_tokens: Count(get("input_tokens")),
        output_tokens: Count(get("output_tokens")),
        total_tokens: Count(get("total_tokens")),
        cache_creation_input_tokens: Count(get("cache_creation_input_tokens")),
        cache_read_input_tokens: Count(get("cache_read_input_tokens")),
    }
    .reported()
}

/// [`reported`] of a `usage` object's JSON text, parsed without building it: only the counts
/// are read, every other member skipped. Text that does not parse that way (a duplicate member)
/// takes the general path.
pub fn reported_from_slice(usage: &[u8]) -> Option<Reported> {
    if let Some(counts) = plain_counts(usage) {
        return counts.reported();
    }
    match serde_json::from_slice::<Counts>(usage) {
        Ok(counts) => counts.reported(),
        Err(_) => serde_json::from_slice::<Value>(usage)
            .ok()
            .and_then(|usage| reported(&usage)),
    }
}

/// The usual `usage` object read by hand, for a fraction of serde's cost: members whose keys
/// have no escapes and whose values are unsigned integers, objects of them (the token details),
/// strings without escapes (Anthropic's `service_tier`) or `null`. Anything else (other values, a
/// duplicate count, text that is not JSON) is `None`, and serde reads it.
fn plain_counts(text: &[u8]) -> Option<Counts> {
    let mut scan = Plain { text, at: 0 };
    scan.ws();
    let counts = scan.object()?;
    scan.ws();
    (scan.at == text.len()).then_some(counts)
}

struct Plain<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Plain<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A usage object from `at` (its `{`) to just after its `}`, read into its counts.
    fn object(&mut self) -> Option<Counts> {
        let mut counts = Counts::default();
        let mut seen = 0u8;
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(counts);
        }
        loop {
            let key = self.key()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            // An object, a string or null in a count's place counts as none, as serde reads it.
            let value = match self.peek()? {
                b'{' => {
                    self.details()?;
                    None
                }
                b'"' => {
                    self.key()?;
                    None
                }
                b'n' => {
                    self.literal(b"null")?;
                    None
                }
                _ => Some(self.int()?),
            };
            if let Some((slot, at)) = counts.slot(key) {
                if seen & (1 << at) != 0 {
                    return None;
                }
                seen |= 1 << at;
                slot.0 = value;
            }
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(counts),
                _ => return None,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let rest = self.text.get(self.at..)?;
        rest.starts_with(word).then(|| self.at += word.len())
    }

    /// A string without escapes or control characters (a key, or a value that is not a count).
    fn key(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        let text = self.text;
        let rest = &text[start..];
        let mut len = plain_ascii_len(rest);
        if rest.get(len).is_some_and(|b| *b >= 0x80) {
            // Not ASCII: checked as serde checks a string (text that is not UTF-8 is not JSON).
            len += rest[len..]
                .iter()
                .position(|b| matches!(b, b'"' | b'\\' | 0x00..=0x1f))?;
            std::str::from_utf8(&rest[..len]).ok()?;
        }
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        Some(&rest[..len])
    }

    /// An unsigned integer as JSON writes one (no sign, fraction, exponent or leading zero)
    /// that fits in a `u64`.
    fn int(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n = 0u64;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.text[start] == b'0') {
            return None;
        }
        // `1.5`, `1e3`: not an integer; serde decides what they are.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(n)
    }

    /// An object of plain integer members (`prompt_tokens_details`), skipped.
    fn details(&mut self) -> Option<()> {
        self.eat(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Some(());
        }
        loop {
            self.key()?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            self.int()?;
            self.ws();
            match self.next()? {
                b',' => self.ws(),
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }
}

/// How many bytes from the start of `bytes` are printable ASCII other than `"` and `\\`: where
/// a plain string's body ends. Eight bytes a step (keys are a dozen bytes), with the usual
/// word tricks; each mask's lowest set bit is exact, which is the one read.
fn plain_ascii_len(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let zero = |word: u64| word.wrapping_sub(ONES) & !word;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        let quote = zero(word ^ (ONES * u64::from(b'"')));
        let backslash = zero(word ^ (ONES * u64::from(b'\\')));
        // Below 0x20 (a control character), or 0x80 and above (not ASCII).
        let control = word.wrapping_sub(ONES * 0x20) & !word;
        let stop = (quote | backslash | control | word) & HIGH;
        if stop != 0 {
            return at + (stop.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .take_while(|b| !matches!(b, b'"' | b'\\' | 0x00..=0x1f | 0x80..))
        .count()
}

/// The members of a `usage` object that count.
#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Counts {
    prompt_tokens: Count,
    completion_tokens: Count,
    input_tokens: Count,
    output_tokens: Count,
    total_tokens: Count,
    cache_creation_input_tokens: Count,
    cache_read_input_tokens: Count,
}

/// A count: a non-negative integer, as `Value::as_u64` reads one; any other value is none.
#[derive(Default, Clone, Copy)]
struct Count(Option<u64>);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Count, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E>(self, n: u64) -> Result<Count, E> {
                Ok(Count(Some(n)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_unit<E>(self) -> Result<Count, E> {
                Ok(Count(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Count(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Count, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Count(None))
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

impl Counts {
    /// The member a key names, and its index (for duplicates). By length and first byte, then
    /// one compare of a known length (done inline, not by a `memcmp` call per name).
    fn slot(&mut self, key: &[u8]) -> Option<(&mut Count, u8)> {
        Some(match (key.len(), key.first()?) {
            (13, b'p') if key == b"prompt_tokens" => (&mut self.prompt_tokens, 0),
            (17, b'c') if key == b"completion_tokens" => (&mut self.completion_tokens, 1),
            (12, b'i') if key == b"input_tokens" => (&mut self.input_tokens, 2),
            (13, b'o') if key == b"output_tokens" => (&mut self.output_tokens, 3),
            (12, b't') if key == b"total_tokens" => (&mut self.total_tokens, 4),
            (27, b'c') if key == b"cache_creation_input_tokens" => {
                (&mut self.cache_creation_input_tokens, 5)
            }
            (23, b'c') if key == b"cache_read_input_tokens" => {
                (&mut self.cache_read_input_tokens, 6)
            }
            _ => return None,
        })
    }

    fn reported(&self) -> Option<Reported> {
        let cached = self.cache_creation_input_tokens.0.unwrap_or(0)
            + self.cache_read_input_tokens.0.unwrap_or(0);
        let input = self
            .prompt_tokens
            .0
            .or(self.input_tokens.0)
            .map(|n| n + cached);
        let output = self.completion_tokens.0.or(self.output_tokens.0);
        // Embeddings report prompt tokens only: nothing came out.
        let output =
            output.or_else(|| (input.is_some() && self.total_tokens.0.is_some()).then_some(0));
        (input.is_some() || output.is_some()).then_some(Reported { input, output })
    }
}

/// How a response body is read for usage.
pub enum Meter {
    Json(json_usage::JsonUsage),
    /// Boxed: the meter moves with the response body, and a stream's is the larger.
    Sse(Box<sse::SseScanner>),
}

impl Meter {
    /// A meter for a response with this `Content-Type`; `strip` removes the usage-only chunk
    /// of a stream (the guard asked for it; the client did not).
    pub fn for_content_type(content_type: Option<&[u8]>, strip: bool) -> Meter {
        let sse = content_type.is_some_and(|value| {
            value.len() >= 17 && value[..17].eq_ignore_ascii_case(b"text/event-stream")
        });
        if sse {
            Meter::Sse(Box::new(sse::SseScanner::new(strip)))
        } else {
            Meter::Json(json_usage::JsonUsage::default())
        }
    }

    /// Observes one frame. `Some(bytes)` replaces the frame (a stream being stripped); `None`
    /// passes it on unchanged.
    pub fn observe(&mut self, data: &Bytes) -> Option<Bytes> {
        match self {
            Meter::Json(json) => {
                json.feed(data);
                None
            }
            Meter::Sse(sse) => sse.feed(data),
        }
    }

    /// The body ended: every frame of the answer was observed.
    pub fn end(&mut self) {
        if let Meter::Json(json) = self {
            json.end();
        }
    }

    /// Whether this reader never holds bytes back (a JSON answer's does not; a stripping
    /// stream's may).
    pub fn holds_nothing(&self) -> bool {
        matches!(self, Meter::Json(_))
    }

    /// Bytes a stripping scanner still holds when the body ends.
    pub fn take_held(&mut self) -> Option<Bytes> {
        match self {
            Meter::Sse(sse) => sse.end(),
            Meter::Json(_) => None,
        }
    }

    /// What the answer reported, and the characters of its text (for an estimate).
    pub fn finish(&mut self) -> (Reported, u64) {
        match self {
            Meter::Json(json) => json.finish(),
            Meter::Sse(sse) => {
                sse.end();
                (sse.reported(), sse.output_chars())
            }
        }
    }
}

/// The usage of a request whose prompt was estimated at `input_estimate` tokens: what the answer
/// reported, each missing figure estimated (from the answer's characters for output).
pub fn settle(reported: Reported, input_estimate: u64, output_chars: u64) -> Usage {
    Usage {
        input: reported.input.unwrap_or(input_estimate),
        output: reported
            .output
            .unwrap_or_else(|| estimate::tokens(output_chars)),
        estimated: reported.input.is_none() || reported.output.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_plain_reading_agrees_with_serde_or_leaves_it_to_serde() {
        let texts: &[&[u8]] = &[
            br#"{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}"#,
            br#" { "prompt_tokens" : 10 ,
                "completion_tokens":20,"total_tokens":30,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{}} "#,
            br#"{"input_tokens":5,"output_tokens":7,"cache_read_input_tokens":3,"cache_creation_input_tokens":2}"#,
            br#"{"prompt_tokens":8,"total_tokens":8}"#,
            br#"{}"#,
            br#"{"prompt_tokens":{"a":1},"completion_tokens":0}"#,
            br#"{"other":1,"other":2,"prompt_tokens":3}"#,
            br#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            br#"{"prompt_tokens":-1,"completion_tokens":2}"#,
            br#"{"prompt_tokens":1.0,"completion_tokens":2}"#,
            br#"{"prompt_tokens":1e2,"completion_tokens":2}"#,
            br#"{"prompt_tokens":01,"completion_tokens":2}"#,
            br#"{"prompt_tokens":18446744073709551616,"completion_tokens":2}"#,
            br#"{"prompt_tokens":18446744073709551615,"completion_tokens":2}"#,
            br#"{"prompt_tokens":"3","completion_tokens":2}"#,
            br#"{"prompt\u005ftokens":3}"#,
            br#"{"prompt_tokens":3,}"#,
            br#"{"prompt_tokens":3} x"#,
            br#"{"prompt_tokens":3"#,
            b"{\"\xff\":1,\"prompt_tokens\":3}",
            br#"{"prompt_tokens":3,"completion_tokens":null,"total_tokens":true}"#,
            br#"[1]"#,
        ];
        let mut plain = 0;
        for text in texts {
            let serde = serde_json::from_slice::<Counts>(text)
                .ok()
                .map(|counts| counts.reported());
            if let Some(counts) = plain_counts(text) {
                plain += 1;
                assert_eq!(
                    Some(counts.reported()),
                    serde,
                    "{}",
                    String::from_utf8_lossy(text)
                );
            }
            // Through both paths, whatever reads it.
            let general = match serde_json::from_slice::<Counts>(text) {
                Ok(counts) => counts.reported(),
                Err(_) => serde_json::from_slice::<Value>(text)
                    .ok()
                    .and_then(|usage| reported(&usage)),
            };
            assert_eq!(reported_from_slice(text), general);
        }
        // The usual shapes take the plain path.
        assert!(plain >= 7, "{plain}");
        assert!(plain_counts(texts[0]).is_some() && plain_counts(texts[1]).is_some());
    }

    #[test]
    fn a_plain_strings_end_is_found_at_every_offset() {
        for stop in [b'"', b'\\', 0x00, 0x1f, 0x80, 0xff] {
            for len in 0..20 {
                let mut bytes = vec![b'a'; len];
                bytes.push(stop);
                bytes.extend_from_slice(b"\"\\\x01\xc3");
                assert_eq!(plain_ascii_len(&bytes), len, "{stop} at {len}");
                // The bytes before it are all allowed ones, of every kind.
                let mut mixed: Vec<u8> = (0..len).map(|i| 0x20 + (i as u8 * 7) % 0x5f).collect();
                mixed.retain(|b| !matches!(b, b'"' | b'\\'));
                let n = mixed.len();
                mixed.push(stop);
                assert_eq!(plain_ascii_len(&mixed), n);
            }
        }
        assert_eq!(plain_ascii_len(b"abcdefghijklmnop"), 16);
        assert_eq!(plain_ascii_len(b""), 0);
    }

    #[test]
    fn usage_objects_of_every_shape() {
        let cases = [
            (
                json!({"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}),
                Some((Some(10), Some(20))),
            ),
            (
                json!({"prompt_tokens": 7, "total_tokens": 7}),
                Some((Some(7), Some(0))),
            ),
            (
                json!({"input_tokens": 5, "output_tokens": 9, "total_tokens": 14}),
                Some((Some(5), Some(9))),
            ),
            (
                json!({"input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 1, "output_tokens": 2}),
                Some((Some(106), Some(2))),
            ),
            (json!({"output_tokens": 3}), Some((None, Some(3)))),
            (json!({}), None),
            (json!(null), None),
            (json!({"prompt_tokens": "10"}), None),
        ];
        for (usage, want) in cases {
            let got = reported(&usage).map(|r| (r.input, r.output));
            assert_eq!(got, want, "{usage}");
            let text = serde_json::to_vec(&usage).unwrap();
            let got = reported_from_slice(&text).map(|r| (r.input, r.output));
            assert_eq!(got, want, "from text: {usage}");
        }
        // Members that are not counts, and a duplicate (the later one wins, as in a `Value`).
        let odd = br#"{"prompt_tokens":-1,"completion_tokens":2.5,"input_tokens":{"a":[1]},"output_tokens":[3],"total_tokens":null,"x":{"prompt_tokens":9}}"#;
        assert_eq!(reported_from_slice(odd), None);
        let twice = br#"{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens":3}"#;
        assert_eq!(
            reported_from_slice(twice).map(|r| (r.input, r.output)),
            Some((Some(3), Some(2)))
        );
    }

    #[test]
    fn missing_figures_are_estimated_and_marked() {
        let full = settle(
            Reported {
                input: Some(3),
                output: Some(4),
            },
            100,
            400,
        );
        assert_eq!(
            full,
            Usage {
                input: 3,
                output: 4,
                estimated: false
            }
        );
        let none = settle(Reported::default(), 100, 400);
        assert_eq!(
            none,
            Usage {
                input: 100,
                output: 100,
                estimated: true
            }
        );
    }
}
