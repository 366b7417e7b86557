//! TLS listeners, through the real binary: the version floor, SNI, certificate renewal
//! without a restart, ALPN h2 and client certificates. Certificates come from a test CA made
//! with rcgen; the client is rustls (curl for the HTTP/2 request).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::certs::Ca;
use common::*;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ProtocolVersion, StreamOwned};

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"tls-test-secret\"]\n";

/// Writes `name`.pem / `name`.key into `dir/tls/`.
fn write_pair(dir: &Path, name: &str, pair: &(String, String, Vec<u8>)) {
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    std::fs::write(dir.join(format!("tls/{name}.pem")), &pair.0).unwrap();
    std::fs::write(dir.join(format!("tls/{name}.key")), &pair.1).unwrap();
}

fn start_tls(dir: tempfile::TempDir, tls: &str) -> Server {
    let port = free_port();
    let listen = format!("  - addr: 127.0.0.1:{port}\n    tls: {tls}");
    Server::start_in(dir, port, &listen, spool_sink(), "")
}

/// Accepts any server certificate (after checking its handshake signature) so a test can see
/// which one was served, whatever the SNI name.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct Client {
    versions: Vec<&'static rustls::SupportedProtocolVersion>,
    ca: Option<String>,
    identity: Option<(String, String)>,
    alpn: Vec<Vec<u8>>,
    /// Bytes sent before the handshake (a PROXY protocol header).
    preamble: Vec<u8>,
}

impl Client {
    fn new() -> Client {
        Client {
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            ca: None,
            identity: None,
            alpn: Vec::new(),
            preamble: Vec::new(),
        }
    }

    fn config(&self) -> ClientConfig {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&self.versions)
            .unwrap();
        let builder = match &self.ca {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(pem_cert(pem)).unwrap();
                builder.with_root_certificates(roots)
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCert(provider()))),
        };
        let mut config = match &self.identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![pem_cert(cert)],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn.clone();
        config
    }

    /// Handshakes with SNI `name`, POSTs a signed event, and returns the connection state and
    /// the response (or the error that ended it).
    fn post(&self, port: u16, name: &str, id: &str) -> Result<(Session, Response), String> {
        let conn = ClientConnection::new(
            Arc::new(self.config()),
            ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        sock.write_all(&self.preamble).map_err(|e| e.to_string())?;
        let mut tls = StreamOwned::new(conn, sock);
        let body = format!("{{\"id\":\"{id}\"}}");
        let mut raw = format!(
            "POST /webhook/github HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in sign(GITHUB, body.as_bytes(), now(), id) {
            raw += &format!("{k}: {v}\r\n");
        }
        raw += "\r\n";
        raw += &body;
        tls.write_all(raw.as_bytes()).map_err(|e| e.to_string())?;
        let response = read_response(&mut tls).map_err(|e| e.to_string())?;
        let session = Session {
            version: tls.conn.protocol_version(),
            leaf: tls
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        };
        Ok((session, response))
    }
}

struct Session {
    version: Option<ProtocolVersion>,
    leaf: Option<Vec<u8>>,
}

fn pem_cert(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[test]
fn tls13_is_served_and_tls12_is_refused_by_default() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let server = start_tls(dir, "{ cert: tls/a.pem, key: tls/a.key }");

    let mut client = Client::new();
    client.ca = Some(ca.pem.clone());
    let (session, response) = client.post(server.port, "a.test", "t13-1").unwrap();
    assert_eq!(response.status, 202, "{:?}", response.json());
    assert_eq!(session.version, Some(ProtocolVersion::TLSv1_3));

    client.versions = vec![&rustls::version::TLS12];
    let refused = client.post(server.port, "a.test", "t12-1");
    assert!(refused.is_err(), "a TLS 1.2-only client must be refused");
    let err = refused.err().unwrap();
    assert!(
        err.contains("ProtocolVersion"),
        "refused with protocol_version: {err}"
    );
    // Plain HTTP and garbage on the TLS port are dropped, not served and not fatal.
    assert!(try_request(server.port, b"POST /webhook/github HTTP/1.1\r\n\r\n").is_err());
    assert!(try_request(server.port, &[0x16, 0x03, 0x01, 0x00, 0x00]).is_err());
    assert_eq!(server.spooled().len(), 1, "only the TLS 1.3 event is kept");
    assert!(server.admin_get("/healthz").status == 200);
}

