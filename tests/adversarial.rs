//! Hostile and malformed input against the real binary. Every case pins the exact status and
//! reason (or, where Pingora's HTTP parser refuses the bytes before any filter sees them, its
//! 400 and a closed connection), then checks that the process still serves and that nothing
//! reached the sink that should not have.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"s3cret\"]\ncontent_types: [application/json]\nrequire_fields: [action]\nmax_body: 64KiB\nbody_timeout: 2s\n";
const SW: &str = "name: sw\npreset: standard-webhooks\nsecrets: [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\nbody_timeout: 2s\n";
const STRIPE: &str = "name: stripe\npreset: stripe\nsecrets: [\"whsec_stripe_test\"]\n";

/// Two seconds for a request head, so slow and idle clients are cut off within the test.
const SHORT_HEADER_TIMEOUT: &str = "header_timeout: 2s\n";

fn server() -> Server {
    Server::start_with(
        &[
            ("github.yaml", GITHUB),
            ("sw.yaml", SW),
            ("stripe.yaml", STRIPE),
        ],
        spool_sink(),
        SHORT_HEADER_TIMEOUT,
    )
}

/// The process is up, healthy, has answered no request with a 500 and still accepts events.
#[track_caller]
fn still_serving(server: &mut Server, id: &str) {
    assert!(server.is_alive(), "the gateway exited");
    assert_eq!(server.admin_get("/healthz").status, 200);
    let body = br#"{"action":"after"}"#;
    let r = server.post("/webhook/github", &sign(GITHUB, body, now(), id), body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("outcome=\"error\"") && !l.ends_with(" 0")),
        "an input error was counted as a gateway error:\n{metrics}"
    );
}

/// `headers` with `name` (any case) replaced by `value`.
fn with(headers: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut out = without(headers, name);
    out.push((name.to_owned(), value.to_owned()));
    out
}

/// `headers` without `name` (any case).
fn without(headers: &[(String, String)], name: &str) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

fn value_of<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// A POST whose head is given as raw bytes (so it can hold what `String` cannot).
fn raw_post(port: u16, path: &str, head_lines: &[u8], body: &[u8]) -> Response {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(head_lines);
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(body);
    request(port, &raw)
}

/// The head of a signed keep-alive POST of `body` to the github filter (the body not included).
fn keep_alive_head(body: &[u8], id: &str) -> Vec<u8> {
    [
        format!(
            "POST /webhook/github HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes(),
        head_lines(&sign(GITHUB, body, now(), id)),
        b"\r\n".to_vec(),
    ]
    .concat()
}

fn head_lines(headers: &[(String, String)]) -> Vec<u8> {
    headers
        .iter()
        .flat_map(|(k, v)| format!("{k}: {v}\r\n").into_bytes())
        .collect()
}

fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn responses_in(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw).matches("HTTP/1.1 ").count()
}

#[test]
fn replays_are_a_duplicate_or_a_rejection_never_a_second_event() {
    let mut server = server();
    let body = br#"{"type":"invoice.paid","n":1}"#;
    let t = now();
    let original = sign(SW, body, t, "msg_1");
    expect_accepted(&server.post("/webhook/sw", &original, body));

    let r = server.post("/webhook/sw", &original, body);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("duplicate"))
    );
    // The sender's own retry: same id, a new timestamp, signed again.
    let retry = sign(SW, body, t + 1, "msg_1");
    assert_eq!(server.post("/webhook/sw", &retry, body).status, 200);

    // A captured signature cannot be moved to another timestamp or id.
    let moved = with(&original, "webhook-timestamp", &(t + 1).to_string());
    expect(
        &server.post("/webhook/sw", &moved, body),
        401,
        "invalid_signature",
    );
    let renamed = with(&original, "webhook-id", "msg_2");
    expect(
        &server.post("/webhook/sw", &renamed, body),
        401,
        "invalid_signature",
    );

    // Genuinely signed, but an hour old or an hour ahead: outside the window both ways.
    let old = sign(SW, body, t - 3600, "msg_3");
    expect(
        &server.post("/webhook/sw", &old, body),
        401,
        "stale_timestamp",
    );
    let future = sign(SW, body, t + 3600, "msg_4");
    expect(
        &server.post("/webhook/sw", &future, body),
        401,
        "stale_timestamp",
    );
    for garbage in ["99999999999999999999", "-1", "1e9", "0x10", "now"] {
        let bad = with(&original, "webhook-timestamp", garbage);
        expect(
            &server.post("/webhook/sw", &bad, body),
            401,
            "missing_timestamp",
        );
    }

    // Stripe: the captured `v1=` under a new `t=`.
    let stripe = sign(STRIPE, body, t, "evt_1");
    let header = value_of(&stripe, "stripe-signature");
    let v1 = header.split(',').find(|p| p.starts_with("v1=")).unwrap();
    let replayed = with(&stripe, "stripe-signature", &format!("t={},{v1}", t + 5));
    expect(
        &server.post("/webhook/stripe", &replayed, body),
        401,
        "invalid_signature",
    );

    assert_eq!(server.spooled().len(), 1);
    still_serving(&mut server, "replay-after");
}

