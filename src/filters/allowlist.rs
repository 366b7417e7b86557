//! Source allowlist (CIDR, IPv4 and IPv6), and which address counts as the source.

use std::net::IpAddr;

use ipnet::IpNet;

use super::Filter;
use crate::reason::Reason;
use crate::request::Inbound;

pub struct Allowlist {
    nets: Vec<IpNet>,
}

impl Allowlist {
    pub fn new(nets: Vec<IpNet>) -> Allowlist {
        Allowlist { nets }
    }
}

impl Filter for Allowlist {
    fn check_head(&self, req: &Inbound<'_>) -> Result<(), Reason> {
        let ip = canonical(req.client_ip);
        if self.nets.iter().any(|n| n.contains(&ip)) {
            Ok(())
        } else {
            Err(Reason::IpNotAllowed)
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`, from a dual-stack socket) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The sender's address. `X-Forwarded-For` is believed only when the peer is a trusted proxy,
/// and then read from the right, skipping trusted hops, so a client cannot forge its address
/// by sending the header itself.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(header) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(&client) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// A filter's `allow:` list, checked.
pub fn load(allow: &[String], at: &mut crate::config::Section<'_, '_>) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for cidr in allow {
        match crate::config::parse_net(cidr) {
            Some(net) => nets.push(net),
            None => at.error(&["allow"], format!("`{cidr}` is not an IP address or CIDR (like 192.30.252.0/22 or 2606:50c0::/32)")),
        }
    }
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_only_believed_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("1.2.3.4"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("6.6.6.6, 1.2.3.4, 10.0.0.7"), &trusted),
            ip("1.2.3.4")
        );
        assert_eq!(
            client_ip(ip("10.0.0.2"), Some("junk"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn allowlists_match_v4_v6_and_mapped_addresses() {
        let list = Allowlist::new(vec![
            "192.30.252.0/22".parse().unwrap(),
            "2606:50c0::/32".parse().unwrap(),
        ]);
        let h = http::HeaderMap::new();
        for (addr, ok) in [
            ("192.30.253.1", true),
            ("::ffff:192.30.252.7", true),
            ("2606:50c0::1", true),
            ("192.30.0.1", false),
            ("::1", false),
        ] {
            let req = Inbound::new("POST", "/", None, &h, ip(addr), b"");
            assert_eq!(list.check_head(&req).is_ok(), ok, "{addr}");
        }
    }
}
