//! One test per row of the response table in DESIGN.md, through the real server.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"s3cret\"]\ncontent_types: [application/json]\nrequire_fields: [action]\nmax_body: 1KiB\nbody_timeout: 1s\n";
const WSS: &str = "name: wss\npreset: hmac\nsecrets: [\"k\"]\nsignature: { header: X-WSS-Signature, algorithm: sha256, encoding: hex, signed: \"{timestamp}{body}\" }\ntimestamp: { header: X-WSS-Timestamp, format: unix }\ntolerance: 5m\n";

fn github_server() -> Server {
    Server::start(&[("github.yaml", GITHUB), ("wss.yaml", WSS)], spool_sink())
}

fn signed(body: &[u8], id: &str) -> Vec<(String, String)> {
    sign(GITHUB, body, now(), id)
}

#[test]
fn accepted_is_202_and_the_event_is_in_the_spool_then_a_copy_is_200_duplicate() {
    let server = github_server();
    let body = br#"{"action":"opened","n":1}"#;
    let r = server.post("/webhook/github", &signed(body, "d-1"), body);
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "accepted");
    assert_eq!(r.json()["provider"], "github");
    assert_eq!(r.json()["event_id"], "d-1");
    let again = server.post("/webhook/github", &signed(body, "d-1"), body);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "duplicate");
    let lines = server.spooled();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["body"].as_str().unwrap().as_bytes(), body);
    assert_eq!(lines[0]["event_id"], "d-1");
    assert_eq!(lines[0]["verified"], true);
    assert_eq!(lines[0]["source_ip"], "127.0.0.1");
    assert!(
        lines[0]["headers"].get("x-hub-signature-256").is_none(),
        "signature headers are not forwarded"
    );
}

#[test]
fn an_unknown_path_is_404_unknown_provider() {
    let server = github_server();
    let r = server.post("/webhook/gitlab", &h(&[]), b"{}");
    assert_eq!((r.status, r.reason().as_str()), (404, "unknown_provider"));
    let r = server.post("/", &h(&[]), b"{}");
    assert_eq!(r.status, 404);
}

