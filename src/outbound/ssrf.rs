//! The SSRF guard: an endpoint URL may only reach the public internet, unless the config
//! exempts a network (`allow_internal`).
//!
//! The host is parsed the way browsers and most HTTP clients do (WHATWG, the `url` crate):
//! `127.1`, `2130706433`, `0x7f.0.0.1` and `0177.0.0.1` are all 127.0.0.1, `[::ffff:7f00:1]`
//! is IPv6 embedding it. A name is resolved once, and refused if **any** of its addresses is
//! forbidden (a name with one public and one private address is a rebinding attempt); the
//! connection then goes to the vetted address, never through a second lookup.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// A parsed endpoint URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub tls: bool,
    pub host: url::Host<String>,
    pub port: u16,
    /// Path and query, as sent in the request line.
    pub path: String,
    /// The `Host` header: host, and port when not the scheme's default.
    pub authority: String,
}

/// Parses an endpoint URL; `allow_http` lets plain `http://` through.
pub fn parse(url: &str, allow_http: bool) -> Result<Target, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("url `{url}`: {e}"))?;
    let tls = match parsed.scheme() {
        "https" => true,
        "http" if allow_http => false,
        "http" => {
            return Err(format!(
                "url `{url}` is plain http: use https, or set outbound.delivery.allow_http"
            ))
        }
        other => return Err(format!("url `{url}`: scheme `{other}` is not http(s)")),
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "url `{url}` carries credentials: put them in the endpoint's headers"
        ));
    }
    let host = parsed
        .host()
        .ok_or_else(|| format!("url `{url}` has no host"))?
        .to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let mut path = parsed.path().to_owned();
    if let Some(q) = parsed.query() {
        path.push('?');
        path.push_str(q);
    }
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    Ok(Target {
        tls,
        host,
        port,
        path,
        authority,
    })
}

/// Why a target was not connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The name did not resolve (or to nothing).
    Dns(String),
    /// An address is internal: (the host as written, the address).
    Blocked(String, IpAddr),
}

/// The address to connect to, once every address of the host passed.
pub async fn vet(target: &Target, allow_internal: &[IpNet]) -> Result<SocketAddr, Refusal> {
    let addrs: Vec<IpAddr> = match &target.host {
        url::Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
        url::Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
        url::Host::Domain(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|e| Refusal::Dns(format!("{name}: {e}")))?
            .map(|a| a.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refusal::Dns(format!("{} has no address", target.host)));
    }
    for ip in &addrs {
        if forbidden(*ip) && !allow_internal.iter().any(|net| net.contains(ip)) {
            return Err(Refusal::Blocked(target.host.to_string(), *ip));
        }
    }
    Ok(SocketAddr::new(addrs[0], target.port))
}

/// Whether an address is anything but public unicast.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0                                   // "this network", 0.0.0.0
        || a == 10                           // private
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || a == 127                          // loopback
        || (a == 169 && b == 254)            // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)    // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)    // TEST-NET-1
        || (a == 192 && b == 88 && c == 99)  // 6to4 relay anycast
        || (a == 192 && b == 168)            // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113)  // TEST-NET-3
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // IPv4-mapped ::ffff:a.b.c.d: as the IPv4 address it carries.
    if s[..5] == [0, 0, 0, 0, 0] && s[5] == 0xffff {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    // NAT64 64:ff9b::/96: as the IPv4 address it translates to.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(s[6], s[7]));
    }
    // 6to4 2002:a.b.c.d::/48: as the IPv4 address of its relay.
    if s[0] == 0x2002 {
        return forbidden_v4(embedded(s[1], s[2]));
    }
    // Only global unicast (2000::/3) is public; ::, ::1, IPv4-compatible ::/96, 64:ff9b:1::/48,
    // discard 100::/64, unique-local fc00::/7, link-local fe80::/10, multicast ff00::/8 and
    // the unallocated rest are all outside it.
    if s[0] & 0xe000 != 0x2000 {
        return true;
    }
    let special_2001 = s[0] == 0x2001 && (s[1] < 0x0200 || s[1] == 0x0db8); // 2001::/23 (Teredo, ORCHID, benchmarking…), 2001:db8::/32 documentation
    let documentation = s[0] == 0x3fff && s[1] < 0x1000; // 3fff::/20
    special_2001 || documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_ip(url: &str) -> IpAddr {
        match parse(url, true).unwrap().host {
            url::Host::Ipv4(ip) => IpAddr::V4(ip),
            url::Host::Ipv6(ip) => IpAddr::V6(ip),
            url::Host::Domain(d) => panic!("{url} parsed as a name: {d}"),
        }
    }

    #[test]
    fn every_spelling_of_loopback_is_one_address_and_forbidden() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://[fd00::1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[2001::1]/",
            "http://255.255.255.255/",
            "http://[2001:db8::1]/",
            "http://[3fff:fff::1]/",
            "http://[ff02::1]/",
            "http://198.18.0.1/",
        ] {
            assert!(forbidden(host_ip(url)), "{url} passed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for url in [
            "https://93.184.215.14/",
            "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
            "https://[::ffff:93.184.215.14]/",
            "https://[64:ff9b::5db8:d70e]/",
            "https://1.1.1.1/",
            "https://[2001:4860:4860::8888]/",
            "https://[3fff:1000::1]/",
        ] {
            assert!(!forbidden(host_ip(url)), "{url} refused");
        }
    }

    #[test]
    fn plain_http_and_credentials_are_refused_unless_allowed() {
        assert!(parse("http://example.com/", false).is_err());
        assert!(parse("http://example.com/", true).is_ok());
        assert!(parse("https://user:pw@example.com/", true).is_err());
        assert!(parse("ftp://example.com/", true).is_err());
        let t = parse("https://example.com:8443/a/b?c=d", false).unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.authority.as_str()),
            (8443, "/a/b?c=d", "example.com:8443")
        );
    }

    #[tokio::test]
    async fn a_name_for_loopback_is_blocked_unless_exempt() {
        let target = parse("http://localhost:9/", true).unwrap();
        assert!(matches!(vet(&target, &[]).await, Err(Refusal::Blocked(..))));
        let exempt: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(vet(&target, &exempt).await.is_ok());
    }
}
