//! Twilio: `X-Twilio-Signature` = base64(HMAC(auth token, URL + sorted form params)).
//!
//! The URL is the one Twilio was told to call (`public_url`), with the actual request's query
//! string appended. Form posts append every `name` + `value`, sorted by name then value. Any
//! other body (JSON) must carry `bodySHA256=<hex>` in the query: the URL alone is signed and
//! the body must hash to that value. A non-form body without it is refused, as Twilio's SDKs
//! refuse it, since the URL alone would authenticate any body.
//!
//! The HMAC is SHA-1 (the account's Auth Token) unless `X-Twilio-Webhooks-Signature-Settings`
//! names another algorithm (`key=…,algorithm=HMAC_SHA256`, a SharedKey): SHA-256 is accepted
//! too, anything else is `invalid_signature`. Twilio's SDKs accept the URL with and without the
//! default port, so both are tried, as they do.

use subtle::ConstantTimeEq;

use super::{Algorithm, Encoding, Keys, Outbound, Scheme, Secret};
use crate::reason::Reason;
use crate::request::Inbound;

const HEADER: &str = "x-twilio-signature";
const SETTINGS_HEADER: &str = "x-twilio-webhooks-signature-settings";
const FORM: &str = "application/x-www-form-urlencoded";

pub struct Twilio {
    sha1: Keys,
    sha256: Keys,
    public_url: String,
}

impl Twilio {
    pub fn new(secrets: &[Secret], public_url: &str) -> Twilio {
        Twilio {
            sha1: Keys::new(Algorithm::Sha1, secrets),
            sha256: Keys::new(Algorithm::Sha256, secrets),
            public_url: public_url.to_owned(),
        }
    }

    fn url(&self, query: Option<&str>) -> String {
        match query {
            Some(q) if !q.is_empty() => format!("{}?{q}", self.public_url),
            _ => self.public_url.clone(),
        }
    }

    /// The keys for the algorithm the request says it was signed with.
    fn keys(&self, req: &Inbound<'_>) -> Result<&Keys, Reason> {
        let Some(settings) = req.header(SETTINGS_HEADER) else {
            return Ok(&self.sha1);
        };
        let algorithm = super::pairs(settings, ',')
            .find(|(name, value)| name.trim() == "algorithm" && !value.trim().is_empty())
            .map(|(_, value)| value.trim().to_ascii_uppercase());
        match algorithm.as_deref() {
            None | Some("HMAC_SHA1") => Ok(&self.sha1),
            Some("HMAC_SHA256") => Ok(&self.sha256),
            Some(_) => Err(Reason::InvalidSignature),
        }
    }
}

/// `name` + `value` for every form parameter, sorted and de-duplicated as Twilio does.
fn signed_params(body: &[u8]) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    params.sort();
    params.dedup();
    params.into_iter().map(|(k, v)| k + &v).collect()
}

/// The URL with its port removed if it has one, or the scheme's default port added if not.
fn toggle_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let host_end = if hostport.starts_with('[') {
        hostport.find(']').map(|i| i + 1).unwrap_or(hostport.len())
    } else {
        hostport.find(':').unwrap_or(hostport.len())
    };
    let (host, port) = hostport.split_at(host_end);
    let toggled = if port.is_empty() {
        let default = match scheme {
            "https" => "443",
            "http" => "80",
            _ => return None,
        };
        format!("{host}:{default}")
    } else {
        host.to_owned()
    };
    Some(format!("{scheme}://{userinfo}{toggled}{path}"))
}

fn body_hash_matches(query: &str, body: &[u8]) -> Option<bool> {
    let expected = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())?;
    let actual = super::sha256_hex(body);
    Some(bool::from(
        actual
            .as_bytes()
            .ct_eq(expected.to_ascii_lowercase().as_bytes()),
    ))
}

/// The query parameter that binds a non-form body to the signed URL, as Twilio sends it.
fn body_hash_param(body: &[u8]) -> String {
    format!("bodySHA256={}", super::sha256_hex(body))
}

/// Whether `sign` treats the body as a form post (its params are signed) or not (its hash
/// goes into the URL): an empty body needs neither.
fn signs_as_form(msg: &Outbound<'_>) -> Option<bool> {
    if msg.body.is_empty() {
        return None;
    }
    Some(msg.content_type.is_some_and(is_form_type))
}

