//! Text readers the shape parsers share: the strings of a part or item of any type (media, ids
//! and signatures left out), the names and values of a schema or tool call, and tool and
//! output-schema definitions, each pushed into the [`Reading`].

use serde_json::{Map, Value};

use super::{
    check::objects,
    read::{BadShape, Kind, Loc, Reading},
};

/// Keys whose strings the model does not read as text: ids, roles, enums, signatures, and media
/// (URLs and base64 data, which `layers::media` checks).
const NOT_TEXT: &[&str] = &[
    "type",
    "id",
    "call_id",
    "tool_call_id",
    "tool_use_id",
    "role",
    "status",
    "encrypted_content",
    "signature",
    "cache_control",
    "detail",
    "format",
    "media_type",
    "mime_type",
    "filename",
    "file_id",
    "file_data",
    "file_url",
    "image_url",
    "image_id",
    "audio_url",
    "video_url",
    "input_audio",
    "url",
    "data",
];

/// Every string value under `value` but those under [`NOT_TEXT`] keys: the text of a content
/// part or input item of a type the parser has no specific reader for.
pub fn strings<'a>(value: &'a Value, reading: &mut Reading<'a>) {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(s) => reading.part(s.as_str()),
            // Reversed onto the stack so parts come out in order: arrays as sent, an
            // object's fields by name (serde_json's map is sorted).
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => {
                // A text source (`{"type": "text", "data": "..."}`, Anthropic's document form,
                // which LiteLLM takes in chat content too): its `data` is text, not media.
                if map.get("type").and_then(Value::as_str) == Some("text") {
                    if let Some(data @ Value::String(_)) = map.get("data") {
                        stack.push(data);
                    }
                }
                stack.extend(
                    map.iter()
                        .rev()
                        .filter(|(key, _)| !NOT_TEXT.contains(&key.as_str()))
                        .map(|(_, v)| v),
                )
            }
            _ => {}
        }
    }
}

/// [`strings`] over an object's fields.
pub fn fields<'a>(object: &'a Map<String, Value>, reading: &mut Reading<'a>) {
    if object.get("type").and_then(Value::as_str) == Some("text") {
        if let Some(Value::String(data)) = object.get("data") {
            reading.part(data.as_str());
        }
    }
    for (key, value) in object {
        if !NOT_TEXT.contains(&key.as_str()) {
            strings(value, reading);
        }
    }
}

/// Every key and string value under `value`: what the model reads of a JSON schema or a tool
/// call's arguments, where the names matter as much as the values.
pub fn json_text<'a>(value: &'a Value, reading: &mut Reading<'a>) {
    let mut stack = vec![(None, value)];
    while let Some((key, value)) = stack.pop() {
        if let Some(key) = key {
            reading.part(key);
            reading.part(" ");
        }
        match value {
            Value::String(s) => {
                reading.part(s.as_str());
                reading.part(" ");
            }
            Value::Array(items) => stack.extend(items.iter().rev().map(|v| (None, v))),
            Value::Object(map) => {
                stack.extend(map.iter().rev().map(|(k, v)| (Some(k.as_str()), v)))
            }
            _ => {}
        }
    }
}

/// Tool definitions (`tools`, `functions`): each one a [`Kind::Tool`] text of its names,
/// descriptions and schemas, whatever the tool type.
pub fn tools<'a>(
    top: &'a Map<String, Value>,
    name: &'a str,
    reading: &mut Reading<'a>,
) -> Result<(), BadShape> {
    let at = Loc::Root;
    let at = at.field(name);
    let Some(Value::Array(items)) = top.get(name) else {
        return Ok(()); // Type checked by `typed`.
    };
    for (i, tool) in objects(items, &at, "a tool definition (an object)")?
        .into_iter()
        .enumerate()
    {
        let at = at.index(i);
        reading.open(&at, Kind::Tool);
        for (key, value) in tool {
            if key != "type" {
                json_text(value, reading);
            }
        }
    }
    Ok(())
}

/// An output schema (`response_format`, `text.format`): the model reads it like a tool's.
pub fn schema<'a>(value: Option<&'a Value>, at: &Loc<'_>, reading: &mut Reading<'a>) {
    if let Some(value @ Value::Object(_)) = value {
        reading.open(at, Kind::Tool);
        json_text(value, reading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readers_skip_media_and_ids_but_keep_schema_names() {
        let mut reading = Reading::default();
        let part = json!({"type": "x", "id": "i", "text": "a", "image_url": {"url": "u"}, "more": ["b", {"c": "d"}]});
        reading.open(&Loc::Root, Kind::Message);
        strings(&part, &mut reading);
        assert_eq!(reading.texts[0].joined(), "bda");
        let schema = json!({"properties": {"path": {"description": "where"}}});
        reading.open(&Loc::Root, Kind::Tool);
        json_text(&schema, &mut reading);
        assert_eq!(
            reading.texts[1].joined(),
            "properties path description where "
        );
    }
}
