//! Payload rules: the body must be JSON with the named top-level fields.
//!
//! When no later stage reads the parsed body (no `schema:`, `map:`, or event id, type or
//! timestamp from a JSON pointer), the check walks the body with serde_json without building
//! a `Value`: no allocation per key and string, no copy of the body's text. It is the same
//! parser with the same recursion limit (128), so what it calls valid JSON is exactly what
//! the `Value` path calls valid.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;

pub struct RequireFields {
    fields: Vec<String>,
    /// A later stage parses the body into a `Value` anyway: check that one, parse once.
    value_later: bool,
}

impl RequireFields {
    pub fn new(fields: Vec<String>, value_later: bool) -> RequireFields {
        RequireFields {
            fields,
            value_later,
        }
    }
}

/// The first of `fields` the (JSON) body lacks: what a `missing_field` answer names. Never a
/// value from the body, only the configured field name.
pub fn first_missing<'f>(fields: &'f [String], req: &Inbound<'_>) -> Option<&'f str> {
    missing(fields, req, false).unwrap_or_else(|()| fields.first().map(String::as_str))
}

/// The first of `fields` the body lacks, `Err` when it is not JSON. Scanned without a
/// `Value` unless one is parsed already or `value_later` says a later stage will parse it.
fn missing<'f>(
    fields: &'f [String],
    req: &Inbound<'_>,
    value_later: bool,
) -> Result<Option<&'f str>, ()> {
    if !value_later && req.parsed_json().is_none() {
        if let Some(scanned) = scan(fields, req.body) {
            return scanned;
        }
    }
    let object = req.json().ok_or(())?.as_object();
    Ok(fields
        .iter()
        .find(|f| object.is_none_or(|o| !o.contains_key(f.as_str())))
        .map(String::as_str))
}

/// `fields` checked against `body` without a `Value`: `Err` when it is not JSON, `None`
/// when there are too many fields for the bit set (the `Value` path then answers).
fn scan<'f>(fields: &'f [String], body: &[u8]) -> Option<Result<Option<&'f str>, ()>> {
    if fields.len() > 64 {
        return None;
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let found = Presence(fields)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found));
    Some(match found {
        Err(_) => Err(()),
        Ok(found) => Ok(fields
            .iter()
            .enumerate()
            .find(|(i, _)| found & (1 << i) == 0)
            .map(|(_, f)| f.as_str())),
    })
}

impl Filter for RequireFields {
    fn check_body(&self, req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        match missing(&self.fields, req, self.value_later) {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err(Reason::MissingField),
            Err(()) => Err(Reason::InvalidJson),
        }
    }
}

/// The top-level value: a bit per field of `fields` present, 0 when it is not an object.
struct Presence<'f>(&'f [String]);

impl<'de> DeserializeSeed<'de> for Presence<'_> {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<u64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Presence<'_> {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut found = 0;
        while let Some(field) = map.next_key_seed(FieldIndex(self.0))? {
            map.next_value::<Skip>()?;
            if let Some(i) = field {
                found |= 1 << i;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<u64, A::Error> {
        Skip.visit_seq(seq).map(|_| 0)
    }
    fn visit_bool<E>(self, _: bool) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_i64<E>(self, _: i64) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_u64<E>(self, _: u64) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_f64<E>(self, _: f64) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_str<E>(self, _: &str) -> Result<u64, E> {
        Ok(0)
    }
    fn visit_unit<E>(self) -> Result<u64, E> {
        Ok(0)
    }
}

/// A key: which of the fields it is, compared in place (serde_json hands over the unescaped
/// text, borrowed from the body when it has no escapes).
struct FieldIndex<'f>(&'f [String]);

impl<'de> DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| f == key))
    }
}

/// Any value, read and dropped. Nested through `deserialize_any` as `Value` is, so
/// serde_json's recursion limit applies to it the same way.
struct Skip;

impl<'de> serde::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = Skip;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<IgnoredAny, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn check(body: &[u8]) -> Result<(), Reason> {
        check_with(body, &["action"], false)
    }

    fn check_with(body: &[u8], fields: &[&str], value_later: bool) -> Result<(), Reason> {
        let h = http::HeaderMap::new();
        let req = Inbound::new("POST", "/", None, &h, Ipv4Addr::LOCALHOST.into(), body);
        let fields: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
        RequireFields::new(fields, value_later).check_body(&req, 0)
    }

    /// The scan and the `Value` path give the same answer (and name the same missing field)
    /// on every body: valid, broken, escaped, duplicated, nested to the limit and past it.
    #[test]
    fn the_scan_agrees_with_the_value_path() {
        let deep = |n: usize| format!("{{\"action\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        let bodies: Vec<Vec<u8>> = [
            r#"{"action":"opened","b":2}"#,
            r#"{"b":2,"action":null}"#,
            r#"{"b":{"action":1},"c":[{"action":2}]}"#,
            r#"{"act\u0069on":"escaped key"}"#,
            r#"{"action":1,"action":2}"#,
            r#"{"action":"\ud800"}"#,
            r#"{"action":"\uD83D\uDE00","x":-1.5e300,"y":18446744073709551616}"#,
            r#"{"action":1} trailing"#,
            r#"{"action":1}   "#,
            r#"{"action":1,}"#,
            r#"{"action" 1}"#,
            r#"["action"]"#,
            r#""action""#,
            "null",
            "123",
            "",
            "   ",
            "{",
            r#"{"action":"unterminated}"#,
            r#"{"action":tru}"#,
            r#"{"action":01}"#,
        ]
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .chain([
            deep(126).into_bytes(),
            deep(127).into_bytes(),
            deep(128).into_bytes(),
            deep(5000).into_bytes(),
            b"{\"action\":\"\xff\"}".to_vec(),
            vec![0xff, 0xfe],
        ])
        .collect();
        // The limit is serde_json's 128 levels, on both paths.
        assert_eq!(check(deep(100).as_bytes()), Ok(()));
        assert_eq!(check(deep(200).as_bytes()), Err(Reason::InvalidJson));
        for fields in [&["action"][..], &["b", "action"], &["zzz"]] {
            for body in &bodies {
                let scanned = check_with(body, fields, false);
                let parsed = check_with(body, fields, true);
                assert_eq!(scanned, parsed, "{:?}", String::from_utf8_lossy(body));
                let h = http::HeaderMap::new();
                let owned: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
                let req = Inbound::new("POST", "/", None, &h, Ipv4Addr::LOCALHOST.into(), body);
                let by_scan = first_missing(&owned, &req);
                req.json();
                assert_eq!(by_scan, first_missing(&owned, &req));
            }
        }
    }

    #[test]
    fn more_fields_than_the_bit_set_fall_back_to_the_value() {
        let fields: Vec<String> = (0..70).map(|i| format!("f{i}")).collect();
        let body = format!(
            "{{{}}}",
            fields
                .iter()
                .map(|f| format!("\"{f}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let names: Vec<&str> = fields.iter().map(String::as_str).collect();
        assert_eq!(check_with(body.as_bytes(), &names, false), Ok(()));
        assert_eq!(
            check_with(br#"{"f0":1}"#, &names, false),
            Err(Reason::MissingField)
        );
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
