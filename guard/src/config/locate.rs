//! Maps a byte offset or a dotted field path back to a line of the config file, for error messages.

use toml_edit::{ImDocument, Item};

/// 1-based line of byte `offset` in `source`.
pub fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())].matches('\n').count() + 1
}

/// 1-based line where `field` (like `bind.rules[0].port`) is written, or the nearest enclosing
/// table that is written. `None` when the field is only a default.
pub fn line_of_field(source: &str, field: &str) -> Option<usize> {
    let doc = ImDocument::parse(source).ok()?;
    let mut item: &Item = doc.as_item();
    let mut best = None;
    for segment in field.split('.') {
        let (name, index) = split_index(segment);
        let table = item.as_table_like()?;
        let (key, child) = table.get_key_value(name)?;
        best = key.span().or(best);
        item = child;
        if let Some(index) = index {
            return match item {
                Item::ArrayOfTables(tables) => {
                    let table = tables.get(index)?;
                    best = table.span().or(best);
                    descend_rest(source, field, segment, table, best)
                }
                Item::Value(value) => {
                    let element = value.as_array()?.get(index)?;
                    best = element.span().or(best);
                    best.map(|span| line_of(source, span.start))
                }
                _ => best.map(|span| line_of(source, span.start)),
            };
        }
    }
    best.map(|span| line_of(source, span.start))
}

/// Continues below an element of an array of tables, whose children hold their own spans.
fn descend_rest(
    source: &str,
    field: &str,
    segment: &str,
    table: &toml_edit::Table,
    mut best: Option<std::ops::Range<usize>>,
) -> Option<usize> {
    let rest = field
        .split_once(segment)
        .map(|(_, rest)| rest.trim_start_matches('.'));
    if let Some(rest) = rest.filter(|rest| !rest.is_empty()) {
        let (name, index) = split_index(rest.split('.').next().unwrap_or(rest));
        if let Some((key, child)) = table.get_key_value(name) {
            best = key.span().or(best);
            if let (Some(index), Some(array)) = (index, child.as_array()) {
                best = array.get(index).and_then(|value| value.span()).or(best);
            }
        }
    }
    best.map(|span| line_of(source, span.start))
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']').parse().ok()),
        None => (segment, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "[log]\nlevel = \"info\"\n\n[bind]\nmode = \"enforce\"\n\n[[bind.rules]]\nport = 4000\n\n[[bind.rules]]\nport = 0\nallow = [\"127.0.0.1\", \"10.0.0.1\"]\n";

    #[test]
    fn finds_plain_fields() {
        assert_eq!(line_of_field(SOURCE, "log.level"), Some(2));
        assert_eq!(line_of_field(SOURCE, "bind.mode"), Some(5));
    }

    #[test]
    fn finds_fields_inside_arrays_of_tables() {
        assert_eq!(line_of_field(SOURCE, "bind.rules[0].port"), Some(8));
        assert_eq!(line_of_field(SOURCE, "bind.rules[1].port"), Some(11));
        assert_eq!(line_of_field(SOURCE, "bind.rules[1].allow[1]"), Some(12));
    }

    #[test]
    fn unknown_fields_have_no_line() {
        assert_eq!(line_of_field(SOURCE, "proxy.listen"), None);
    }
}