impl Scheme for Twilio {
    fn verify(&self, req: &Inbound<'_>, _now: i64) -> Result<(), Reason> {
        let value = req.signature(HEADER)?;
        let signature = Encoding::Base64
            .decode(value)
            .ok_or(Reason::InvalidSignature)?;
        let keys = self.keys(req)?;
        let url = self.url(req.query);
        let params = match req.query.and_then(|q| body_hash_matches(q, req.body)) {
            Some(true) => String::new(),
            Some(false) => return Err(Reason::InvalidSignature),
            None if is_form(req) => signed_params(req.body),
            None if req.body.is_empty() => String::new(),
            // The URL alone would authenticate any body: a captured signature of a
            // parameterless callback must not carry a body of the sender's choosing.
            None => return Err(Reason::InvalidSignature),
        };
        let candidates = [signature];
        let signed = |u: &str| keys.matches(&[u.as_bytes(), params.as_bytes()], &candidates);
        if signed(&url) || toggle_port(&url).is_some_and(|u| signed(&u)) {
            Ok(())
        } else {
            Err(Reason::InvalidSignature)
        }
    }

    fn sign(&self, msg: &Outbound<'_>) -> Vec<(String, String)> {
        let mut url = msg.url.map(str::to_owned).unwrap_or_else(|| self.url(None));
        let params = match signs_as_form(msg) {
            Some(true) => signed_params(msg.body),
            Some(false) => {
                url.push(if url.contains('?') { '&' } else { '?' });
                url += &body_hash_param(msg.body);
                String::new()
            }
            None => String::new(),
        };
        let tag = self.sha1.sign(&[url.as_bytes(), params.as_bytes()]);
        vec![(HEADER.to_owned(), Encoding::Base64.encode(&tag))]
    }

    fn sign_query(&self, msg: &Outbound<'_>) -> Option<String> {
        (signs_as_form(msg) == Some(false)).then(|| body_hash_param(msg.body))
    }
}

fn is_form_type(content_type: &str) -> bool {
    content_type.trim().to_ascii_lowercase().starts_with(FORM)
}

