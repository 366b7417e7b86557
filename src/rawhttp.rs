//! A captured raw HTTP/1.1 request (request line, headers, blank line, raw body), as
//! `portcullis verify` reads it. Parsing is httparse's; chunked bodies are de-chunked.

use http::{HeaderMap, HeaderName, HeaderValue};

pub struct RawRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request as the filter chain sees it (from loopback: a capture has no peer).
    pub fn inbound(&self) -> crate::request::Inbound<'_> {
        crate::request::Inbound::new(
            &self.method,
            &self.path,
            self.query.as_deref(),
            &self.headers,
            std::net::Ipv4Addr::LOCALHOST.into(),
            &self.body,
        )
    }
}

pub fn parse(raw: &[u8]) -> Result<RawRequest, String> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err("the request head is incomplete (no blank line after the headers)".into())
        }
        Err(e) => return Err(format!("not an HTTP/1.1 request: {e}")),
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| format!("header {}: {e}", h.name))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|e| format!("header {}: {e}", h.name))?;
        headers.append(name, value);
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (target.to_owned(), None),
    };
    let rest = &raw[head_len..];
    let chunked = headers
        .get(http::header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
        let len: usize = len
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or("bad Content-Length")?;
        rest.get(..len)
            .ok_or("the body is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(RawRequest {
        method: req.method.unwrap_or("").to_owned(),
        path,
        query,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete((offset, 0))) => {
                let _ = offset;
                return Ok(body);
            }
            Ok(httparse::Status::Complete((offset, size))) => {
                let end = usize::try_from(size)
                    .ok()
                    .and_then(|size| offset.checked_add(size))
                    .ok_or("chunk too large")?;
                let chunk = data.get(offset..end).ok_or("truncated chunk")?;
                body.extend_from_slice(chunk);
                data = data.get(end.saturating_add(2)..).ok_or("truncated chunk")?;
            }
            _ => return Err("malformed chunked body".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_requests_and_rejects_garbage() {
        let plain =
            b"POST /webhook/x?a=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}trailing";
        let r = parse(plain).unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_deref()),
            ("POST", "/webhook/x", Some("a=1"))
        );
        assert_eq!(r.body, b"{}");
        let chunked =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n1\r\n \r\n0\r\n\r\n";
        assert_eq!(parse(chunked).unwrap().body, b"{} ");
        for bad in [
            &b"garbage"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"\x00\x01\r\n\r\n",
            // A chunk size near u64::MAX: an overflow in debug builds before.
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffff0\r\nab\r\n",
        ] {
            assert!(parse(bad).is_err());
        }
    }
}
