//! Message framing, checked before routing: a head whose length, coding or host a hop behind
//! us could read differently is refused, never guessed at.
//!
//! Pingora's parser already refuses what it cannot frame (two different `Content-Length`s, an
//! unknown `Transfer-Encoding`); this catches what it lets through: `Content-Length: 65, 65`
//! (RFC 9110 §8.6 allows refusing it; a 413 would be wrong), a transfer coding other than a
//! lone `chunked` (`gzip, chunked` would be stored still coded: RFC 9112 §6.1 says 501), and
//! an HTTP/1.1 request without exactly one valid `Host` (RFC 9112 §3.2 says 400).

use http::{HeaderMap, Version};

use crate::reason::Reason;

pub fn check(version: Version, headers: &HeaderMap) -> Result<(), Reason> {
    if version != Version::HTTP_2 {
        check_host(version, headers)?;
    }
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(length) = lengths.next() {
        let digits = length.as_bytes().trim_ascii();
        if lengths.next().is_some() || digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(Reason::InvalidRequest);
        }
    }
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    if let Some(coding) = codings.next() {
        if codings.next().is_some()
            || !coding
                .as_bytes()
                .trim_ascii()
                .eq_ignore_ascii_case(b"chunked")
        {
            return Err(Reason::UnsupportedTransferEncoding);
        }
    }
    Ok(())
}

/// HTTP/1.1 needs exactly one `Host`; HTTP/1.0 may omit it. Either way a value must be an
/// authority (`host[:port]`, a bracketed IPv6 literal) or empty.
fn check_host(version: Version, headers: &HeaderMap) -> Result<(), Reason> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let Some(host) = hosts.next() else {
        return if version == Version::HTTP_11 {
            Err(Reason::InvalidRequest)
        } else {
            Ok(())
        };
    };
    if hosts.next().is_some() || !is_authority(host.as_bytes().trim_ascii()) {
        return Err(Reason::InvalidRequest);
    }
    Ok(())
}

fn is_authority(value: &[u8]) -> bool {
    if value.is_empty() {
        return true;
    }
    let (host, port) = if value.starts_with(b"[") {
        let Some(end) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &value[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        (&value[..=end], &value[end + 1..])
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i..]),
            None => (value, &b""[..]),
        }
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(b);
    port_ok && !host.is_empty() && (host.starts_with(b"[") || host.iter().all(reg_name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::headers;

    fn check11(pairs: &[(&str, &str)]) -> Result<(), Reason> {
        check(Version::HTTP_11, &headers(pairs))
    }

    #[test]
    fn content_length_is_one_decimal_number() {
        let host = ("host", "example.com");
        assert_eq!(check11(&[host, ("content-length", "65")]), Ok(()));
        for bad in ["65, 65", "65,65", "+65", "-1", "0x41", "", "6 5"] {
            assert_eq!(
                check11(&[host, ("content-length", bad)]),
                Err(Reason::InvalidRequest),
                "{bad:?}"
            );
        }
        assert_eq!(
            check11(&[host, ("content-length", "65"), ("content-length", "65")]),
            Err(Reason::InvalidRequest)
        );
    }

    #[test]
    fn only_a_lone_chunked_coding_is_accepted() {
        let host = ("host", "example.com");
        assert_eq!(check11(&[host, ("transfer-encoding", "Chunked")]), Ok(()));
        for bad in [
            "gzip, chunked",
            "identity, chunked",
            "chunked, chunked",
            "gzip",
            "",
        ] {
            assert_eq!(
                check11(&[host, ("transfer-encoding", bad)]),
                Err(Reason::UnsupportedTransferEncoding),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        assert_eq!(check11(&[]), Err(Reason::InvalidRequest));
        assert_eq!(check(Version::HTTP_10, &headers(&[])), Ok(()));
        assert_eq!(check(Version::HTTP_2, &headers(&[])), Ok(()));
        for good in [
            "example.com",
            "example.com:8080",
            "127.0.0.1",
            "[::1]:443",
            "[::1]",
            "",
        ] {
            assert_eq!(check11(&[("host", good)]), Ok(()), "{good:?}");
        }
        for bad in [
            "exa mple.com",
            "a/b",
            "a:b",
            "a:123456",
            "[::1",
            "[zz]",
            "a@b",
            ":80",
            "a:80:80",
        ] {
            assert_eq!(
                check11(&[("host", bad)]),
                Err(Reason::InvalidRequest),
                "{bad:?}"
            );
        }
        assert_eq!(
            check11(&[("host", "a.com"), ("host", "b.com")]),
            Err(Reason::InvalidRequest)
        );
    }
}
