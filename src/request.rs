//! One inbound request as the filter chain sees it: the head, the source address and, once it
//! has been read, the raw body (with its JSON parsed at most once, on first use).

use std::cell::OnceCell;
use std::net::IpAddr;

use http::HeaderMap;

use crate::reason::Reason;

pub struct Inbound<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    pub body: &'a [u8],
    json: OnceCell<Option<serde_json::Value>>,
    /// The stored key that opened this request (`url-key` with `keys: store`).
    key_id: OnceCell<String>,
    /// Where the body failed its schema (`schema_violation`), for the answer and the log.
    violation: OnceCell<crate::filters::schema::Violation>,
}

impl<'a> Inbound<'a> {
    pub fn new(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
        client_ip: IpAddr,
        body: &'a [u8],
    ) -> Self {
        Inbound {
            method,
            path,
            query,
            headers,
            client_ip,
            body,
            json: OnceCell::new(),
            key_id: OnceCell::new(),
            violation: OnceCell::new(),
        }
    }

    /// A POST of `body` with no headers, from 127.0.0.1 (unit tests of body stages).
    #[cfg(test)]
    pub(crate) fn body_only(body: &'a [u8]) -> Inbound<'a> {
        static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        Inbound::new(
            "POST",
            "/",
            None,
            EMPTY.get_or_init(HeaderMap::new),
            std::net::Ipv4Addr::LOCALHOST.into(),
            body,
        )
    }

    /// Notes which stored key opened this request, for the event log.
    pub fn note_key(&self, id: &str) {
        let _ = self.key_id.set(id.to_owned());
    }

    /// Notes where the body failed its schema.
    pub fn note_violation(&self, violation: crate::filters::schema::Violation) {
        let _ = self.violation.set(violation);
    }

    /// Where the body failed its schema, if it did.
    pub fn violation(&self) -> Option<&crate::filters::schema::Violation> {
        self.violation.get()
    }

    /// The stored key that opened this request, if one did.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.get().map(String::as_str)
    }

    /// The header's value as text; `None` when absent, empty, not visible ASCII or sent more
    /// than once (two timestamps or ids are ambiguous, and a hop behind us might pick the other).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let value = self.single(name)?.ok()?.to_str().ok()?.trim();
        (!value.is_empty()).then_some(value)
    }

    /// The signature header: `missing_signature` when absent or empty, `invalid_signature` when
    /// sent more than once or not visible ASCII.
    pub fn signature(&self, name: &str) -> Result<&'a str, Reason> {
        let value = self.single(name).ok_or(Reason::MissingSignature)?;
        let value = value
            .ok()
            .and_then(|v| v.to_str().ok())
            .ok_or(Reason::InvalidSignature)?
            .trim();
        if value.is_empty() {
            return Err(Reason::MissingSignature);
        }
        Ok(value)
    }

    /// `None` when absent, `Some(Err(()))` when sent more than once.
    fn single(&self, name: &str) -> Option<Result<&'a http::HeaderValue, ()>> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        Some(if values.next().is_some() {
            Err(())
        } else {
            Ok(first)
        })
    }

    /// The body parsed as JSON, or `None` when it is not JSON. serde_json's recursion limit
    /// (128) turns a nesting bomb into "not JSON" instead of a stack overflow.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.body).ok())
            .as_ref()
    }

    /// The parsed body if a stage already asked for it (`Some(None)`: it is not JSON).
    pub fn parsed_json(&self) -> Option<Option<&serde_json::Value>> {
        self.json.get().map(Option::as_ref)
    }
}
