//! The PROXY protocol (v1 text and v2 binary, parsed by the `ppp` crate) on TLS listeners, so
//! a balancer in TCP mode (haproxy `send-proxy-v2`, AWS NLB, …) can pass the sender's address
//! in front of the encrypted stream the gateway terminates itself.
//!
//! Pingora reads pre-TLS bytes only on TLS listeners, through the same hook as the version
//! floor. A listener with `proxy_protocol: true` requires the header on every connection
//! (a sender must not be able to leave it out to hide behind the balancer's address) and
//! believes it only from `trusted_proxies`; anything else is dropped before the handshake.
//! The sender's address replaces the socket's peer address, so allowlists, per-IP limits, the
//! envelope's `source_ip` and the access log all see it.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::{Error, ErrorType, Result};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;

/// A v2 header with TLVs stays far below this; v1 is at most 107 bytes.
const MAX_HEADER: usize = 4096;
/// Time a balancer gets to send the header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The listeners (by local address; an unspecified IP matches any) that expect the header,
/// and the peers it is believed from.
#[derive(Debug, Default)]
pub struct ProxyProtocol {
    pub addrs: Vec<SocketAddr>,
    pub trusted: Vec<IpNet>,
}

#[async_trait]
impl PreTlsProcess for ProxyProtocol {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
        if !local.is_some_and(|l| super::listener_matches(&self.addrs, l)) {
            return Ok(());
        }
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().copied()));
        if !peer.is_some_and(|p| self.trusted.iter().any(|n| n.contains(&p.ip()))) {
            return Err(refuse(
                "connection to a proxy_protocol listener from outside trusted_proxies",
            ));
        }
        let read = tokio::time::timeout(HEADER_TIMEOUT, read_header(stream)).await;
        let (sender, rest) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(why)) => return Err(refuse(why)),
            Err(_) => return Err(refuse("no PROXY header in time")),
        };
        if let Some(sender) = sender {
            let replaced = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = replaced.peer_addr.set(Some(PingoraAddr::Inet(sender)));
            stream.set_socket_digest(replaced);
        }
        stream.rewind(&rest);
        Ok(())
    }
}

/// Reads the header; returns the sender's address (`None` for a balancer's own health check:
/// v2 `LOCAL`, v1 `UNKNOWN`, or a family other than TCP over IPv4/IPv6) and the bytes read past
/// the header, which belong to the TLS handshake.
async fn read_header(
    stream: &mut L4Stream,
) -> std::result::Result<(Option<SocketAddr>, Vec<u8>), &'static str> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| "read error before the PROXY header")?;
        if n == 0 {
            return Err("connection closed before the PROXY header");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = parse(&buf)? {
            let (sender, len) = parsed;
            return Ok((sender, buf.split_off(len)));
        }
        if buf.len() > MAX_HEADER {
            return Err("PROXY header too long");
        }
    }
}

/// A complete header: the sender's address (if it carries one) and the header's length.
type Parsed = (Option<SocketAddr>, usize);

/// `Ok(None)` while more bytes are needed.
fn parse(buf: &[u8]) -> std::result::Result<Option<Parsed>, &'static str> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        return Ok(None);
    }
    match result {
        HeaderResult::V2(Ok(header)) => {
            let sender = match (header.command, header.addresses) {
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            Ok(Some((sender, header.len())))
        }
        HeaderResult::V1(Ok(header)) => {
            let sender = match header.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                v1::Addresses::Unknown => None,
            };
            Ok(Some((sender, header.header.len())))
        }
        _ => Err("not a PROXY protocol header"),
    }
}

fn refuse(why: &'static str) -> Box<Error> {
    tracing::debug!("connection refused before TLS: {why}");
    Error::explain(ErrorType::HandshakeError, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_give_the_sender_and_their_length() {
        let v1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\n\x16\x03\x01";
        let (sender, len) = parse(v1).unwrap().unwrap();
        assert_eq!(sender, Some("198.51.100.7:5555".parse().unwrap()));
        assert_eq!(&v1[len..], b"\x16\x03\x01");

        let v2 = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "[2001:db8::7]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let (sender, len) = parse(&v2).unwrap().unwrap();
        assert_eq!(sender, Some("[2001:db8::7]:4000".parse().unwrap()));
        assert_eq!(len, v2.len());
    }

    #[test]
    fn partial_headers_wait_and_garbage_is_refused() {
        assert_eq!(parse(b"PROXY TCP4 198.51.").unwrap(), None);
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIT\n").unwrap(), None);
        assert!(parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").is_err());
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse(b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n").is_err());
        let unknown = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!(unknown, (None, 15));
    }
}
