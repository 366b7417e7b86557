//! Content type and declared size, decided from the head alone: a body that says it is too
//! large is refused before a byte of it is read. (Bodies that grow past the limit while
//! streaming, chunked or lying about their length, are cut off by the body reader.)

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;

pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;
pub const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest body any filter may accept: the body is buffered whole to be verified.
pub const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;

/// A filter's `max_body:`, checked.
pub fn load_max_body(
    value: Option<&crate::config::SizeValue>,
    at: &mut crate::config::Section<'_, '_>,
) -> u64 {
    match value.map(crate::config::parse_size) {
        None => DEFAULT_MAX_BODY,
        Some(Ok(n)) if n > 0 && n <= MAX_BODY_LIMIT => n,
        Some(Ok(n)) => {
            at.error(&["max_body"], format!("max_body {n} bytes is outside 1 byte to 64MiB: bodies are buffered whole to be verified"));
            DEFAULT_MAX_BODY
        }
        Some(Err(e)) => {
            at.error(&["max_body"], e);
            DEFAULT_MAX_BODY
        }
    }
}

/// A filter's `body_timeout:` (how long the whole body may take to arrive), checked.
pub fn load_body_timeout(
    value: Option<&str>,
    at: &mut crate::config::Section<'_, '_>,
) -> std::time::Duration {
    at.duration("body_timeout", value, DEFAULT_BODY_TIMEOUT, |d| {
        if d.is_zero() {
            Err("body_timeout must be more than zero".into())
        } else {
            Ok(())
        }
    })
}

/// A filter's `content_types:`, as compared (media type, lower case).
pub fn load_content_types(types: &[String]) -> Vec<String> {
    types
        .iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

pub struct Limits {
    content_types: Vec<String>,
    max_body: u64,
}

impl Limits {
    pub fn new(content_types: Vec<String>, max_body: u64) -> Limits {
        Limits {
            content_types,
            max_body,
        }
    }
}

/// The media type alone: `Application/JSON; charset=utf-8` → `application/json`.
pub fn media_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

impl Filter for Limits {
    fn check_head(&self, req: &Inbound<'_>) -> Result<(), Reason> {
        if !self.content_types.is_empty() {
            let media = req.header("content-type").map(media_type);
            if !media.is_some_and(|m| self.content_types.contains(&m)) {
                return Err(Reason::UnsupportedContentType);
            }
        }
        if let Some(length) = req.headers.get(http::header::CONTENT_LENGTH) {
            let declared = length
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if declared.is_none_or(|n| n > self.max_body) {
                return Err(Reason::PayloadTooLarge);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::headers;
    use std::net::Ipv4Addr;

    fn check(limits: &Limits, pairs: &[(&str, &str)]) -> Result<(), Reason> {
        let h = headers(pairs);
        limits.check_head(&Inbound::new(
            "POST",
            "/",
            None,
            &h,
            Ipv4Addr::LOCALHOST.into(),
            b"",
        ))
    }

    #[test]
    fn content_type_matches_on_the_media_type_only() {
        let l = Limits::new(vec!["application/json".into()], 10);
        assert_eq!(
            check(&l, &[("content-type", "Application/JSON; charset=utf-8")]),
            Ok(())
        );
        assert_eq!(
            check(&l, &[("content-type", "text/plain")]),
            Err(Reason::UnsupportedContentType)
        );
        assert_eq!(check(&l, &[]), Err(Reason::UnsupportedContentType));
        let any = Limits::new(vec![], 10);
        assert_eq!(check(&any, &[]), Ok(()));
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let l = Limits::new(vec![], 10);
        assert_eq!(check(&l, &[("content-length", "10")]), Ok(()));
        assert_eq!(
            check(&l, &[("content-length", "11")]),
            Err(Reason::PayloadTooLarge)
        );
        assert_eq!(
            check(&l, &[("content-length", "99999999999999999999999")]),
            Err(Reason::PayloadTooLarge)
        );
    }
}
