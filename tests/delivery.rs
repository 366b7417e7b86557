//! Exactly-once hand-off under concurrency, whole bodies through the http sink, and logs that
//! never carry a secret.

mod common;

use std::sync::{Arc, Barrier};

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"topsecret-value-123\"]\n";

#[test]
fn forty_concurrent_copies_of_one_event_give_exactly_one_202_and_one_spool_line() {
    let server = Server::start(&[("g.yaml", GITHUB)], spool_sink());
    let body = br#"{"action":"opened","copy":true}"#.to_vec();
    let headers = sign(GITHUB, &body, now(), "delivery-40");
    let barrier = Arc::new(Barrier::new(40));
    let threads: Vec<_> = (0..40)
        .map(|_| {
            let (headers, body, barrier, port) =
                (headers.clone(), body.clone(), barrier.clone(), server.port);
            std::thread::spawn(move || {
                barrier.wait();
                post(port, "/webhook/github", &headers, &body)
            })
        })
        .collect();
    let responses: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let accepted = responses.iter().filter(|r| r.status == 202).count();
    assert_eq!(
        accepted,
        1,
        "statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert!(responses
        .iter()
        .all(|r| [202, 200, 409].contains(&r.status)));
    let lines = server.spooled();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event_id"], "delivery-40");
}

