//! Content type and declared size, decided from the head alone: a body that says it is too
//! large is refused before a byte of it is read. (Bodies that grow past the limit while
//! streaming, chunked or lying about their length, are cut off by the body reader.)

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;

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