#[track_caller]
fn expect_accepted(r: &Response) {
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn signatures_of_the_wrong_length_encoding_case_or_count_are_401() {
    let mut server = server();
    let body = br#"{"action":"opened"}"#;
    let signed = sign(GITHUB, body, now(), "sig-1");
    let good = value_of(&signed, "x-hub-signature-256").to_owned();
    let hex = good.strip_prefix("sha256=").unwrap();
    let mac = hex::decode(hex).unwrap();
    let as_base64 = base64::engine::general_purpose::STANDARD.encode(&mac);
    let cases: Vec<(String, &str)> = vec![
        (format!("sha256={}", &hex[..63]), "invalid_signature"),
        (format!("sha256={}", &hex[..62]), "invalid_signature"),
        (format!("sha256={hex}00"), "invalid_signature"),
        (format!("sha256={as_base64}"), "invalid_signature"),
        (format!("SHA256={hex}"), "invalid_signature"),
        (format!("sha1={hex}"), "invalid_signature"),
        (hex.to_owned(), "invalid_signature"),
        ("sha256=".into(), "invalid_signature"),
        (format!("sha256={}", "0".repeat(8000)), "invalid_signature"),
        (" ".into(), "missing_signature"),
    ];
    for (value, reason) in &cases {
        let headers = with(&signed, "x-hub-signature-256", value);
        expect(&server.post("/webhook/github", &headers, body), 401, reason);
    }
    // Bytes that are not text at all.
    let binary = [&b"X-Hub-Signature-256: sha256=\xff\xfe"[..], b"\r\n"].concat();
    let headers = without(&signed, "x-hub-signature-256");
    let r = raw_post(
        server.port,
        "/webhook/github",
        &[head_lines(&headers), binary].concat(),
        body,
    );
    expect(&r, 401, "invalid_signature");

    // The signature header twice, in either order or twice the good one: which copy would a
    // hop behind us believe? Refused.
    let garbage = format!("sha256={}", "0".repeat(64));
    for pair in [[&good, &garbage], [&garbage, &good], [&good, &good]] {
        let mut headers = without(&signed, "x-hub-signature-256");
        for value in pair {
            headers.push(("X-Hub-Signature-256".into(), value.to_string()));
        }
        expect(
            &server.post("/webhook/github", &headers, body),
            401,
            "invalid_signature",
        );
    }
    assert!(server.spooled().is_empty());

    // Hex digits in upper case are the same MAC bytes: accepted, as GitHub's own is lower.
    let upper = sign(GITHUB, body, now(), "sig-upper");
    let shouted = format!(
        "sha256={}",
        value_of(&upper, "x-hub-signature-256")[7..].to_ascii_uppercase()
    );
    expect_accepted(&server.post(
        "/webhook/github",
        &with(&upper, "x-hub-signature-256", &shouted),
        body,
    ));
    // GitHub sends the legacy SHA-1 header beside the SHA-256 one; the preset reads its own.
    let mut both = sign(GITHUB, body, now(), "sig-both");
    both.push(("X-Hub-Signature".into(), "sha1=not-even-hex".into()));
    expect_accepted(&server.post("/webhook/github", &both, body));
    assert_eq!(server.spooled().len(), 2);
    still_serving(&mut server, "sig-after");
}

#[test]
fn header_values_with_cr_lf_or_nul_are_refused_by_the_parser_before_any_filter() {
    let mut server = server();
    let body = br#"{"action":"opened"}"#;
    let signed = head_lines(&sign(GITHUB, body, now(), "crlf-1"));
    for bad in [
        &b"X-GitHub-Delivery: a\x00b\r\n"[..],
        b"X-GitHub-Delivery: a\rb\r\n",
        b"X-GitHub-Delivery: a\nb\r\n",
        b"X-Evil\x00: 1\r\n",
        b"X Evil: 1\r\n",
        b"no colon at all\r\n",
        b": empty name\r\n",
    ] {
        let mut raw = format!(
            "POST /webhook/github HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&signed);
        raw.extend_from_slice(bad);
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(body);
        let answer = exchange_to_close(server.port, &raw);
        assert_eq!(
            status_of(&answer),
            400,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(
            responses_in(&answer),
            1,
            "one answer, then the connection is closed"
        );
    }
    assert!(server.spooled().is_empty());

    // Bytes beyond ASCII (obs-text) pass the parser but are never an id: the body's hash is.
    let headers = without(&sign(GITHUB, body, now(), "unused"), "x-github-delivery");
    let r = raw_post(
        server.port,
        "/webhook/github",
        &[
            head_lines(&headers),
            b"X-GitHub-Delivery: caf\xe9\r\n".to_vec(),
        ]
        .concat(),
        body,
    );
    expect_accepted(&r);
    assert!(r.json()["event_id"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    still_serving(&mut server, "crlf-after");
}

#[test]
fn huge_or_control_character_event_ids_never_reach_a_header_or_key_raw() {
    let upstream = Upstream::start(200);
    let open = "name: open\npreset: none\nevent_id: { json: /id }\nevent_type: { json: /type }\n";
    let mut server = Server::start_with(
        &[("open.yaml", open), ("github.yaml", GITHUB)],
        &http_sink(upstream.port),
        SHORT_HEADER_TIMEOUT,
    );
    let ids = [
        "a\r\nX-Injected: 1".to_owned(),
        "nul\u{0}byte".to_owned(),
        "x".repeat(10_000),
        "tab\there".to_owned(),
        "ünïcode".to_owned(),
    ];
    for (i, id) in ids.iter().enumerate() {
        let body = serde_json::to_vec(&serde_json::json!({
            "id": id, "type": format!("evil\r\ntype.{i}"), "n": i
        }))
        .unwrap();
        let r = server.post(
            "/webhook/open",
            &h(&[("content-type", "application/json")]),
            &body,
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let answered = r.json()["event_id"].as_str().unwrap().to_owned();
        assert!(
            answered.starts_with("sha256:") && answered.len() == 71,
            "{answered}"
        );
    }
    let received = upstream.received.lock().unwrap().clone();
    assert_eq!(received.len(), ids.len());
    for got in &received {
        let header = |name: &str| {
            got.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let id = header("x-portcullis-event-id").unwrap();
        assert!(id.starts_with("sha256:"), "{id}");
        let kind = header("x-portcullis-event-type").unwrap();
        assert!(
            kind.bytes().all(|b| b.is_ascii_graphic()),
            "event type made safe: {kind:?}"
        );
        assert!(header("x-injected").is_none());
    }
    // Empty and non-string ids are no id at all: a user-set `event_id` is required.
    for body in [
        &br#"{"id":""}"#[..],
        br#"{"id":null}"#,
        br#"{"id":{"a":1}}"#,
        b"[]",
    ] {
        let r = server.post("/webhook/open", &h(&[]), body);
        expect(&r, 400, "missing_field");
        assert_eq!(
            r.json()["field"],
            "/id",
            "the answer names the JSON pointer"
        );
    }
    assert_eq!(upstream.received.lock().unwrap().len(), ids.len());
    still_serving(&mut server, "ids-after");
}

#[test]
fn non_utf8_and_empty_bodies_are_verified_as_raw_bytes() {
    let mut server = server();
    // Payload rules need JSON: neither passes them.
    for (i, body) in [&b"\xff\xfe\x00binary"[..], b""].iter().enumerate() {
        let headers = sign(GITHUB, body, now(), &format!("raw-{i}"));
        expect(
            &server.post("/webhook/github", &headers, body),
            400,
            "invalid_json",
        );
    }
    assert!(server.spooled().is_empty());
    // Without payload rules they are events like any other, kept byte for byte.
    let binary = b"\xff\xfe\x00binary\r\n";
    let r = server.post("/webhook/sw", &sign(SW, binary, now(), "bin-1"), binary);
    expect_accepted(&r);
    let r = server.post("/webhook/sw", &sign(SW, b"", now(), "empty-1"), b"");
    expect_accepted(&r);
    let lines = server.spooled();
    assert_eq!(lines.len(), 2);
    let kept = base64::engine::general_purpose::STANDARD
        .decode(lines[0]["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(kept, binary);
    assert_eq!(lines[1]["body"], "");
    still_serving(&mut server, "bodies-after");
}

#[test]
fn json_bombs_are_400_within_the_size_limit() {
    let mut server = server();
    let deep_arrays = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    let deep_objects = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let wide = format!(
        "{{{}}}",
        (0..4000)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let nested_action = r#"{"a":{"action":"opened"}}"#.to_owned();
    let huge_number = r#"{"action":"x","n":1e999999}"#.to_owned();
    let unterminated = format!("{{\"action\":\"{}", "x".repeat(50_000));
    let cases: [(&String, &str); 6] = [
        (&deep_arrays, "invalid_json"),
        (&deep_objects, "invalid_json"),
        (&wide, "missing_field"),
        (&nested_action, "missing_field"),
        (&huge_number, "invalid_json"),
        (&unterminated, "invalid_json"),
    ];
    for (i, (body, reason)) in cases.iter().enumerate() {
        let headers = sign(GITHUB, body.as_bytes(), now(), &format!("bomb-{i}"));
        let r = server.post("/webhook/github", &headers, body.as_bytes());
        expect(&r, 400, reason);
    }
    // Repeated keys are still JSON; the field is present.
    let repeated = br#"{"action":"a","action":"b"}"#;
    expect_accepted(&server.post(
        "/webhook/github",
        &sign(GITHUB, repeated, now(), "bomb-repeated"),
        repeated,
    ));
    assert_eq!(server.spooled().len(), 1);
    still_serving(&mut server, "bomb-after");
}

#[test]
fn content_length_lies_in_either_direction_never_reach_the_sink() {
    let mut server = server();
    let body = br#"{"action":"opened"}"#;
    let signed = head_lines(&sign(GITHUB, body, now(), "cl-1"));
    let head = |extra: &str| {
        [
            b"POST /webhook/github HTTP/1.1\r\nHost: x\r\n".to_vec(),
            signed.clone(),
            extra.as_bytes().to_vec(),
            b"\r\n".to_vec(),
        ]
        .concat()
    };

    // More declared than sent, then silence: the body timeout answers and closes.
    let answer = exchange_to_close(
        server.port,
        &[
            head(&format!("Content-Length: {}\r\n", body.len() + 10)),
            body.to_vec(),
        ]
        .concat(),
    );
    assert_eq!(status_of(&answer), 408);
    assert!(String::from_utf8_lossy(&answer).contains("body_timeout"));

    // Less declared than sent: only the declared bytes are verified (and fail); the rest never
    // becomes a second request on that connection.
    let answer = exchange_to_close(
        server.port,
        &[head("Content-Length: 5\r\n"), body.to_vec()].concat(),
    );
    assert_eq!(status_of(&answer), 401);
    assert!(String::from_utf8_lossy(&answer).contains("invalid_signature"));
    assert_eq!(responses_in(&answer), 1);

    // Unframeable: two lengths, not a number, negative, an unknown transfer coding.
    for extra in [
        "Content-Length: 19\r\nContent-Length: 20\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 19\r\nTransfer-Encoding: gzip\r\n",
    ] {
        let answer = exchange_to_close(server.port, &[head(extra), body.to_vec()].concat());
        assert_eq!(status_of(&answer), 400, "{extra}");
        assert_eq!(responses_in(&answer), 1);
    }
    assert!(server.spooled().is_empty());

    // Content-Length beside chunked: the chunked framing wins (RFC 9112 §6.3), the signature is
    // checked over the de-chunked bytes, and the connection is closed after the answer.
    let chunked = format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        body.len(),
        std::str::from_utf8(body).unwrap()
    );
    let answer = exchange_to_close(
        server.port,
        &[
            head("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"),
            chunked.into_bytes(),
        ]
        .concat(),
    );
    assert_eq!(
        status_of(&answer),
        202,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(responses_in(&answer), 1);
    assert_eq!(server.spooled().len(), 1);
    still_serving(&mut server, "cl-after");
}

#[test]
fn chunked_bodies_past_the_limit_or_with_absurd_sizes_are_refused() {
    let mut server = server();
    let body = br#"{"action":"opened"}"#;
    let signed = head_lines(&sign(GITHUB, body, now(), "chunk-1"));
    let head = [
        b"POST /webhook/github HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n".to_vec(),
        signed,
        b"\r\n".to_vec(),
    ]
    .concat();

    // 100 KiB streamed in small chunks against a 64 KiB limit.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(&head).unwrap();
    for _ in 0..100 {
        let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
        if stream.write_all(chunk.as_bytes()).is_err() {
            break; // the gateway answered and closed: what we want
        }
    }
    let r = read_response(&mut stream).unwrap();
    expect(&r, 413, "payload_too_large");

    // A chunk size no integer holds.
    let answer = exchange_to_close(
        server.port,
        &[head.clone(), b"FFFFFFFFFFFFFFFFFFFF\r\nab\r\n".to_vec()].concat(),
    );
    assert_eq!(status_of(&answer), 400);
    assert!(String::from_utf8_lossy(&answer).contains("invalid_body"));
    // A 4 GiB chunk announced, a little sent: the body timeout, never a 4 GiB buffer.
    let answer = exchange_to_close(
        server.port,
        &[head.clone(), b"FFFFFFFF\r\nabc".to_vec()].concat(),
    );
    assert_eq!(status_of(&answer), 408);
    assert!(server.spooled().is_empty());
    still_serving(&mut server, "chunk-after");
}

#[test]
fn slow_loris_clients_are_cut_off_while_others_are_served() {
    let mut server = server();
    let port = server.port;
    // One trickles its head, another its body, a byte every 200 ms.
    let head_trickler = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let head = b"POST /webhook/github HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
        for byte in head.iter().chain(std::iter::repeat(&b'a')).take(300) {
            if stream.write_all(&[*byte]).is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
            let mut probe = [0u8; 1];
            stream.set_nonblocking(true).unwrap();
            let closed = matches!(stream.read(&mut probe), Ok(0));
            stream.set_nonblocking(false).unwrap();
            if closed {
                return true;
            }
        }
        false
    });
    let body_trickler = std::thread::spawn(move || {
        let body = br#"{"action":"opened","pad":"....................................."}"#;
        let head = keep_alive_head(body, "loris-body");
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.write_all(&head).unwrap();
        for byte in body {
            if stream.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        read_response(&mut stream).map(|r| (r.status, r.reason()))
    });
    // Meanwhile, everyone else is served.
    for i in 0..10 {
        let body = format!("{{\"action\":\"opened\",\"i\":{i}}}");
        let r = server.post(
            "/webhook/github",
            &sign(GITHUB, body.as_bytes(), now(), &format!("loris-ok-{i}")),
            body.as_bytes(),
        );
        expect_accepted(&r);
    }
    let cut_off = head_trickler.join().unwrap();
    assert!(cut_off, "a head trickled for a minute was never cut off");
    let (status, reason) = body_trickler
        .join()
        .unwrap()
        .expect("an answer to the body trickler");
    assert_eq!((status, reason.as_str()), (408, "body_timeout"));
    assert_eq!(server.spooled().len(), 10);
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    assert!(
        metrics.contains("portcullis_header_timeouts_total 1"),
        "{metrics}"
    );
    still_serving(&mut server, "loris-after");
}

#[test]
fn thousands_of_idle_connections_neither_block_others_nor_stay_open() {
    let mut server = server();
    const IDLE: usize = 2000;
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            if i % 2 == 1 {
                // Half of them start a head and stop.
                s.write_all(b"POST /webhook/github HTTP/1.1\r\nHost")
                    .unwrap();
            }
            s
        })
        .collect();
    // One more finishes a request with keep-alive, then idles too.
    let body = br#"{"action":"opened"}"#;
    let mut keepalive = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    keepalive
        .write_all(&[keep_alive_head(body, "idle-keepalive"), body.to_vec()].concat())
        .unwrap();
    keepalive
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    expect_accepted(&read_response(&mut keepalive).unwrap());
    idle.push(keepalive);

    // With all of them open, a new sender is served.
    let fresh = br#"{"action":"fresh"}"#;
    expect_accepted(&server.post(
        "/webhook/github",
        &sign(GITHUB, fresh, now(), "idle-fresh"),
        fresh,
    ));
    // And every idle one is closed by the gateway (EOF), none answered.
    for (i, mut stream) in idle.into_iter().enumerate() {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap_or(0);
        assert_eq!(
            n,
            0,
            "idle connection {i} got {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    let closed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_header_timeouts_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        closed,
        IDLE as u64 + 1,
        "every idle connection closed by the head deadline"
    );
    still_serving(&mut server, "idle-after");
}

#[test]
fn an_http2_preface_on_the_plain_listener_is_400_and_closed() {
    // h2c is not served (HTTP/2 is offered over TLS by ALPN, tests/tls.rs).
    let mut server = server();
    let answer = exchange_to_close(
        server.port,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    );
    assert_eq!(status_of(&answer), 400);
    assert_eq!(responses_in(&answer), 1);
    // An HTTP/1.1 Upgrade to h2c is ignored: the request is served as HTTP/1.1.
    let body = br#"{"action":"upgrade"}"#;
    let mut headers = sign(GITHUB, body, now(), "h2c-upgrade");
    headers.push(("Upgrade".into(), "h2c".into()));
    headers.push(("HTTP2-Settings".into(), "AAMAAABkAARAAAAAAAIAAAAA".into()));
    let r = server.post("/webhook/github", &headers, body);
    expect_accepted(&r);
    still_serving(&mut server, "h2c-after");
}

#[test]
fn unknown_providers_and_odd_paths_are_404_without_touching_a_filter() {
    let mut server = server();
    let body = br#"{"action":"opened"}"#;
    let signed = sign(GITHUB, body, now(), "path-1");
    for path in [
        "/webhook/GITHUB",
        "/webhook/github/",
        "/webhook/github/../github",
        "/webhook/%67ithub",
        "/webhook//github",
        "/webhook/github%00",
        "/webhook/",
        "//",
    ] {
        let r = server.post(path, &signed, body);
        expect(&r, 404, "unknown_provider");
    }
    // The absolute form (RFC 9112 §3.2.2) routes by its path like the origin form.
    let absolute = |path: &str| {
        format!("POST http://example.com{path} HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")
    };
    let answer = exchange_to_close(server.port, absolute("/webhook/gitlab").as_bytes());
    assert_eq!(
        status_of(&answer),
        404,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("unknown_provider"));
    let answer = exchange_to_close(server.port, absolute("/webhook/github").as_bytes());
    assert!(
        String::from_utf8_lossy(&answer).contains("unsupported_content_type"),
        "reached the github filter: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(server.spooled().is_empty());
    still_serving(&mut server, "path-after");
}