#[test]
fn many_distinct_events_concurrently_all_land_once() {
    let server = Server::start(&[("g.yaml", GITHUB)], spool_sink());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let port = server.port;
            std::thread::spawn(move || {
                for i in 0..25 {
                    let body = format!("{{\"t\":{t},\"i\":{i}}}").into_bytes();
                    let r = post(
                        port,
                        "/webhook/github",
                        &sign(GITHUB, &body, now(), &format!("e-{t}-{i}")),
                        &body,
                    );
                    assert_eq!(r.status, 202);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut ids = server.spooled_ids();
    ids.dedup();
    assert_eq!(ids.len(), 200);
}

#[test]
fn a_one_mebibyte_body_reaches_the_http_upstream_byte_for_byte_with_the_envelope() {
    let upstream = Upstream::start(200);
    let filter = "name: big\npreset: github\nsecrets: [\"s\"]\nmax_body: 2MiB\nsink: app\nforward_headers: [content-type, x-github-event]\n";
    let server = Server::start(&[("big.yaml", filter)], &http_sink(upstream.port));
    // Not valid UTF-8 and not JSON: the bytes must pass untouched.
    let body: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut headers = sign(filter, &body, now(), "big-1");
    headers.push(("X-GitHub-Event".into(), "push".into()));
    let r = server.post("/webhook/big", &headers, &body);
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    let received = upstream.received.lock().unwrap();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].body == body,
        "upstream body differs from what was sent"
    );
    let get = |name: &str| {
        received[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(get("x-portcullis-provider").as_deref(), Some("big"));
    assert_eq!(get("x-portcullis-event-id").as_deref(), Some("big-1"));
    assert_eq!(get("x-portcullis-verified").as_deref(), Some("true"));
    assert_eq!(get("x-portcullis-source-ip").as_deref(), Some("127.0.0.1"));
    assert!(get("x-portcullis-received-at").is_some());
    assert_eq!(get("x-github-event").as_deref(), Some("push"));
    assert_eq!(
        get("x-hub-signature-256"),
        None,
        "signature headers are not forwarded"
    );
}

#[test]
fn the_http_sink_reuses_upstream_connections_across_requests() {
    let upstream = Upstream::start(200);
    let filter = "name: hook\npreset: none\nallow: [\"127.0.0.1\"]\nsink: app\n";
    let server = Server::start(&[("h.yaml", filter)], &http_sink(upstream.port));
    for i in 0..20 {
        assert_eq!(
            server
                .post(
                    "/webhook/hook",
                    &h(&[]),
                    format!("{{\"i\":{i}}}").as_bytes()
                )
                .status,
            202
        );
    }
    assert_eq!(upstream.count(), 20);
    let connections = upstream
        .connections
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        connections <= 2,
        "20 sequential publishes opened {connections} upstream connections"
    );
}

#[test]
fn logs_never_contain_a_secret_or_a_signature() {
    let server = Server::start(&[("g.yaml", GITHUB)], spool_sink());
    let body = br#"{"action":"opened"}"#;
    let headers = sign(GITHUB, body, now(), "log-1");
    let signature = headers
        .iter()
        .find(|(k, _)| k == "x-hub-signature-256")
        .unwrap()
        .1
        .clone();
    server.post("/webhook/github", &headers, body);
    server.post("/webhook/github", &headers, br#"{"action":"tampered"}"#);
    server.post(
        "/webhook/github",
        &h(&[("X-Hub-Signature-256", "sha256=deadbeef")]),
        body,
    );
    let wrong = sign(
        "name: github\npreset: github\nsecrets: [\"other\"]\n",
        body,
        now(),
        "log-2",
    );
    server.post("/webhook/github", &wrong, body);
    let log = server.log();
    assert!(
        log.contains("portcullis::access"),
        "the access log is on by default:\n{log}"
    );
    assert!(
        !log.contains("topsecret-value-123"),
        "secret in logs:\n{log}"
    );
    let hex = signature.trim_start_matches("sha256=");
    assert!(!log.contains(hex), "signature in logs:\n{log}");
    assert!(!log.contains("deadbeef"), "received signature in logs");
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    assert!(!metrics.contains("topsecret") && !metrics.contains(hex));
}

#[test]
fn json_logs_carry_request_id_provider_outcome_reason_and_latency() {
    let server = Server::start_args(&[("github.yaml", GITHUB)], spool_sink(), &["--json-logs"]);
    let body = br#"{"action":"opened"}"#;
    let ok = server.post(
        "/webhook/github",
        &sign(GITHUB, body, now(), "json-1"),
        body,
    );
    let bad = server.post(
        "/webhook/github",
        &h(&[("X-Hub-Signature-256", "sha256=00")]),
        body,
    );
    assert_eq!((ok.status, bad.status), (202, 401));
    // The access line is written after the response: wait (bounded) for both.
    for _ in 0..200 {
        if server.log().matches("portcullis::access").count() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let log = server.log();
    let access: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .filter(|v| v["target"] == "portcullis::access")
        .collect();
    assert_eq!(access.len(), 2, "{log}");
    // Each request writes its line after its response, on its own connection: the two lines
    // may come in either order. The response's X-Request-Id names its line.
    let line_of = |response: &Response| {
        access
            .iter()
            .find(|entry| entry["request_id"].as_str() == response.header("x-request-id"))
            .unwrap_or_else(|| {
                panic!(
                    "no access line names {:?}: {log}",
                    response.header("x-request-id")
                )
            })
    };
    let (accepted, rejected) = (line_of(&ok), line_of(&bad));
    for entry in [accepted, rejected] {
        assert_eq!(entry["provider"], "github");
        assert!(entry["latency_ms"].as_f64().is_some());
    }
    assert_eq!(accepted["outcome"], "accepted");
    assert_eq!(rejected["outcome"], "rejected");
    assert_eq!(rejected["reason"], "invalid_signature");
}

#[test]
fn no_access_log_turns_the_request_lines_off() {
    let server = Server::start_args(
        &[("github.yaml", GITHUB)],
        spool_sink(),
        &["--no-access-log"],
    );
    let body = br#"{"action":"opened"}"#;
    let ok = server.post(
        "/webhook/github",
        &sign(GITHUB, body, now(), "quiet-1"),
        body,
    );
    assert_eq!(ok.status, 202);
    // A line would follow the response within microseconds; give it ample time to show.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!server.log().contains("portcullis::access"));
}

/// A rustls server for 127.0.0.1 whose certificate `ca` signed and that demands a client
/// certificate signed by `ca` too.
fn mtls_server(ca: &common::certs::Ca) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let (cert, key, der) = ca.leaf(&["127.0.0.1"], false);
    drop(cert);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![der.into()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    std::sync::Arc::new(config)
}

#[test]
fn the_http_sink_speaks_mtls_to_a_service_of_a_private_ca_with_a_token_from_env() {
    use common::receiver::{Receiver, Reply};
    let ca = common::certs::Ca::new("http sink ca");
    let rx = Receiver::start_tls(mtls_server(&ca), |_| Reply::Status(200));
    let (client_cert, client_key, _) = ca.leaf(&["portcullis"], true);
    let other = common::certs::Ca::new("another ca");
    let url = format!("https://127.0.0.1:{}/ingest", rx.port);
    let sink = |name: &str, tls: &str| {
        format!("  {name}: {{ type: http, url: \"{url}\", timeout: 3s, headers: {{ Authorization: \"env:APP_AUTHORIZATION\", X-Tenant: acme }}, tls: {tls} }}")
    };
    let sinks = [
        sink("good", "{ ca: ca.pem, cert: client.pem, key: client.key }"),
        sink(
            "wrong_ca",
            "{ ca: other.pem, cert: client.pem, key: client.key }",
        ),
        sink("no_cert", "{ ca: ca.pem }"),
    ]
    .join("\n");
    let names = ["good", "wrong_ca", "no_cert"];
    let filters = filter_per_sink(&names, "h");
    let filter_refs: Vec<(&str, &str)> = filters
        .iter()
        .map(|(f, y)| (f.as_str(), y.as_str()))
        .collect();
    let server = Server::start_env(
        &filter_refs,
        &sinks,
        // At trace, Pingora's client would log each request head it writes, token included.
        &[
            ("APP_AUTHORIZATION", "Bearer tok-5521-secret"),
            ("RUST_LOG", "trace"),
        ],
        &[
            ("ca.pem", &ca.pem),
            ("other.pem", &other.pem),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
        ],
    );
    post_each_expecting(&server, &names, &filters, "good");
    let got = rx.wait_for(1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(rx.count(), 1, "only the good sink got through");
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer tok-5521-secret")
    );
    assert_eq!(got[0].header("x-tenant"), Some("acme"));
    assert_eq!(got[0].header("x-portcullis-event-id"), Some("good-1"));
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("sink=\"wrong_ca\"") && l.contains("UnknownIssuer")),
        "a wrong CA is named:\n{log}"
    );
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains("tok-5521")).collect();
    assert!(
        leaks.is_empty(),
        "the token in the log:\n{}",
        leaks.join("\n")
    );
}