fn is_form(req: &Inbound<'_>) -> bool {
    req.header("content-type").is_some_and(is_form_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schemes::test_support::{headers, secret};
    use std::net::{IpAddr, Ipv4Addr};

    // twilio-python tests/unit/test_request_validator.py
    const FORM: &str = "CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";

    fn verify(
        public_url: &str,
        query: &str,
        ct: &str,
        body: &[u8],
        sig: &str,
    ) -> Result<(), Reason> {
        let scheme = Twilio::new(&[secret("12345")], public_url);
        let h = headers(&[("content-type", ct), ("X-Twilio-Signature", sig)]);
        let req = Inbound::new(
            "POST",
            "/",
            Some(query),
            &h,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            body,
        );
        scheme.verify(&req, 0)
    }

    const FORM_CT: &str = "application/x-www-form-urlencoded";

    #[test]
    fn matches_the_sdk_form_vector() {
        let url = "https://mycompany.com/myapp.php";
        assert_eq!(
            verify(
                url,
                "foo=1&bar=2",
                FORM_CT,
                FORM.as_bytes(),
                "RSOYDt4T1cUTdK1PDd93/VVr8B8="
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                url,
                "foo=1&bar=3",
                FORM_CT,
                FORM.as_bytes(),
                "RSOYDt4T1cUTdK1PDd93/VVr8B8="
            ),
            Err(Reason::InvalidSignature)
        );
        let dup = b"Sid=CA123&SidAccount=AC123&Digits=5678&Digits=1234";
        assert_eq!(
            verify(
                url,
                "foo=1&bar=2",
                FORM_CT,
                dup,
                "IK+Dwps556ElfBT0I3Rgjkr1wJU="
            ),
            Ok(())
        );
    }

    #[test]
    fn accepts_the_url_with_or_without_its_default_port() {
        let with_port = "https://mycompany.com:1234/myapp.php";
        assert_eq!(
            verify(
                with_port,
                "foo=1&bar=2",
                FORM_CT,
                FORM.as_bytes(),
                "RSOYDt4T1cUTdK1PDd93/VVr8B8="
            ),
            Ok(())
        );
        let url = "https://mycompany.com/myapp.php";
        assert_eq!(
            verify(
                url,
                "foo=1&bar=2",
                FORM_CT,
                FORM.as_bytes(),
                "kvajT1Ptam85bY51eRf/AJRuM3w="
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                "http://mycompany.com/myapp.php",
                "foo=1&bar=2",
                FORM_CT,
                FORM.as_bytes(),
                "0ZXoZLH/DfblKGATFgpif+LLRf4="
            ),
            Ok(())
        );
    }

    #[test]
    fn json_bodies_are_bound_by_body_sha256() {
        let url = "https://mycompany.com/myapp.php";
        let body = br#"{"property": "value", "boolean": true}"#;
        let query = "foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(
            verify(
                url,
                query,
                "application/json",
                body,
                "a9nBmqA0ju/hNViExpshrM61xv4="
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                url,
                query,
                "application/json",
                br#"{"property": "value", "boolean": false}"#,
                "a9nBmqA0ju/hNViExpshrM61xv4="
            ),
            Err(Reason::InvalidSignature)
        );
    }

    #[test]
    fn a_non_form_body_without_body_sha256_is_refused() {
        // A parameterless callback's genuine signature covers the URL alone.
        let url = "https://mycompany.com/myapp.php";
        let scheme = Twilio::new(&[secret("12345")], url);
        let tag = scheme.sha1.sign(&[format!("{url}?foo=1").as_bytes(), b""]);
        let sig = Encoding::Base64.encode(&tag);
        assert_eq!(verify(url, "foo=1", "application/json", b"", &sig), Ok(()));
        for ct in ["application/json", "text/plain", ""] {
            assert_eq!(
                verify(url, "foo=1", ct, br#"{"forged":true}"#, &sig),
                Err(Reason::InvalidSignature),
                "{ct:?}"
            );
        }
    }

    #[test]
    fn sign_binds_a_json_body_with_body_sha256_in_the_query() {
        let url = "https://mycompany.com/myapp.php";
        let scheme = Twilio::new(&[secret("12345")], url);
        let body = br#"{"property": "value", "boolean": true}"#;
        let msg = Outbound {
            body,
            timestamp: 0,
            id: "",
            url: None,
            content_type: Some("application/json"),
        };
        let query = scheme.sign_query(&msg).unwrap();
        assert_eq!(
            query,
            "bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        let sig = scheme.sign(&msg).remove(0).1;
        assert_eq!(verify(url, &query, "application/json", body, &sig), Ok(()));
        assert_eq!(
            verify(url, &query, "application/json", b"{}", &sig),
            Err(Reason::InvalidSignature)
        );
        let form = Outbound {
            content_type: Some("application/x-www-form-urlencoded; charset=utf-8"),
            ..msg
        };
        assert_eq!(scheme.sign_query(&form), None);
    }

    #[test]
    fn a_shared_key_may_sign_with_hmac_sha256() {
        // twilio-python 9.13 RequestValidator.compute_signature(..., "HMAC_SHA256").
        let scheme = Twilio::new(&[secret("12345")], "https://mycompany.com/myapp.php");
        let check = |settings: &str, sig: &str| {
            let h = headers(&[
                ("content-type", FORM_CT),
                ("X-Twilio-Signature", sig),
                ("X-Twilio-Webhooks-Signature-Settings", settings),
            ]);
            let req = Inbound::new(
                "POST",
                "/",
                Some("foo=1&bar=2"),
                &h,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                FORM.as_bytes(),
            );
            scheme.verify(&req, 0)
        };
        let sha256 = "033hgUJA9M/hXIZsYjwkerEP/DBm35nEri5FhCYjA5s=";
        let sha1 = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(
            check("key=webhooks_sharedkey_1,algorithm=HMAC_SHA256", sha256),
            Ok(())
        );
        assert_eq!(check("algorithm = hmac_sha256", sha256), Ok(()));
        assert_eq!(check("key=k", sha1), Ok(()));
        assert_eq!(check("key=k,algorithm=HMAC_SHA1", sha1), Ok(()));
        // The algorithm named is the one checked, and an unknown one is refused.
        assert_eq!(
            check("key=k,algorithm=HMAC_SHA256", sha1),
            Err(Reason::InvalidSignature)
        );
        assert_eq!(
            check("key=k,algorithm=HMAC_SHA512", sha256),
            Err(Reason::InvalidSignature)
        );
    }

    #[test]
    fn malformed_signatures_are_rejected() {
        let url = "https://mycompany.com/myapp.php";
        for bad in ["not base64!", "AAAA"] {
            assert_eq!(
                verify(url, "", FORM_CT, FORM.as_bytes(), bad),
                Err(Reason::InvalidSignature)
            );
        }
    }

    #[test]
    fn sign_round_trips_form_posts() {
        let scheme = Twilio::new(
            &[secret("12345")],
            "https://mycompany.com/myapp.php?foo=1&bar=2",
        );
        let signed = scheme.sign(&Outbound {
            body: FORM.as_bytes(),
            timestamp: 0,
            id: "",
            url: None,
            content_type: Some(FORM_CT),
        });
        assert_eq!(signed[0].1, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }

    #[test]
    fn port_toggling_handles_hosts_paths_and_ipv6() {
        assert_eq!(
            toggle_port("https://a.com/x").as_deref(),
            Some("https://a.com:443/x")
        );
        assert_eq!(
            toggle_port("https://a.com:8443/x?q").as_deref(),
            Some("https://a.com/x?q")
        );
        assert_eq!(
            toggle_port("http://[::1]/x").as_deref(),
            Some("http://[::1]:80/x")
        );
        assert_eq!(toggle_port("nonsense"), None);
    }
}
