//! Typed field checks the shape parsers share: a known field's JSON type, required fields, arrays
//! of objects with a string `type`. Each failure is a [`BadShape`] at the field's path.

use serde_json::{Map, Value};

use super::read::{BadShape, Loc};

/// The JSON type a known field must have. `null` passes for every optional field: clients send
/// it for "not given".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Bool,
    /// A number, or a string holding one (LiteLLM coerces those; `body_fields` caps them).
    Num,
    Obj,
    Arr,
    StrOrArr,
    StrOrObj,
}

impl Ty {
    fn expected(self) -> &'static str {
        match self {
            Ty::Str => "a string",
            Ty::Bool => "a boolean",
            Ty::Num => "a number",
            Ty::Obj => "an object",
            Ty::Arr => "an array",
            Ty::StrOrArr => "a string or an array",
            Ty::StrOrObj => "a string or an object",
        }
    }

    fn admits(self, value: &Value) -> bool {
        match (self, value) {
            (_, Value::Null) => true,
            (Ty::Str, Value::String(_)) | (Ty::Bool, Value::Bool(_)) => true,
            (Ty::Num, Value::Number(_)) => true,
            (Ty::Num, Value::String(s)) => s.trim().parse::<f64>().is_ok(),
            (Ty::Obj | Ty::StrOrObj, Value::Object(_)) => true,
            (Ty::Arr | Ty::StrOrArr, Value::Array(_)) => true,
            (Ty::StrOrArr | Ty::StrOrObj, Value::String(_)) => true,
            _ => false,
        }
    }
}

/// Checks the type of each known field present in `object`.
pub fn typed(
    object: &Map<String, Value>,
    at: &Loc<'_>,
    fields: &[(&str, Ty)],
) -> Result<(), BadShape> {
    // A body names a few of the dozens of known fields: walking its own entries and finding
    // each in the table is cheaper than a map look-up per known field (this showed as 3.5 %
    // of a chat request's instructions). The field refused is still the first in `fields`.
    if object.len() < fields.len() {
        let mut first_bad: Option<usize> = None;
        for (key, value) in object {
            let Some(at_index) = fields.iter().position(|(name, _)| *name == key.as_str()) else {
                continue;
            };
            if !fields[at_index].1.admits(value) && first_bad.is_none_or(|i| at_index < i) {
                first_bad = Some(at_index);
            }
        }
        return match first_bad {
            Some(i) => Err(BadShape::new(
                &at.field(fields[i].0),
                fields[i].1.expected(),
            )),
            None => Ok(()),
        };
    }
    for (name, ty) in fields {
        if let Some(value) = object.get(*name) {
            if !ty.admits(value) {
                return Err(BadShape::new(&at.field(name), ty.expected()));
            }
        }
    }
    Ok(())
}

/// `object[name]`, which must be present and not null.
pub fn required<'v>(
    object: &'v Map<String, Value>,
    at: &Loc<'_>,
    name: &str,
    expected: &'static str,
) -> Result<&'v Value, BadShape> {
    match object.get(name) {
        None | Some(Value::Null) => Err(BadShape::new(&at.field(name), expected)),
        Some(value) => Ok(value),
    }
}

/// An array's items as objects, each with an optional string `type`.
pub fn objects<'v>(
    items: &'v [Value],
    at: &Loc<'_>,
    expected: &'static str,
) -> Result<Vec<&'v Map<String, Value>>, BadShape> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let object = item
                .as_object()
                .ok_or_else(|| BadShape::new(&at.index(i), expected))?;
            match object.get("type") {
                None | Some(Value::String(_)) => Ok(object),
                Some(_) => Err(BadShape::new(&at.index(i).field("type"), "a string")),
            }
        })
        .collect()
}

/// The `type` of an object, or "".
pub fn kind_of(object: &Map<String, Value>) -> &str {
    object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A string field that must be a string when present (`null` is absent).
pub fn opt_str<'v>(
    object: &'v Map<String, Value>,
    at: &Loc<'_>,
    name: &str,
) -> Result<Option<&'v str>, BadShape> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BadShape::new(&at.field(name), "a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::shapes::Shape;
    use serde_json::json;

    #[test]
    fn the_field_refused_is_the_first_in_the_table_either_way() {
        // Table order differs from the body's (sorted) key order; a few entries against a long
        // table walks the body, as many walks the table: both name `zeta`.
        let fields = [("zeta", Ty::Num), ("alpha", Ty::Num), ("mid", Ty::Num)];
        let few = json!({"alpha": "x", "zeta": "x"});
        let many = json!({"alpha": "x", "zeta": "x", "mid": 1, "other": 1});
        for body in [few, many] {
            let err = typed(body.as_object().unwrap(), &Loc::Root, &fields).unwrap_err();
            assert!(err.path.contains("zeta"), "{}", err.path);
        }
    }

    #[test]
    fn null_passes_for_optional_fields_and_wrong_types_name_the_field() {
        let body = json!({"stream": null, "n": "2", "model": "m"});
        let fields = [("stream", Ty::Bool), ("n", Ty::Num), ("model", Ty::Str)];
        assert!(typed(body.as_object().unwrap(), &Loc::Root, &fields).is_ok());
        let body = json!({"stream": "yes"});
        let err = typed(body.as_object().unwrap(), &Loc::Root, &fields).unwrap_err();
        assert_eq!(err.to_string(), "body field stream must be a boolean");
        let reject = err.into_reject(Shape::ChatCompletions);
        assert_eq!(reject.reason, "bad_shape");
        assert!(!reject.message.contains("yes"));
    }
}
