//! The attack corpus's file format (`tests/corpus/attacks.txt`): entries of raw request bytes
//! with their expected outcome, parsed here and rendered into what a client writes.
//!
//! An entry is a `== name` line, then `category:`, `expect:`, optional `why:`, and `raw:` fields;
//! a line that starts with whitespace continues the field before it (the whitespace dropped), so
//! a request can be written one header per line. `#` starts a comment line. In `raw`:
//! - `\r \n \t \0 \\ \{ \} \s` (space) and `\xHH` are escapes; nothing else is special;
//! - `{` followed by a capital letter opens a placeholder (any other `{`, as in JSON, is literal):
//! - `{NAME}` is a variable (the keys, `{HOST}`; see [`Vars`]);
//! - `{REPEAT n TEXT}` is TEXT (escapes allowed) n times;
//! - `{CL}` is the length of the body that follows the next `\r\n\r\n`, up to `{NEXT}` or the end;
//! - `{PAUSE ms}` waits before writing on; `{DRIP ms}` writes the rest one byte every ms.
//!
//! An expectation is `closed` (no response at all) or responses in order, `status NNN` each, with
//! `bare` when the body must be empty (hyper's own answers), `code=C` for the error body's code,
//! and `xN` to repeat; `or` separates alternatives. A response without `bare` must carry OpenAI's
//! error shape.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{anyhow, bail, Context, Result};

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub category: String,
    pub expect: Vec<Vec<Step>>,
    /// The `expect:` text as written, for reports.
    pub expect_text: String,
    pub raw: String,
    pub line: usize,
}

/// One expected response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub status: u16,
    pub bare: bool,
    /// The error body's `code` (proxyguard's reason), when the entry names it.
    pub code: Option<String>,
}

/// What the client writes, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Bytes(Vec<u8>),
    Pause(Duration),
    /// The bytes after this go one at a time, this far apart.
    Drip(Duration),
}

/// Variable values by name (`GOOD_KEY`, `HOST`, ...).
pub type Vars = BTreeMap<&'static str, String>;

/// An entry as read: its line, its name, and its fields in order.
type Draft = (usize, String, Vec<(String, String)>);

pub fn parse(text: &str) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut current: Option<Draft> = None;
    let finish = |current: Option<Draft>, entries: &mut Vec<Entry>| -> Result<()> {
        if let Some((line, name, fields)) = current {
            entries.push(entry(line, name, fields).with_context(|| format!("line {line}"))?);
        }
        Ok(())
    };
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim_start().starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("== ") {
            finish(current.take(), &mut entries)?;
            current = Some((number, name.trim().to_owned(), Vec::new()));
            continue;
        }
        let Some((_, _, fields)) = current.as_mut() else {
            bail!("line {number}: text before the first `== name`");
        };
        if line.starts_with([' ', '\t']) {
            let (key, value) = fields
                .last_mut()
                .ok_or_else(|| anyhow!("line {number}: a continuation with no field"))?;
            // Raw bytes join as written (escapes carry the line ends); prose joins with a space.
            if key != "raw" {
                value.push(' ');
            }
            value.push_str(line.trim_start());
        } else {
            let (key, value) = line
                .split_once(':')
                .ok_or_else(|| anyhow!("line {number}: expected `field: value`"))?;
            fields.push((key.trim().to_owned(), value.trim().to_owned()));
        }
    }
    finish(current, &mut entries)?;
    Ok(entries)
}

fn entry(line: usize, name: String, fields: Vec<(String, String)>) -> Result<Entry> {
    let mut map = BTreeMap::new();
    for (key, value) in fields {
        if !["category", "expect", "why", "raw"].contains(&key.as_str()) {
            bail!("{name}: unknown field `{key}`");
        }
        if map.insert(key.clone(), value).is_some() {
            bail!("{name}: `{key}` given twice");
        }
    }
    let field = |key: &str| {
        map.get(key)
            .cloned()
            .ok_or_else(|| anyhow!("{name}: no `{key}`"))
    };
    let expect_text = field("expect")?;
    Ok(Entry {
        category: field("category")?,
        expect: parse_expect(&expect_text).with_context(|| name.clone())?,
        expect_text,
        raw: field("raw")?,
        name,
        line,
    })
}

