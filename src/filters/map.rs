//! `map:`: named fields picked out of the verified JSON body with JSONPath (RFC 9535), carried
//! in the envelope beside the raw body (`map`), so a consumer reads `commit_sha` without
//! parsing the provider's payload. Paths are compiled once when the filter loads.
//!
//! A path that matches one value gives that value; several give them as an array; none gives
//! `null`, or, for a field written `{ path: …, required: true }`, `400 missing_field` naming
//! the field (never a value). The envelope carries the map as compact JSON in ASCII (non-ASCII
//! escaped as `\uXXXX`), so every sink can put it in a header.

use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;

use crate::config::Section;
use crate::request::Inbound;

/// One field as the filter file writes it: a path, or a path and `required`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FieldSpec {
    Path(String),
    Full(FullField),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullField {
    path: String,
    #[serde(default)]
    required: bool,
}

#[derive(Debug, Clone)]
struct Field {
    name: String,
    path: JsonPath,
    required: bool,
}

/// The compiled `map:`.
#[derive(Debug, Clone)]
pub struct Map {
    fields: Vec<Field>,
}

/// Why a body could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmapped {
    /// The body is not JSON.
    NotJson,
    /// A required field matched nothing: its name.
    Missing(String),
}

impl Unmapped {
    /// The answer's reason, and the field a `missing_field` answer names.
    pub fn verdict(self) -> (crate::reason::Reason, Option<String>) {
        match self {
            Unmapped::NotJson => (crate::reason::Reason::InvalidJson, None),
            Unmapped::Missing(field) => (crate::reason::Reason::MissingField, Some(field)),
        }
    }
}

/// A filter's `map:`, compiled; problems reported at the key.
pub fn load(
    spec: Option<&std::collections::BTreeMap<String, FieldSpec>>,
    at: &mut Section<'_, '_>,
) -> Option<Map> {
    compile(spec?, |field, message| match field {
        Some(name) => at.error(&["map", name], message),
        None => at.error(&["map"], message),
    })
}

/// Compiles the fields; each problem goes to `problem` with the field it is about.
pub fn compile(
    spec: &std::collections::BTreeMap<String, FieldSpec>,
    mut problem: impl FnMut(Option<&str>, String),
) -> Option<Map> {
    let mut fields = Vec::new();
    for (name, field) in spec {
        if !crate::config::is_name(name) {
            problem(
                Some(name),
                format!("map field `{name}`: a name is letters, digits, `-` or `_`"),
            );
            continue;
        }
        let (path, required) = match field {
            FieldSpec::Path(p) => (p, false),
            FieldSpec::Full(FullField { path, required }) => (path, *required),
        };
        match JsonPath::parse(path) {
            Ok(path) => fields.push(Field {
                name: name.clone(),
                path,
                required,
            }),
            Err(e) => problem(
                Some(name),
                format!("map field `{name}`: `{path}` is not a JSONPath (RFC 9535, like $.head_commit.id): {e}"),
            ),
        }
    }
    if fields.is_empty() {
        problem(
            None,
            "map: names no field: remove it or add `name: \"$.path\"`".into(),
        );
        return None;
    }
    Some(Map { fields })
}

impl Map {
    /// The mapped object as the envelope carries it (compact ASCII JSON).
    pub fn apply(&self, req: &Inbound<'_>) -> Result<String, Unmapped> {
        self.apply_to(req.json().ok_or(Unmapped::NotJson)?)
    }

    /// The mapped object of `json` (compact ASCII JSON).
    pub fn apply_to(&self, json: &Value) -> Result<String, Unmapped> {
        let mut out = serde_json::Map::new();
        for field in &self.fields {
            let nodes = field.path.query(json).all();
            let value = match nodes.as_slice() {
                [] if field.required => return Err(Unmapped::Missing(field.name.clone())),
                [] => Value::Null,
                [one] => (*one).clone(),
                many => Value::Array(many.iter().map(|v| (*v).clone()).collect()),
            };
            out.insert(field.name.clone(), value);
        }
        Ok(ascii_json(&Value::Object(out)))
    }
}

/// `value` as compact JSON with every non-ASCII character escaped (`\uXXXX`, surrogate pairs
/// beyond the BMP), so it is a valid header value as well as valid JSON.
pub fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    if text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut units = [0u16; 2];
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            // Outside strings JSON has only ASCII, so every such character is inside one.
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(yaml: &str) -> Result<Map, Vec<String>> {
        let spec: std::collections::BTreeMap<String, FieldSpec> =
            serde_yaml::from_str(yaml).unwrap();
        crate::config::diagnostics::loaded(yaml, |at| load(Some(&spec), at))
    }

    fn apply(m: &Map, body: &str) -> Result<Value, Unmapped> {
        m.apply(&Inbound::body_only(body.as_bytes()))
            .map(|t| serde_json::from_str(&t).unwrap())
    }

    #[test]
    fn one_match_is_the_value_several_an_array_none_null_or_missing_when_required() {
        let m = map("sha: $.head_commit.id\nbranch: { path: $.ref, required: true }\nauthors: $.commits[*].author.name\nnone: $.nothing\n").unwrap();
        let body = r#"{"ref":"refs/heads/main","head_commit":{"id":"abc"},"commits":[{"author":{"name":"a"}},{"author":{"name":"b"}}]}"#;
        assert_eq!(
            apply(&m, body).unwrap(),
            serde_json::json!({"sha": "abc", "branch": "refs/heads/main", "authors": ["a", "b"], "none": null})
        );
        assert_eq!(
            apply(&m, r#"{"head_commit":{}}"#),
            Err(Unmapped::Missing("branch".into()))
        );
        assert_eq!(apply(&m, "not json"), Err(Unmapped::NotJson));
    }

    #[test]
    fn the_map_is_ascii_json_fit_for_a_header() {
        let m = map("who: $.name\n").unwrap();
        let text = m
            .apply(&Inbound::body_only(r#"{"name":"Zoë 🚀"}"#.as_bytes()))
            .unwrap();
        assert!(text.is_ascii(), "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap()["who"],
            "Zoë 🚀"
        );
    }

    #[test]
    fn a_bad_path_or_name_is_refused_at_load() {
        let e = map("sha: head_commit.id\n").unwrap_err();
        assert!(e.iter().any(|p| p.contains("is not a JSONPath")), "{e:?}");
        let e = map("\"a b\": $.x\n").unwrap_err();
        assert!(e.iter().any(|p| p.contains("a name is letters")), "{e:?}");
    }
}
