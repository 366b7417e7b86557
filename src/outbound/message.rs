//! A message as a source sends it: `{"tenant", "event_type", "id", "payload", "ordering_key",
//! "endpoints"}`. The payload is kept as the exact bytes sent (a raw JSON value, never
//! re-serialised), which is what is signed and delivered.

use serde::Deserialize;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    event_type: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    ordering_key: Option<String>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub tenant: String,
    pub event_type: String,
    /// The sender's id; `None` when it gave none (no idempotency then).
    pub id: Option<String>,
    pub payload: String,
    /// The payload's media type when it is not JSON (a bridged form-encoded webhook).
    pub content_type: Option<String>,
    pub ordering_key: Option<String>,
    /// Endpoint names to target some of the tenant's only.
    pub endpoints: Option<Vec<String>>,
}

/// Why a message is refused: `invalid_message`, naming the field when one is at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: Option<&'static str>,
    pub detail: String,
}

/// Longest tenant, event type, id or ordering key.
const MAX_TEXT: usize = 256;

pub fn parse(body: &[u8]) -> Result<Message, Invalid> {
    // serde's message may quote a value: the answer says only where.
    let wire: Wire<'_> = serde_json::from_slice(body).map_err(|e| Invalid {
        field: None,
        detail: format!(
            "not a message object (line {}, column {}): see the README's outbound reference",
            e.line(),
            e.column()
        ),
    })?;
    let required = |value: Option<String>, field: &'static str| {
        let v = value.ok_or(Invalid {
            field: Some(field),
            detail: format!("`{field}` is missing"),
        })?;
        text(&v, field)?;
        Ok::<_, Invalid>(v)
    };
    let tenant = required(wire.tenant, "tenant")?;
    let event_type = required(wire.event_type, "event_type")?;
    let payload = wire.payload.ok_or(Invalid {
        field: Some("payload"),
        detail: "`payload` is missing".into(),
    })?;
    if let Some(id) = &wire.id {
        text(id, "id")?;
    }
    if let Some(key) = &wire.ordering_key {
        text(key, "ordering_key")?;
    }
    Ok(Message {
        tenant,
        event_type,
        id: wire.id,
        payload: payload.get().to_owned(),
        content_type: None,
        ordering_key: wire.ordering_key,
        endpoints: wire.endpoints,
    })
}

fn text(value: &str, field: &'static str) -> Result<(), Invalid> {
    if value.is_empty() || value.len() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(Invalid {
            field: Some(field),
            detail: format!("`{field}` must be 1 to {MAX_TEXT} printable characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_keeps_its_exact_bytes() {
        let m = parse(
            br#"{"tenant":"acme","event_type":"a.b","id":"e1","payload": {"b":1,  "a":[1.50, 2]}}"#,
        )
        .unwrap();
        assert_eq!(m.payload, r#"{"b":1,  "a":[1.50, 2]}"#);
    }

    #[test]
    fn missing_and_bad_fields_are_named() {
        let field = |body: &str| parse(body.as_bytes()).unwrap_err().field;
        assert_eq!(field(r#"{"event_type":"a","payload":1}"#), Some("tenant"));
        assert_eq!(field(r#"{"tenant":"t","payload":1}"#), Some("event_type"));
        assert_eq!(field(r#"{"tenant":"t","event_type":"a"}"#), Some("payload"));
        assert_eq!(
            field(r#"{"tenant":"","event_type":"a","payload":1}"#),
            Some("tenant")
        );
        assert_eq!(field("not json"), None);
        assert_eq!(field(r#"{"tenant":5,"event_type":"a","payload":1}"#), None);
    }
}
