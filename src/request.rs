//! One inbound request as the filter chain sees it: the head, the source address and, once it
//! has been read, the raw body (with its JSON parsed at most once, on first use).

use std::cell::OnceCell;
use std::net::IpAddr;

use http::HeaderMap;

pub struct Inbound<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    pub body: &'a [u8],
    json: OnceCell<Option<serde_json::Value>>,
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
        }
    }

    /// The header's value as text; `None` when absent, empty or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let value = self.headers.get(name)?.to_str().ok()?.trim();
        (!value.is_empty()).then_some(value)
    }

    /// The body parsed as JSON, or `None` when it is not JSON. serde_json's recursion limit
    /// (128) turns a nesting bomb into "not JSON" instead of a stack overflow.
    pub fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(self.body).ok())
            .as_ref()
    }
}