#[test]
fn min_version_1_2_lets_tls12_clients_in() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let server = start_tls(
        dir,
        "{ cert: tls/a.pem, key: tls/a.key, min_version: \"1.2\" }",
    );
    let mut client = Client::new();
    client.ca = Some(ca.pem.clone());
    client.versions = vec![&rustls::version::TLS12];
    let (session, response) = client.post(server.port, "a.test", "t12-ok").unwrap();
    assert_eq!(response.status, 202);
    assert_eq!(session.version, Some(ProtocolVersion::TLSv1_2));
}

#[test]
fn sni_picks_the_certificate_that_names_the_host() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let (a, b, wild) = (
        ca.leaf(&["a.test"], false),
        ca.leaf(&["b.test", "api.b.test"], false),
        ca.leaf(&["*.c.test"], false),
    );
    write_pair(dir.path(), "a", &a);
    write_pair(dir.path(), "b", &b);
    write_pair(dir.path(), "c", &wild);
    let server = start_tls(
        dir,
        "{ cert: tls/a.pem, key: tls/a.key, certificates: [{ cert: tls/b.pem, key: tls/b.key }, { cert: tls/c.pem, key: tls/c.key }] }",
    );

    let client = Client::new();
    let served = |name: &str, id: &str| {
        let (session, response) = client.post(server.port, name, id).unwrap();
        assert_eq!(response.status, 202);
        session.leaf.unwrap()
    };
    assert_eq!(served("a.test", "s1"), a.2);
    assert_eq!(served("api.b.test", "s2"), b.2);
    assert_eq!(served("b.test", "s3"), b.2);
    assert_eq!(served("x.c.test", "s4"), wild.2, "wildcard names match");
    assert_eq!(
        served("unknown.test", "s5"),
        a.2,
        "no match: the first pair"
    );

    // A client that checks names accepts every one of them against the CA.
    let mut strict = Client::new();
    strict.ca = Some(ca.pem.clone());
    for (name, id) in [("a.test", "v1"), ("api.b.test", "v2"), ("y.c.test", "v3")] {
        assert_eq!(strict.post(server.port, name, id).unwrap().1.status, 202);
    }
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let old = ca.leaf(&["a.test"], false);
    write_pair(dir.path(), "a", &old);
    let server = start_tls(dir, "{ cert: tls/a.pem, key: tls/a.key }");
    let client = Client::new();
    let leaf = |id: &str| {
        client
            .post(server.port, "a.test", id)
            .unwrap()
            .0
            .leaf
            .unwrap()
    };
    assert_eq!(leaf("r0"), old.2);

    // A broken renewal (key of another certificate) is refused; the old one keeps serving.
    let other = ca.leaf(&["a.test"], false);
    std::fs::write(server.dir.path().join("tls/a.pem"), &other.0).unwrap();
    wait_until("the bad renewal is refused", || {
        server.log().contains("TLS certificates not reloaded")
    });
    assert_eq!(leaf("r1"), old.2);

    let new = ca.leaf(&["a.test"], false);
    write_pair(server.dir.path(), "a", &new);
    let mut i = 0;
    wait_until("the new certificate is served", || {
        i += 1;
        leaf(&format!("r2-{i}")) == new.2
    });
    assert!(server.log().contains("TLS certificates reloaded"));
    let mut server = server;
    assert!(server.is_alive());
}