pub fn parse_expect(text: &str) -> Result<Vec<Vec<Step>>> {
    text.split(" or ")
        .map(|alternative| {
            let alternative = alternative.trim();
            if alternative == "closed" {
                return Ok(Vec::new());
            }
            let mut steps = Vec::new();
            for step in alternative.split(',') {
                let words: Vec<&str> = step.split_whitespace().collect();
                let (status, rest) = match words.as_slice() {
                    ["status", code, rest @ ..] => (code.parse::<u16>()?, rest),
                    _ => bail!("`{step}`: expected `status NNN [bare] [code=C] [xN]` or `closed`"),
                };
                let mut step = Step {
                    status,
                    bare: false,
                    code: None,
                };
                let mut times = 1;
                for word in rest {
                    if *word == "bare" {
                        step.bare = true;
                    } else if let Some(code) = word.strip_prefix("code=") {
                        step.code = Some(code.to_owned());
                    } else if let Some(n) = word.strip_prefix('x') {
                        times = n.parse()?;
                    } else {
                        bail!("`{alternative}`: unknown word `{word}`");
                    }
                }
                if step.bare && step.code.is_some() {
                    bail!("`{alternative}`: a bare response has no code");
                }
                steps.extend(std::iter::repeat_n(step, times));
            }
            Ok(steps)
        })
        .collect()
}

/// Writes steps the way expectations are written (`status 401 x2` folded out).
pub fn describe(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "closed".into();
    }
    let words: Vec<String> = steps
        .iter()
        .map(|s| {
            let mut word = format!("status {}", s.status);
            if s.bare {
                word.push_str(" bare");
            }
            if let Some(code) = &s.code {
                word.push_str(&format!(" code={code}"));
            }
            word
        })
        .collect();
    words.join(", ")
}

enum Piece {
    Bytes(Vec<u8>),
    Cl,
    Next,
    Pause(Duration),
    Drip(Duration),
}

/// The entry's bytes with variables filled in, split where the client pauses.
pub fn render(raw: &str, vars: &Vars) -> Result<Vec<Segment>> {
    let pieces = pieces(raw, vars)?;
    let mut out: Vec<Segment> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let bytes = match piece {
            Piece::Bytes(bytes) => bytes.clone(),
            Piece::Cl => body_after(&pieces[i + 1..])?.to_string().into_bytes(),
            Piece::Next => continue,
            Piece::Pause(d) => {
                out.push(Segment::Pause(*d));
                continue;
            }
            Piece::Drip(d) => {
                out.push(Segment::Drip(*d));
                continue;
            }
        };
        match out.last_mut() {
            Some(Segment::Bytes(last)) => last.extend(bytes),
            _ => out.push(Segment::Bytes(bytes)),
        }
    }
    Ok(out)
}

/// The length of the body after the next blank line, up to `{NEXT}` or the end.
fn body_after(pieces: &[Piece]) -> Result<usize> {
    let mut bytes = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Bytes(b) => bytes.extend_from_slice(b),
            Piece::Next => break,
            Piece::Cl => bail!("a second {{CL}} before {{NEXT}}"),
            Piece::Pause(_) | Piece::Drip(_) => {}
        }
    }
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{{CL}} with no blank line after it"))?;
    Ok(bytes.len() - head_end - 4)
}

fn pieces(raw: &str, vars: &Vars) -> Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut bytes = Vec::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => bytes.extend(escape(&mut chars)?),
            '{' if chars.peek().is_some_and(char::is_ascii_uppercase) => {
                let mut inner = String::new();
                let mut depth_escape = false;
                for c in chars.by_ref() {
                    if c == '}' && !depth_escape {
                        break;
                    }
                    depth_escape = c == '\\' && !depth_escape;
                    inner.push(c);
                }
                let piece = placeholder(&inner, vars)?;
                match piece {
                    Piece::Bytes(b) => bytes.extend(b),
                    other => {
                        pieces.push(Piece::Bytes(std::mem::take(&mut bytes)));
                        pieces.push(other);
                    }
                }
            }
            c => bytes.extend(c.to_string().as_bytes()),
        }
    }
    pieces.push(Piece::Bytes(bytes));
    Ok(pieces)
}

fn escape(chars: &mut impl Iterator<Item = char>) -> Result<Vec<u8>> {
    Ok(match chars.next() {
        Some('r') => vec![b'\r'],
        Some('n') => vec![b'\n'],
        Some('t') => vec![b'\t'],
        Some('0') => vec![0],
        Some('s') => vec![b' '],
        Some(c @ ('\\' | '{' | '}')) => vec![c as u8],
        Some('x') => {
            let hex: String = chars.take(2).collect();
            vec![u8::from_str_radix(&hex, 16).with_context(|| format!("bad \\x{hex}"))?]
        }
        other => bail!("unknown escape \\{}", other.unwrap_or(' ')),
    })
}