#[test]
fn a_get_is_405_method_not_allowed_with_allow_post() {
    let server = github_server();
    let r = request(
        server.port,
        b"GET /webhook/github HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!((r.status, r.reason().as_str()), (405, "method_not_allowed"));
    assert_eq!(r.header("allow"), Some("POST"));
}

#[test]
fn a_source_outside_the_allowlist_is_403_ip_not_allowed() {
    let allowed = "name: internal\npreset: none\nallow: [\"10.0.0.0/8\", \"fd00::/8\"]\n";
    let open = "name: local\npreset: none\nallow: [\"127.0.0.1\"]\n";
    let server = Server::start(&[("a.yaml", allowed), ("b.yaml", open)], spool_sink());
    let r = server.post("/webhook/internal", &h(&[]), b"{}");
    assert_eq!((r.status, r.reason().as_str()), (403, "ip_not_allowed"));
    // A forged X-Forwarded-For from an untrusted peer changes nothing.
    let r = server.post(
        "/webhook/internal",
        &h(&[("X-Forwarded-For", "10.1.2.3")]),
        b"{}",
    );
    assert_eq!(r.status, 403);
    assert_eq!(server.post("/webhook/local", &h(&[]), b"{}").status, 202);
}

#[test]
fn over_the_per_ip_rate_is_429_rate_limited_with_retry_after() {
    let limited = "name: limited\npreset: none\nallow: [\"127.0.0.1\"]\nrate_limit: { per_ip_per_second: 1 }\ndedup: off\n";
    let server = Server::start(&[("l.yaml", limited)], spool_sink());
    // 20 requests at 1/s from one source: unless every request took over a second, some are
    // over the limit; no assumption on how many.
    let responses: Vec<Response> = (0..20)
        .map(|i| {
            server.post(
                "/webhook/limited",
                &h(&[]),
                format!("{{\"i\":{i}}}").as_bytes(),
            )
        })
        .collect();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(!limited.is_empty(), "no request was limited");
    assert_eq!(limited[0].reason(), "rate_limited");
    assert_eq!(limited[0].header("retry-after"), Some("1"));
    assert!(responses.iter().all(|r| r.status == 202 || r.status == 429));
    assert_eq!(
        server.spooled().len(),
        responses.iter().filter(|r| r.status == 202).count()
    );
}

#[test]
fn a_declared_length_over_max_body_is_413_before_the_body_is_sent() {
    let server = github_server();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = String::from("POST /webhook/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n");
    for (k, v) in signed(b"{}", "big") {
        if k != "content-type" {
            head += &format!("{k}: {v}\r\n");
        }
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    // No body sent: the answer must come from the head alone.
    let r = read_response(&mut stream).unwrap();
    assert_eq!((r.status, r.reason().as_str()), (413, "payload_too_large"));
}

#[test]
fn a_chunked_body_growing_past_max_body_is_413() {
    let server = github_server();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = "POST /webhook/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nX-Hub-Signature-256: sha256=00\r\n\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let chunk = format!("200\r\n{}\r\n", "a".repeat(0x200));
    for _ in 0..3 {
        if stream.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let r = read_response(&mut stream).unwrap();
    assert_eq!((r.status, r.reason().as_str()), (413, "payload_too_large"));
    assert!(server.spooled().is_empty());
}

#[test]
fn a_broken_chunked_body_is_400_invalid_body() {
    let server = github_server();
    let raw = "POST /webhook/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz-not-hex\r\n{}\r\n0\r\n\r\n";
    let r = request(server.port, raw.as_bytes());
    assert_eq!((r.status, r.reason().as_str()), (400, "invalid_body"));
    assert!(server.spooled().is_empty());
}

#[test]
fn expect_100_continue_gets_a_continue_then_the_answer() {
    let server = github_server();
    let body = br#"{"action":"continue"}"#;
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("POST /webhook/github HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in signed(body, "cont-1") {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes()).unwrap();
    let interim = read_response(&mut stream).unwrap();
    assert_eq!(interim.status, 100);
    stream.write_all(body).unwrap();
    let r = read_response(&mut stream).unwrap();
    assert_eq!(r.status, 202);
}

#[test]
fn a_wrong_content_type_is_415() {
    let server = github_server();
    let body = br#"{"action":"x"}"#;
    let mut headers: Vec<(String, String)> = signed(body, "ct")
        .into_iter()
        .filter(|(k, _)| k != "content-type")
        .collect();
    headers.push(("Content-Type".into(), "text/plain".into()));
    let r = server.post("/webhook/github", &headers, body);
    assert_eq!(
        (r.status, r.reason().as_str()),
        (415, "unsupported_content_type")
    );
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_408_body_timeout() {
    let server = github_server();
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = String::from("POST /webhook/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n");
    for (k, v) in signed(b"{}", "slow") {
        if k != "content-type" {
            head += &format!("{k}: {v}\r\n");
        }
    }
    head += "\r\n{\"action\":";
    stream.write_all(head.as_bytes()).unwrap();
    let r = read_response(&mut stream).unwrap();
    assert_eq!((r.status, r.reason().as_str()), (408, "body_timeout"));
}

#[test]
fn signature_and_timestamp_failures_are_401_with_their_reason() {
    let server = github_server();
    let body = br#"{"action":"opened"}"#;
    let r = server.post(
        "/webhook/github",
        &h(&[("content-type", "application/json")]),
        body,
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "missing_signature"));
    let r = server.post(
        "/webhook/github",
        &signed(br#"{"action":"closed"}"#, "x"),
        body,
    );
    assert_eq!((r.status, r.reason().as_str()), (401, "invalid_signature"));

    let b = b"{}";
    let ts_only = sign(WSS, b, now(), "x");
    let no_ts: Vec<_> = ts_only
        .iter()
        .filter(|(k, _)| k != "x-wss-timestamp")
        .cloned()
        .collect();
    let r = server.post("/webhook/wss", &no_ts, b);
    assert_eq!((r.status, r.reason().as_str()), (401, "missing_timestamp"));
    let stale = sign(WSS, b, now() - 3600, "x");
    let r = server.post("/webhook/wss", &stale, b);
    assert_eq!((r.status, r.reason().as_str()), (401, "stale_timestamp"));
    let future = sign(WSS, b, now() + 3600, "x");
    assert_eq!(
        server.post("/webhook/wss", &future, b).reason(),
        "stale_timestamp"
    );
    assert_eq!(
        server
            .post("/webhook/wss", &sign(WSS, b, now(), "x"), b)
            .status,
        202
    );
    assert!(
        server.spooled().len() == 1,
        "only the valid request reached the sink"
    );
}

#[test]
fn payload_rule_failures_are_400() {
    let server = github_server();
    let not_json = b"{\"action\": nope";
    let r = server.post("/webhook/github", &signed(not_json, "j"), not_json);
    assert_eq!((r.status, r.reason().as_str()), (400, "invalid_json"));
    let no_action = br#"{"zen":"yes"}"#;
    let r = server.post("/webhook/github", &signed(no_action, "f"), no_action);
    assert_eq!((r.status, r.reason().as_str()), (400, "missing_field"));
    // The answer names the field, never a value from the body.
    assert_eq!(r.json()["field"], "action");
    assert!(!String::from_utf8_lossy(&r.body).contains("yes"));
}

const HOOK: &str =
    "name: hook\npreset: none\nallow: [\"127.0.0.1\"]\nevent_id: { header: X-Id }\nsink: app\n";

#[test]
fn a_copy_arriving_while_the_first_is_published_is_409_in_progress() {
    let upstream = Upstream::start(200);
    upstream.hold();
    let server = Server::start(&[("hook.yaml", HOOK)], &http_sink(upstream.port));
    let port = server.port;
    let first =
        std::thread::spawn(move || post(port, "/webhook/hook", &h(&[("X-Id", "same")]), b"{}"));
    while upstream.count() == 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let copy = server.post("/webhook/hook", &h(&[("X-Id", "same")]), b"{}");
    assert_eq!((copy.status, copy.reason().as_str()), (409, "in_progress"));
    assert_eq!(copy.header("retry-after"), Some("1"));
    upstream.release();
    assert_eq!(first.join().unwrap().status, 202);
    assert_eq!(
        server
            .post("/webhook/hook", &h(&[("X-Id", "same")]), b"{}")
            .status,
        200
    );
    assert_eq!(upstream.count(), 1);
}

#[test]
fn a_non_2xx_upstream_answer_is_502_upstream_error_and_the_retry_passes() {
    let upstream = Upstream::start(500);
    let server = Server::start(&[("hook.yaml", HOOK)], &http_sink(upstream.port));
    let r = server.post("/webhook/hook", &h(&[("X-Id", "e1")]), b"{}");
    assert_eq!((r.status, r.reason().as_str()), (502, "upstream_error"));
    *upstream.status.lock().unwrap() = 204;
    assert_eq!(
        server
            .post("/webhook/hook", &h(&[("X-Id", "e1")]), b"{}")
            .status,
        202
    );
}

#[test]
fn an_unreachable_sink_is_503_with_retry_after_and_the_retry_passes_once_it_is_back() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let server = Server::start(&[("hook.yaml", HOOK)], &http_sink(port));
    let r = server.post("/webhook/hook", &h(&[("X-Id", "r1")]), b"{}");
    assert_eq!((r.status, r.reason().as_str()), (503, "sink_unavailable"));
    assert!(r.header("retry-after").is_some());
    assert_eq!(server.admin_get("/readyz").status, 503);
    let upstream = Upstream::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), 200);
    let r = server.post("/webhook/hook", &h(&[("X-Id", "r1")]), b"{}");
    assert_eq!(
        r.status, 202,
        "the dedup reservation was released, so the retry passes"
    );
    assert_eq!(upstream.count(), 1);
    assert_eq!(server.admin_get("/readyz").status, 200);
}

#[test]
fn every_response_body_is_json_and_metrics_count_outcomes_and_reasons() {
    let server = github_server();
    let body = br#"{"action":"opened"}"#;
    server.post("/webhook/github", &signed(body, "m1"), body);
    server.post("/webhook/github", &signed(body, "m1"), body);
    server.post(
        "/webhook/github",
        &h(&[("content-type", "application/json")]),
        body,
    );
    server.post("/nowhere", &h(&[]), b"");
    let mut raw = Vec::new();
    let mut s = TcpStream::connect(("127.0.0.1", server.admin)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    for needle in [
        "portcullis_requests_total{outcome=\"accepted\",provider=\"github\"} 1",
        "portcullis_requests_total{outcome=\"duplicate\",provider=\"github\"} 1",
        "portcullis_rejections_total{provider=\"github\",reason=\"missing_signature\"} 1",
        "portcullis_rejections_total{provider=\"unknown\",reason=\"unknown_provider\"} 1",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_sink_publish_duration_seconds_bucket{sink=\"spool\"",
        "portcullis_build_info{version=",
        "portcullis_dedup_entries",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

const SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["ref", "head_commit"],
  "properties": {
    "ref": { "type": "string" },
    "head_commit": {
      "type": "object",
      "properties": { "id": { "type": "string", "pattern": "^[0-9a-f]{40}$" } }
    }
  }
}"#;

fn push_filter(mode: &str) -> String {
    format!("name: push\npreset: github\nsecrets: [\"s3cret\"]\nschema: schemas/push.json\nmode: {mode}\n")
}

fn schema_server(mode: &str) -> Server {
    let filter = push_filter(mode);
    let dir = Server::prepare(&[("push.yaml", &filter)]);
    write(dir.path(), "filters/schemas/push.json", SCHEMA);
    let port = free_port();
    Server::start_in(
        dir,
        port,
        &format!("  - addr: 127.0.0.1:{port}"),
        spool_sink(),
        "",
    )
}

#[test]
fn a_body_against_its_schema_is_400_schema_violation_naming_the_place_never_the_value() {
    let server = schema_server("enforce");
    // (Signed as the filter without its schema: the signature does not depend on it.)
    let filter = "name: push\npreset: github\nsecrets: [\"s3cret\"]\n";
    let good = br#"{"ref":"refs/heads/main","head_commit":{"id":"0123456789abcdef0123456789abcdef01234567"}}"#;
    let r = server.post("/webhook/push", &sign(filter, good, now(), "s-1"), good);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));

    let bad = br#"{"ref":"refs/heads/main","head_commit":{"id":"value-not-to-leak"}}"#;
    let r = server.post("/webhook/push", &sign(filter, bad, now(), "s-2"), bad);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "schema_violation", "pointer": "/head_commit/id", "keyword": "pattern"})
    );
    let missing = br#"{"ref":"refs/heads/main"}"#;
    let r = server.post(
        "/webhook/push",
        &sign(filter, missing, now(), "s-3"),
        missing,
    );
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "schema_violation", "pointer": "", "keyword": "required"})
    );
    // The signature is checked first: a forged body is never judged by its contents.
    let mut forged = sign(filter, good, now(), "s-4");
    for (k, v) in forged.iter_mut() {
        if k.eq_ignore_ascii_case("x-hub-signature-256") {
            *v = format!("sha256={}", "0".repeat(64));
        }
    }
    assert_eq!(
        server.post("/webhook/push", &forged, bad).reason(),
        "invalid_signature"
    );
    let r = server.post(
        "/webhook/push",
        &sign(filter, b"not json", now(), "s-5"),
        b"not json",
    );
    assert_eq!((r.status, r.reason()), (400, "invalid_json".into()));

    assert_eq!(server.spooled_ids(), ["s-1"]);
    assert!(
        !server.log().contains("value-not-to-leak"),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("schema_pointer"),
        "the access log says where"
    );
}

#[test]
fn in_shadow_mode_a_schema_violation_is_recorded_and_the_event_forwarded() {
    let server = schema_server("shadow");
    let filter = "name: push\npreset: github\nsecrets: [\"s3cret\"]\n";
    let bad = br#"{"ref":7,"head_commit":{}}"#;
    let r = server.post("/webhook/push", &sign(filter, bad, now(), "sh-1"), bad);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let lines = server.spooled();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["verified"], false);
    assert_eq!(lines[0]["reason"], "schema_violation");
}