#[test]
fn alpn_offers_h2_and_an_http2_request_is_accepted() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let server = start_tls(dir, "{ cert: tls/a.pem, key: tls/a.key }");

    let body = "{\"id\":\"h2-1\"}";
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "--http2", "--cacert"])
        .arg(server.dir.path().join("ca.pem"))
        .args(["--resolve", &format!("a.test:{}:127.0.0.1", server.port)])
        .args([
            "-w",
            "\n%{http_version} %{http_code}",
            "--data-binary",
            body,
        ]);
    for (k, v) in sign(GITHUB, body.as_bytes(), now(), "h2-1") {
        curl.args(["-H", &format!("{k}: {v}")]);
    }
    curl.arg(format!("https://a.test:{}/webhook/github", server.port));
    let out = curl.output().expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.trim_end().ends_with("2 202"),
        "HTTP/2 request: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"accepted\""), "{stdout}");
    assert_eq!(server.spooled().len(), 1);
}

#[test]
fn client_certificates_are_required_when_a_client_ca_is_set() {
    let (ca, clients, strangers) = (Ca::new("server ca"), Ca::new("client ca"), Ca::new("other"));
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    std::fs::write(dir.path().join("tls/clients.pem"), &clients.pem).unwrap();
    let server = start_tls(
        dir,
        "{ cert: tls/a.pem, key: tls/a.key, client_ca: tls/clients.pem }",
    );

    let mut client = Client::new();
    client.ca = Some(ca.pem.clone());
    assert!(
        client.post(server.port, "a.test", "m0").is_err(),
        "no client certificate: refused"
    );
    let stranger = strangers.leaf(&["sender"], true);
    client.identity = Some((stranger.0, stranger.1));
    assert!(
        client.post(server.port, "a.test", "m1").is_err(),
        "a certificate from another CA: refused"
    );
    let known = clients.leaf(&["sender"], true);
    client.identity = Some((known.0, known.1));
    let (_, response) = client.post(server.port, "a.test", "m2").unwrap();
    assert_eq!(response.status, 202);
    assert_eq!(
        server.spooled().len(),
        1,
        "only the authenticated client's event"
    );
}

#[test]
fn check_reports_unloadable_tls_files() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let a = ca.leaf(&["a.test"], false);
    let b = ca.leaf(&["b.test"], false);
    std::fs::create_dir_all(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/a.pem"), &a.0).unwrap();
    std::fs::write(dir.path().join("tls/a.key"), &b.1).unwrap();
    std::fs::write(dir.path().join("tls/empty.pem"), "not a certificate\n").unwrap();
    let conf = dir.path().join("portcullis.yaml");
    std::fs::write(
        &conf,
        "listen:\n  - addr: 127.0.0.1:8443\n    tls: { cert: tls/a.pem, key: tls/a.key, min_version: \"1.1\" }\n  - addr: 127.0.0.1:8444\n    tls: { cert: tls/empty.pem, key: tls/a.key }\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\n",
    )
    .unwrap();
    let (code, text) = check(&conf);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("does the key belong to the certificate?"),
        "{text}"
    );
    assert!(text.contains("no PEM certificate"), "{text}");
    assert!(text.contains("min_version `1.1`"), "{text}");
}

/// A TLS listener (cert `tls/a.*`) that requires a PROXY header from `trusted`.
fn start_proxied(dir: tempfile::TempDir, trusted: &str) -> Server {
    let port = free_port();
    let listen = format!(
        "  - addr: 127.0.0.1:{port}\n    proxy_protocol: true\n    tls: {{ cert: tls/a.pem, key: tls/a.key }}"
    );
    let extra = format!("trusted_proxies: [{trusted}]\n");
    Server::start_in(dir, port, &listen, spool_sink(), &extra)
}

