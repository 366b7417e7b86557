//! The TLS version floor, decided on the raw ClientHello before rustls sees it.
//!
//! Pingora's rustls listener enables TLS 1.2 and 1.3 and does not let a caller narrow that.
//! rustls picks 1.3 exactly when the hello's `supported_versions` extension lists it, so a
//! listener with the default 1.3 floor reads the first hello off the socket (Pingora's pre-TLS
//! hook), refuses one that does not offer 1.3 with a `protocol_version` alert, and otherwise
//! puts the bytes back for the handshake.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use pingora::listeners::PreTlsProcess;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::GetSocketDigest;
use pingora::{Error, ErrorType, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A ClientHello larger than this is refused (real ones are a few KiB with PQ key shares).
const MAX_HELLO: usize = 64 * 1024;
/// Time a client gets to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SUPPORTED_VERSIONS: u16 = 43;
const TLS13: u16 = 0x0304;
/// `Alert(fatal, protocol_version)` in a TLS 1.2-framed record.
const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46];

/// The listeners (by local address; an unspecified IP matches any) that require TLS 1.3.
#[derive(Debug, Default)]
pub struct Tls13Floor {
    pub addrs: Vec<SocketAddr>,
}

#[async_trait]
impl PreTlsProcess for Tls13Floor {
    async fn process(&self, stream: &mut L4Stream) -> Result<()> {
        let local = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
        if !local.is_some_and(|l| super::listener_matches(&self.addrs, l)) {
            return Ok(());
        }
        let read = tokio::time::timeout(HELLO_TIMEOUT, read_client_hello(stream)).await;
        let (raw, hello) = match read {
            Ok(Ok(read)) => read,
            Ok(Err(why)) => return Err(refuse(why)),
            Err(_) => return Err(refuse("no ClientHello in time")),
        };
        match offers_tls13(&hello) {
            Some(true) => {
                stream.rewind(&raw);
                Ok(())
            }
            Some(false) => {
                let _ = stream.write_all(&PROTOCOL_VERSION_ALERT).await;
                let _ = stream.flush().await;
                Err(refuse(
                    "client does not offer TLS 1.3 (listener min_version 1.3)",
                ))
            }
            None => Err(refuse("malformed ClientHello")),
        }
    }
}

fn refuse(why: &'static str) -> Box<Error> {
    tracing::debug!("TLS handshake refused: {why}");
    Error::explain(ErrorType::HandshakeError, why)
}

/// Reads handshake records until one whole ClientHello message is in; returns the raw bytes
/// read (to put back) and the message (type, length and body).
async fn read_client_hello(
    stream: &mut L4Stream,
) -> std::result::Result<(Vec<u8>, Vec<u8>), &'static str> {
    let (mut raw, mut message) = (Vec::new(), Vec::new());
    loop {
        let mut header = [0u8; 5];
        stream
            .read_exact(&mut header)
            .await
            .map_err(|_| "connection closed before the ClientHello")?;
        if header[0] != CONTENT_HANDSHAKE {
            return Err("not a TLS handshake");
        }
        let len = u16::from_be_bytes([header[3], header[4]]) as usize;
        if len == 0 || raw.len() + 5 + len > MAX_HELLO {
            return Err("ClientHello record of a bad size");
        }
        let mut body = vec![0u8; len];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|_| "connection closed inside the ClientHello")?;
        raw.extend_from_slice(&header);
        raw.extend_from_slice(&body);
        message.extend_from_slice(&body);
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Err("first handshake message is not a ClientHello");
            }
            let need = 4 + u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if need > MAX_HELLO {
                return Err("ClientHello too large");
            }
            if message.len() >= need {
                message.truncate(need);
                return Ok((raw, message));
            }
        }
    }
}

/// Whether a ClientHello message offers TLS 1.3; `None` if it cannot be parsed.
pub fn offers_tls13(message: &[u8]) -> Option<bool> {
    let mut r = Reader(message.get(4..)?);
    r.take(2 + 32)?; // legacy_version, random
    let session_id = r.u8()? as usize;
    r.take(session_id)?;
    let suites = r.u16()? as usize;
    r.take(suites)?;
    let compression = r.u8()? as usize;
    r.take(compression)?;
    if r.0.is_empty() {
        return Some(false); // no extensions: a pre-1.3 client
    }
    let len = r.u16()? as usize;
    let mut extensions = Reader(r.take(len)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()? as usize;
        let data = extensions.take(len)?;
        if kind == EXT_SUPPORTED_VERSIONS {
            let mut versions = Reader(data);
            let len = versions.u8()? as usize;
            let list = versions.take(len)?;
            return Some(
                list.chunks_exact(2)
                    .any(|v| u16::from_be_bytes([v[0], v[1]]) == TLS13),
            );
        }
    }
    Some(false)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello message with the given extensions (type, data).
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0x00, 0x02, 0x13, 0x01]); // one suite
        body.extend([0x01, 0x00]); // null compression
        let mut ext = Vec::new();
        for (kind, data) in extensions {
            ext.extend(kind.to_be_bytes());
            ext.extend((data.len() as u16).to_be_bytes());
            ext.extend(data);
        }
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    #[test]
    fn supported_versions_decides() {
        let both = hello(&[(0, vec![0, 0]), (43, vec![4, 0x03, 0x04, 0x03, 0x03])]);
        assert_eq!(offers_tls13(&both), Some(true));
        let only12 = hello(&[(43, vec![2, 0x03, 0x03])]);
        assert_eq!(offers_tls13(&only12), Some(false));
        let none = hello(&[(10, vec![0, 2, 0, 29])]);
        assert_eq!(offers_tls13(&none), Some(false));
    }

    #[test]
    fn truncated_hellos_are_malformed_not_a_panic() {
        let full = hello(&[(43, vec![4, 0x03, 0x04, 0x03, 0x03])]);
        for cut in 0..full.len() - 1 {
            let r = offers_tls13(&full[..cut]);
            assert_ne!(r, Some(true), "cut at {cut}");
        }
        assert_eq!(offers_tls13(&[]), None);
        assert_eq!(offers_tls13(&[1, 0, 0, 0, 3, 3]), None);
    }
}
