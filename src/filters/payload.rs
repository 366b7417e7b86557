//! Payload rules: the body must be JSON with the named top-level fields.

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;

pub struct RequireFields {
    fields: Vec<String>,
}

impl RequireFields {
    pub fn new(fields: Vec<String>) -> RequireFields {
        RequireFields { fields }
    }
}

/// The first of `fields` the (JSON) body lacks: what a `missing_field` answer names. Never a
/// value from the body, only the configured field name.
pub fn first_missing<'f>(fields: &'f [String], req: &Inbound<'_>) -> Option<&'f str> {
    let object = req.json().and_then(|j| j.as_object());
    fields
        .iter()
        .find(|f| object.is_none_or(|o| !o.contains_key(f.as_str())))
        .map(String::as_str)
}

impl Filter for RequireFields {
    fn check_body(&self, req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        req.json().ok_or(Reason::InvalidJson)?;
        match first_missing(&self.fields, req) {
            None => Ok(()),
            Some(_) => Err(Reason::MissingField),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn check(body: &[u8]) -> Result<(), Reason> {
        let h = http::HeaderMap::new();
        let req = Inbound::new("POST", "/", None, &h, Ipv4Addr::LOCALHOST.into(), body);
        RequireFields::new(vec!["action".into()]).check_body(&req, 0)
    }

    #[test]
    fn fields_must_be_present_at_the_top_level() {
        assert_eq!(check(br#"{"action":"opened"}"#), Ok(()));
        assert_eq!(check(br#"{"a":{"action":1}}"#), Err(Reason::MissingField));
        assert_eq!(check(b"[1]"), Err(Reason::MissingField));
        assert_eq!(check(b"{nope"), Err(Reason::InvalidJson));
        assert_eq!(check(&[0xff, 0xfe]), Err(Reason::InvalidJson));
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_crash() {
        let bomb = "[".repeat(100_000);
        assert_eq!(check(bomb.as_bytes()), Err(Reason::InvalidJson));
    }
}