fn proxy_v2(source: &str, destination: &str) -> Vec<u8> {
    use ppp::v2;
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (
            source.parse::<std::net::SocketAddr>().unwrap(),
            destination.parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap()
}

#[test]
fn the_proxy_protocol_gives_the_sender_address_from_a_trusted_balancer() {
    let ca = Ca::new("test ca");
    let filter = format!("{GITHUB}allow: [\"198.51.100.0/24\", \"2001:db8::/32\"]\n");
    let dir = Server::prepare(&[("github.yaml", filter.as_str())]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let server = start_proxied(dir, "127.0.0.1/32");
    let port = server.port;
    let mut client = Client::new();
    client.ca = Some(ca.pem.clone());

    client.preamble = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\n".to_vec();
    let (_, response) = client.post(port, "a.test", "pp-v1").unwrap();
    assert_eq!(response.status, 202, "v1 header: {:?}", response.json());

    client.preamble = proxy_v2("[2001:db8::7]:4000", "[2001:db8::1]:443");
    let (_, response) = client.post(port, "a.test", "pp-v2").unwrap();
    assert_eq!(response.status, 202, "v2 header: {:?}", response.json());

    // The sender, not the balancer, is what the allowlist judges.
    client.preamble = b"PROXY TCP4 203.0.113.1 10.0.0.1 5555 443\r\n".to_vec();
    let (_, response) = client.post(port, "a.test", "pp-outside").unwrap();
    assert_eq!(response.status, 403);
    assert_eq!(response.json()["error"], "ip_not_allowed");

    // Without the header, or with something else in its place, there is no handshake.
    for preamble in [
        Vec::new(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n".to_vec(),
        vec![b'P'; 8192],
    ] {
        client.preamble = preamble;
        assert!(client.post(port, "a.test", "pp-none").is_err());
    }

    let sources: Vec<String> = server
        .spooled()
        .iter()
        .map(|e| e["source_ip"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sources, ["198.51.100.7", "2001:db8::7"]);
    assert_eq!(server.admin_get("/healthz").status, 200);
}

#[test]
fn a_proxy_header_from_outside_trusted_proxies_is_refused() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let server = start_proxied(dir, "10.0.0.0/8");
    let port = server.port;
    let mut client = Client::new();
    client.ca = Some(ca.pem.clone());
    client.preamble = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\n".to_vec();
    assert!(client.post(port, "a.test", "pp-untrusted").is_err());
    assert!(server.spooled().is_empty());
}

#[test]
fn haproxy_send_proxy_v2_passes_the_client_address() {
    let ca = Ca::new("test ca");
    let filter = format!("{GITHUB}allow: [\"127.0.0.2/32\"]\n");
    let dir = Server::prepare(&[("github.yaml", filter.as_str())]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let server = start_proxied(dir, "127.0.0.1/32");
    let port = server.port;
    // TCP mode: haproxy passes the TLS stream through and prepends a v2 header.
    let Some(lb) = Haproxy::start(|lb| {
        format!(
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nfrontend edge\n  bind 127.0.0.1:{lb}\n  default_backend gateway\nbackend gateway\n  server node 127.0.0.1:{port} send-proxy-v2\n"
        )
    }) else {
        return;
    };
    let post_from = |source: &str, id: &str| {
        let body = format!("{{\"id\":\"{id}\"}}");
        let mut curl = std::process::Command::new("curl");
        curl.args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--interface", source, "--cacert"])
            .arg(server.dir.path().join("ca.pem"))
            .args(["--resolve", &format!("a.test:{}:127.0.0.1", lb.port)])
            .args(["--data-binary", &body]);
        for (k, v) in sign(GITHUB, body.as_bytes(), now(), id) {
            curl.args(["-H", &format!("{k}: {v}")]);
        }
        curl.arg(format!("https://a.test:{}/webhook/github", lb.port));
        let out = curl.output().expect("curl runs");
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (status, err) = post_from("127.0.0.2", "hp-1");
    assert_eq!(status, "202", "curl: {err}\n{}", server.log());
    let (status, err) = post_from("127.0.0.3", "hp-2");
    assert_eq!(status, "403", "curl: {err}\n{}", server.log());
    let spooled = server.spooled();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0]["source_ip"], "127.0.0.2");
}

#[test]
fn check_refuses_the_proxy_protocol_where_it_cannot_be_trusted() {
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let conf = dir.path().join("portcullis.yaml");
    std::fs::write(
        &conf,
        "listen:\n  - addr: 127.0.0.1:8080\n    proxy_protocol: true\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\n",
    )
    .unwrap();
    let (code, text) = check(&conf);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("proxy_protocol needs a tls listener"),
        "{text}"
    );
    assert!(text.contains("list the balancer's addresses"), "{text}");
}

#[test]
fn http2_clients_get_the_same_answers_and_reasons_on_one_connection() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 2 * 1024 * 1024]).unwrap();
    let mut server = start_tls(dir, "{ cert: tls/a.pem, key: tls/a.key }");
    let url = |path: &str| format!("https://a.test:{}{path}", server.port);

    let body = "{\"id\":\"h2-adv\"}";
    let signed = sign(GITHUB, body.as_bytes(), now(), "h2-adv");
    let mut tampered = signed.clone();
    for (k, v) in tampered.iter_mut() {
        if k == "x-hub-signature-256" {
            *v = format!("sha256={}", "0".repeat(64));
        }
    }
    let mut curl = std::process::Command::new("curl");
    let ca_file = server.dir.path().join("ca.pem");
    let resolve = format!("a.test:{}:127.0.0.1", server.port);
    // One curl, one connection: each `--next` is another stream on it (options reset there).
    let mut first = true;
    let mut request = |curl: &mut std::process::Command,
                       headers: &[(String, String)],
                       data: Option<String>,
                       path: &str| {
        if !first {
            curl.arg("--next");
        }
        first = false;
        curl.args(["-sS", "--http2", "--resolve", &resolve, "--cacert"])
            .arg(&ca_file);
        curl.args(["-w", "\n%{http_version} %{http_code}\n"]);
        for (k, v) in headers {
            curl.args(["-H", &format!("{k}: {v}")]);
        }
        if let Some(data) = data {
            curl.args(["--data-binary", &data]);
        }
        curl.arg(url(path));
    };
    request(&mut curl, &signed, Some(body.into()), "/webhook/github");
    request(&mut curl, &signed, Some(body.into()), "/webhook/github");
    request(&mut curl, &tampered, Some(body.into()), "/webhook/github");
    request(&mut curl, &[], None, "/webhook/github");
    // Without a body: a 404 is answered before any body is read and the stream is then reset
    // with NO_ERROR, which curl 7.88 reports as an error when its upload is still going (the
    // early answer itself is checked with nghttp in the adversarial HTTP/2 test below).
    request(&mut curl, &[], None, "/webhook/gitlab");
    let out = curl.output().expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<(String, String)> = stdout
        .lines()
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|pair| {
            (
                pair[0].to_owned(),
                pair.get(1).copied().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("accepted", "2 202"),
        ("duplicate", "2 200"),
        ("invalid_signature", "2 401"),
        ("method_not_allowed", "2 405"),
        ("unknown_provider", "2 404"),
    ];
    assert_eq!(
        answers.len(),
        expected.len(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for ((body, status), (word, want)) in answers.iter().zip(expected) {
        assert_eq!(
            status,
            want,
            "{body} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(body.contains(word), "{body} should say {word}");
    }

    // Too large, answered before the body is read: the complete 413, then RST_STREAM(NO_ERROR)
    // asks the client to stop uploading (RFC 9113 §8.1). nghttp, because curl 7.88 reports that
    // reset as an error even after a complete response.
    let mut nghttp = std::process::Command::new("nghttp");
    nghttp.args(["-v", "-d"]).arg(&big);
    for (k, v) in &signed {
        nghttp.args(["-H", &format!("{k}: {v}")]);
    }
    let out = nghttp
        .arg(format!("https://127.0.0.1:{}/webhook/github", server.port))
        .output()
        .expect("nghttp runs (Debian package nghttp2-client)");
    let trace = String::from_utf8_lossy(&out.stdout);
    assert!(trace.contains(":status: 413"), "{trace}");
    assert!(
        trace.contains("{\"error\":\"payload_too_large\"}"),
        "{trace}"
    );
    assert!(
        trace.contains("error_code=NO_ERROR"),
        "the upload is stopped without error: {trace}"
    );
    assert_eq!(server.spooled().len(), 1);
    assert!(server.is_alive());
}

/// Reads until the gateway ends the connection. `false` when it was still open after `limit`
/// (a hang detector set well past `header_timeout`, well short of Pingora's own 10 s / 60 s).
fn closed_within<S: std::io::Read>(stream: &mut S, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {
                if std::time::Instant::now() > deadline {
                    return false;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn stalled_handshakes_and_silent_http2_connections_are_closed_at_header_timeout() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let port = free_port();
    let listen =
        format!("  - addr: 127.0.0.1:{port}\n    tls: {{ cert: tls/a.pem, key: tls/a.key }}");
    let server = Server::start_in(dir, port, &listen, spool_sink(), "header_timeout: 2s\n");
    let limit = Duration::from_secs(8);
    let connect = || {
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(limit)).unwrap();
        sock
    };
    // Silent after the TCP handshake; and a ClientHello's first bytes, then silence.
    let mut silent = connect();
    let mut partial = connect();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // A finished TLS handshake with ALPN h2, then nothing; and the HTTP/2 preface and an empty
    // SETTINGS frame, then no HEADERS.
    let mut client = Client::new();
    client.alpn = vec![b"h2".to_vec()];
    let handshaken = |preface: &[u8]| {
        let conn = ClientConnection::new(
            Arc::new(client.config()),
            ServerName::try_from("a.test").unwrap(),
        )
        .unwrap();
        let mut tls = StreamOwned::new(conn, connect());
        tls.conn.complete_io(&mut tls.sock).unwrap();
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(preface).unwrap();
        tls.flush().unwrap();
        tls
    };
    let mut h2_idle = handshaken(b"");
    let mut h2_preface =
        handshaken(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00");
    assert!(closed_within(&mut silent, limit), "silent TCP peer");
    assert!(closed_within(&mut partial, limit), "partial ClientHello");
    assert!(
        closed_within(&mut h2_idle, limit),
        "TLS + ALPN h2, no preface"
    );
    assert!(
        closed_within(&mut h2_preface, limit),
        "HTTP/2 preface, no HEADERS"
    );
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    let closed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_header_timeouts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(closed >= 4.0, "{metrics}");

    // A client that sends its request in time is served on HTTP/1.1 and on HTTP/2.
    let mut client = Client::new();
    client.ca = Some(ca.pem.clone());
    let (_, response) = client.post(port, "a.test", "in-time-1").unwrap();
    assert_eq!(response.status, 202, "{:?}", response.json());
    let body = "{\"id\":\"in-time-2\"}";
    std::fs::write(server.dir.path().join("ca.pem"), &ca.pem).unwrap();
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "--http2", "--cacert"])
        .arg(server.dir.path().join("ca.pem"))
        .args(["--resolve", &format!("a.test:{port}:127.0.0.1")])
        .args([
            "-w",
            "\n%{http_version} %{http_code}",
            "--data-binary",
            body,
        ]);
    for (k, v) in sign(GITHUB, body.as_bytes(), now(), "in-time-2") {
        curl.args(["-H", &format!("{k}: {v}")]);
    }
    curl.arg(format!("https://a.test:{port}/webhook/github"));
    let out = curl.output().expect("curl runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.trim_end().ends_with("2 202"), "{stdout}");
    assert_eq!(server.spooled().len(), 2);
}

#[test]
fn tls_paths_expand_variables_like_credentials_directory() {
    let ca = Ca::new("test ca");
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    write_pair(dir.path(), "a", &ca.leaf(&["a.test"], false));
    let conf = dir.path().join("portcullis.yaml");
    std::fs::write(
        &conf,
        "listen:\n  - addr: 127.0.0.1:8443\n    tls: { cert: \"${PT_CREDS}/a.pem\", key: \"${PT_CREDS}/a.key\" }\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\n",
    )
    .unwrap();
    let check = |creds: Option<&Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(["check", "-c"]).arg(&conf).env_remove("PT_CREDS");
        if let Some(dir) = creds {
            cmd.env("PT_CREDS", dir);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(Some(&dir.path().join("tls")));
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = check(None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("names ${PT_CREDS}, which is not set"), "{out}");
}
