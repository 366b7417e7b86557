//! `schema:`: the (verified) JSON body must satisfy a JSON Schema (draft 2020-12 or 7, as its
//! `$schema` says; 2020-12 when it says nothing), compiled once when the filter loads. It
//! runs after the signature and timestamp checks, so an unverified body is never parsed past
//! what they need. A violation answers `400 schema_violation` with the JSON pointer of the
//! first failing value and the keyword it failed: never the value itself (the validator's
//! messages quote values, so they are neither answered nor logged).
//!
//! A `$ref` must stay inside the schema (or name a draft's meta-schema): remote and file
//! references are refused at load, so a check never waits on the network.

use std::path::Path;
use std::sync::Arc;

use super::Filter;
use crate::config::Section;
use crate::reason::Reason;
use crate::request::Inbound;

/// A compiled schema and the file it came from.
#[derive(Clone)]
pub struct Schema {
    validator: Arc<jsonschema::Validator>,
    pub file: String,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("file", &self.file).finish()
    }
}

/// Where and why a body failed: a JSON pointer into the body and a schema keyword.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub pointer: String,
    pub keyword: String,
}

/// Largest schema file read (a schema is configuration, not data).
const MAX_SCHEMA: u64 = 1 << 20;

/// `schema: PATH` (relative to the filter file), read and compiled; problems reported at
/// the key.
pub fn load(value: Option<&str>, base: &Path, at: &mut Section<'_, '_>) -> Option<Schema> {
    let file = value?;
    match read(file, base).and_then(|(json, text)| compile(&json, file, Some(&text))) {
        Ok(schema) => Some(schema),
        Err(e) => {
            at.error(&["schema"], e);
            None
        }
    }
}

/// A schema file's JSON and text, or why it cannot be read (`schema FILE…: why`).
pub fn read(file: &str, base: &Path) -> Result<(serde_json::Value, String), String> {
    let path = base.join(file);
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_SCHEMA => return Err(format!("schema {file}: larger than 1 MiB")),
        Ok(_) => std::fs::read_to_string(&path).map_err(|e| format!("schema {file}: {e}"))?,
        Err(e) => return Err(format!("schema {file}: {e}")),
    };
    let json = serde_json::from_str(&text).map_err(|e| {
        format!(
            "schema {file}:{}:{}: not JSON: {}",
            e.line(),
            e.column(),
            plain(&e)
        )
    })?;
    Ok((json, text))
}

/// Compiles a schema; `label` names it in the message (a file, or an endpoint's inline one),
/// and `text`, when there is one, gives the line of the error.
pub fn compile(
    json: &serde_json::Value,
    label: &str,
    text: Option<&str>,
) -> Result<Schema, String> {
    match jsonschema::validator_for(json) {
        Ok(validator) => Ok(Schema {
            validator: Arc::new(validator),
            file: label.to_owned(),
        }),
        Err(e) => {
            let line = text.and_then(|t| line_of(t, e.instance_path().as_str()));
            Err(format!(
                "schema {label}{}: not a valid JSON Schema at {}: {}",
                line.map(|l| format!(":{l}")).unwrap_or_default(),
                pointer_or_root(e.instance_path().as_str()),
                e
            ))
        }
    }
}

/// serde_json's message without its " at line L column C" (the caller prints `file:L:C`).
fn plain(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

fn pointer_or_root(pointer: &str) -> &str {
    if pointer.is_empty() {
        "the root"
    } else {
        pointer
    }
}

/// The line of the schema file where the value at `pointer` is, found by looking for each
/// segment's key after the previous one's (a good guess for `check`'s `file:line`, not a JSON
/// parser: array indexes are skipped).
fn line_of(text: &str, pointer: &str) -> Option<usize> {
    let mut from = 0;
    for segment in pointer.split('/').filter(|s| !s.is_empty()) {
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let needle = format!("\"{}\"", segment.replace("~1", "/").replace("~0", "~"));
        from += text[from..].find(&needle)?;
    }
    (from > 0).then(|| text[..from].matches('\n').count() + 1)
}

impl Schema {
    /// The first violation of `json`, if any (a valid body takes the validator's fast path;
    /// only a failing one is walked again for where it failed).
    pub fn violation(&self, json: &serde_json::Value) -> Option<Violation> {
        if self.validator.is_valid(json) {
            return None;
        }
        let error = self.validator.iter_errors(json).next()?;
        Some(Violation {
            pointer: error.instance_path().as_str().to_owned(),
            keyword: error.kind().keyword().to_owned(),
        })
    }
}

pub struct SchemaCheck(pub Schema);

impl Filter for SchemaCheck {
    /// The first failure is noted on the request (pointer and keyword, for the answer).
    fn check_body(&self, req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        let json = req.json().ok_or(Reason::InvalidJson)?;
        match self.0.violation(json) {
            None => Ok(()),
            Some(v) => {
                req.note_violation(v);
                Err(Reason::SchemaViolation)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Result<Schema, Vec<String>> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.json"), text).unwrap();
        crate::config::diagnostics::loaded("schema: s.json\n", |at| {
            load(Some("s.json"), dir.path(), at)
        })
    }

    fn violation(s: &Schema, body: &str) -> Option<Violation> {
        serde_json::from_str(body)
            .ok()
            .and_then(|j| s.violation(&j))
    }

    #[test]
    fn the_first_failing_value_is_named_by_pointer_and_keyword_never_by_value() {
        let s = schema(
            r#"{"type":"object","required":["ref"],"properties":{"ref":{"type":"string"},
               "head_commit":{"type":"object","properties":{"id":{"type":"string","pattern":"^[0-9a-f]{40}$"}}}}}"#,
        )
        .unwrap();
        assert_eq!(violation(&s, r#"{"ref":"main"}"#), None);
        let v = violation(&s, r#"{"ref":"main","head_commit":{"id":"secret-value"}}"#).unwrap();
        assert_eq!(
            (v.pointer.as_str(), v.keyword.as_str()),
            ("/head_commit/id", "pattern")
        );
        let v = violation(&s, r#"{"head_commit":{}}"#).unwrap();
        assert_eq!((v.pointer.as_str(), v.keyword.as_str()), ("", "required"));
        assert_eq!(violation(&s, "not json"), None);
    }

    #[test]
    fn draft_7_is_read_by_its_schema_keyword() {
        let s = schema(
            r#"{"$schema":"http://json-schema.org/draft-07/schema#","items":[{"type":"integer"}],"additionalItems":false}"#,
        )
        .unwrap();
        assert_eq!(violation(&s, "[1]"), None);
        assert_eq!(violation(&s, "[1, 2]").unwrap().keyword, "additionalItems");
    }

    #[test]
    fn a_broken_schema_is_refused_at_load_with_its_place() {
        let e = schema(
            "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"a\": {\"type\": 5}\n  }\n}",
        )
        .unwrap_err();
        assert!(e[0].contains("not a valid JSON Schema"), "{e:?}");
        let e = schema("{\n  \"type\": \"object\",\n}").unwrap_err();
        assert!(e[0].contains("s.json:3:1: not JSON"), "{e:?}");
        let e = schema(r#"{"$ref":"https://example.com/s.json"}"#).unwrap_err();
        assert!(e[0].contains("not a valid JSON Schema"), "{e:?}");
    }
}