fn placeholder(inner: &str, vars: &Vars) -> Result<Piece> {
    let (word, arg) = inner.split_once(' ').unwrap_or((inner, ""));
    let millis = || -> Result<Duration> { Ok(Duration::from_millis(arg.trim().parse()?)) };
    Ok(match word {
        "CL" => Piece::Cl,
        "NEXT" => Piece::Next,
        "PAUSE" => Piece::Pause(millis()?),
        "DRIP" => Piece::Drip(millis()?),
        "REPEAT" => {
            let (count, text) = arg
                .split_once(' ')
                .ok_or_else(|| anyhow!("{{REPEAT n TEXT}}"))?;
            let mut unit = Vec::new();
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => unit.extend(escape(&mut chars)?),
                    '{' if chars.peek().is_some_and(char::is_ascii_uppercase) => {
                        bail!("placeholders do not nest: {{{text}}}")
                    }
                    c => unit.extend(c.to_string().as_bytes()),
                }
            }
            Piece::Bytes(unit.repeat(count.parse()?))
        }
        name => Piece::Bytes(
            vars.get(name)
                .ok_or_else(|| anyhow!("unknown variable {{{name}}}"))?
                .clone()
                .into_bytes(),
        ),
    })
}

/// The guard config the corpus's expectations are written against (every test that replays
/// the corpus through the guard uses it): short timeouts so slow entries end quickly; rate limits off (this is not a flood test); a
/// deny pattern, a message count and a batch cap for the content, shape and control entries.
pub fn guard_config(expired_hash: &str) -> String {
    format!(
        "[proxy.timeouts]\nheader_read_secs = 1\nbody_secs = 1\n\
         [proxy.rate]\nper_key_rpm = 0\nper_ip_rpm = 0\n\
         [proxy.limits]\nmax_body_bytes = 65536\nbody_per_route = {{ embeddings = 1024 }}\n\
         [proxy.headers]\nreserved = [\"x-team-id\"]\n\
         [proxy.content]\ndeny_patterns = [\"(?i)exfiltrate the keys\"]\nmax_messages = 16\n\
         [proxy.body.caps]\ninputs = 8\n\
         [[proxy.keys]]\nname = \"expired\"\nsha256 = \"{expired_hash}\"\n\
         created = \"2020-01-01T00:00:00Z\"\nexpires = \"2021-01-01T00:00:00Z\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_escapes_variables_lengths_and_pauses() {
        let vars = Vars::from([("HOST", "h:1".to_owned())]);
        let raw = r#"POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: {CL}\r\n\r\n{REPEAT 3 \{\}}{"a":{}}{NEXT}\x41\s{PAUSE 5}b{DRIP 7}c"#;
        let got = render(raw, &vars).unwrap();
        assert_eq!(
            got,
            vec![
                Segment::Bytes(
                    b"POST / HTTP/1.1\r\nHost: h:1\r\nContent-Length: 14\r\n\r\n{}{}{}{\"a\":{}}A "
                        .to_vec()
                ),
                Segment::Pause(Duration::from_millis(5)),
                Segment::Bytes(b"b".to_vec()),
                Segment::Drip(Duration::from_millis(7)),
                Segment::Bytes(b"c".to_vec()),
            ]
        );
        assert!(render("{NOPE}", &vars).is_err());
        assert!(render(r"\q", &vars).is_err());
        assert!(render("{REPEAT 2 a{REPEAT 3 b}}", &vars).is_err());
    }

    #[test]
    fn parses_entries_and_expectations() {
        let text = "# c\n== one\ncategory: auth\nexpect: status 401 code=bad_key x2, status 400 bare or closed\nraw: GET / HTTP/1.1\\r\\n\n  Host: x\\r\\n\\r\\n\n";
        let entries = parse(text).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].raw, r"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            describe(&entries[0].expect[0]),
            "status 401 code=bad_key, status 401 code=bad_key, status 400 bare"
        );
        assert!(parse_expect("status 400 bare code=x").is_err());
        assert!(entries[0].expect[1].is_empty());
        assert!(parse("== x\ncategory: a\nexpect: status 4o1\nraw: x\n").is_err());
        assert!(parse("== x\ncategory: a\nraw: x\n").is_err());
    }
}
