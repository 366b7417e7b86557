//! Issue 13's holes, each through the real binary or the real loader: a Twilio signature
//! replayed with a forged body, SharedKey (HMAC-SHA256) signatures, `sign` output the gateway
//! and providers' SDKs accept, framing the parser let through (`Content-Length: 65, 65`,
//! `gzip, chunked`, no `Host`, `Expect` from HTTP/1.0), pipelined requests, and config input
//! that used to stall the loader (FIFOs, `/dev/zero`, huge or deeply nested files).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hmac::Mac;

const TWILIO: &str = "name: twilio\npreset: twilio\nsecrets: [\"tw-auth-token\"]\npublic_url: https://hooks.example.com/webhook/twilio\n";
const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"s3cret\"]\n";

/// Twilio's signature: base64 HMAC of the URL (+ sorted form params) under the auth token.
fn twilio_signature<M: Mac + hmac::digest::KeyInit>(url: &str) -> String {
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(b"tw-auth-token").unwrap();
    mac.update(url.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[test]
fn a_twilio_signature_over_the_url_alone_does_not_carry_a_json_body() {
    let server = Server::start(&[("twilio.yaml", TWILIO)], spool_sink());
    // What Twilio signs for a parameterless callback to ?CallSid=CA1: the URL alone.
    let url = "https://hooks.example.com/webhook/twilio?CallSid=CA1";
    let sig = twilio_signature::<hmac::Hmac<sha1::Sha1>>(url);
    let headers = h(&[
        ("x-twilio-signature", &sig),
        ("content-type", "application/json"),
    ]);
    let r = server.post("/webhook/twilio?CallSid=CA1", &headers, b"");
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let forged = br#"{"Status":"completed","Amount":"1000000"}"#;
    let r = server.post("/webhook/twilio?CallSid=CA1", &headers, forged);
    expect(&r, 401, "invalid_signature");
    // A JSON body is authenticated only through bodySHA256, which must match it.
    let signed = sign_as(TWILIO, forged, now(), "tw-1", "application/json");
    let query = signed
        .query
        .clone()
        .expect("sign adds bodySHA256 for a JSON body");
    assert!(query.starts_with("bodySHA256="), "{query}");
    let path = format!("/webhook/twilio?{query}");
    let r = server.post(&path, &signed.headers, forged);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let r = server.post(&path, &signed.headers, br#"{"Status":"failed"}"#);
    expect(&r, 401, "invalid_signature");
    let bodies: Vec<String> = server
        .spooled()
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["", std::str::from_utf8(forged).unwrap()]);
}

#[test]
fn twilio_shared_key_signatures_with_hmac_sha256_are_accepted() {
    let server = Server::start(&[("twilio.yaml", TWILIO)], spool_sink());
    let form = "CallSid=CA9&From=%2B15550001111";
    let url = "https://hooks.example.com/webhook/twilio?x=1CallSidCA9From+15550001111";
    let sha256 = twilio_signature::<hmac::Hmac<sha2::Sha256>>(url);
    let sha1 = twilio_signature::<hmac::Hmac<sha1::Sha1>>(url);
    let post = |sig: &str, settings: &str, id: &str| {
        let headers = h(&[
            ("x-twilio-signature", sig),
            ("x-twilio-webhooks-signature-settings", settings),
            ("i-twilio-idempotency-token", id),
            ("content-type", "application/x-www-form-urlencoded"),
        ]);
        server.post("/webhook/twilio?x=1", &headers, form.as_bytes())
    };
    let settings = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256";
    assert_eq!(post(&sha256, settings, "a").status, 202);
    // The algorithm the header names is the one checked; an unknown one is refused.
    expect(&post(&sha1, settings, "b"), 401, "invalid_signature");
    expect(
        &post(&sha256, "key=k,algorithm=HMAC_SHA384", "c"),
        401,
        "invalid_signature",
    );
    assert_eq!(post(&sha1, "key=k", "d").status, 202);
    assert_eq!(server.spooled().len(), 2);
}

#[test]
fn sign_curl_for_a_twilio_json_body_is_accepted_and_shopify_sign_prints_its_headers() {
    let server = Server::start(&[("twilio.yaml", TWILIO)], spool_sink());
    let dir = tempfile::tempdir().unwrap();
    let filter = dir.path().join("twilio.yaml");
    std::fs::write(&filter, TWILIO).unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    let (code, cmd, err) = portcullis(&[
        "sign",
        "--filter",
        filter.to_str().unwrap(),
        "--body",
        r#"{"CallSid":"CA1"}"#,
        "--curl",
        &base,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(cmd.contains("/webhook/twilio?bodySHA256="), "{cmd}");
    let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("\"accepted\""), "{cmd}\n{answer}");

    let shopify = dir.path().join("shopify.yaml");
    std::fs::write(
        &shopify,
        "name: shopify\npreset: shopify\nsecrets: [\"sh\"]\n",
    )
    .unwrap();
    let (code, out, err) = portcullis(&[
        "sign",
        "--filter",
        shopify.to_str().unwrap(),
        "--body",
        "{}",
    ]);
    assert_eq!(code, 0, "{err}");
    for header in [
        "x-shopify-hmac-sha256:",
        "x-shopify-topic:",
        "x-shopify-shop-domain:",
        "x-shopify-api-version:",
        "x-shopify-webhook-id:",
    ] {
        assert!(out.contains(header), "{header} missing from:\n{out}");
    }
}

/// [`exchange_to_close`] as text.
fn exchange(port: u16, raw: &[u8]) -> String {
    String::from_utf8_lossy(&exchange_to_close(port, raw)).into_owned()
}

fn signed_head(version: &str, body: &[u8], id: &str, extra: &str) -> Vec<u8> {
    let mut head = format!("POST /webhook/github {version}\r\n{extra}");
    for (k, v) in sign(GITHUB, body, now(), id) {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    [head.into_bytes(), body.to_vec()].concat()
}

#[test]
fn framing_the_parser_lets_through_is_refused_with_a_json_reason() {
    let server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    let body = br#"{"action":"opened"}"#;
    let cl = format!("Content-Length: {}\r\n", body.len());
    let cases = [
        // RFC 9110 §8.6: a list of identical lengths may be refused, never a 413.
        (
            format!("Host: x\r\nContent-Length: {0}, {0}\r\n", body.len()),
            400,
            "invalid_request",
        ),
        (
            "Host: x\r\nTransfer-Encoding: gzip, chunked\r\n".to_string(),
            501,
            "unsupported_transfer_encoding",
        ),
        (
            "Host: x\r\nTransfer-Encoding: identity, chunked\r\n".to_string(),
            501,
            "unsupported_transfer_encoding",
        ),
        (cl.clone(), 400, "invalid_request"),
        (
            format!("Host: exa mple.com\r\n{cl}"),
            400,
            "invalid_request",
        ),
        (format!("Host: a:99999999\r\n{cl}"), 400, "invalid_request"),
    ];
    for (i, (extra, status, reason)) in cases.iter().enumerate() {
        let chunked = extra.contains("chunked");
        let payload = if chunked {
            format!(
                "{:x}\r\n{}\r\n0\r\n\r\n",
                body.len(),
                std::str::from_utf8(body).unwrap()
            )
            .into_bytes()
        } else {
            body.to_vec()
        };
        // Signed over the real body: only the framing is wrong.
        let mut raw = format!("POST /webhook/github HTTP/1.1\r\n{extra}").into_bytes();
        for (k, v) in sign(GITHUB, body, now(), &format!("f-{i}")) {
            raw.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&payload);
        let answer = exchange(server.port, &raw);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{extra:?}: {answer}"
        );
        assert!(
            answer.contains(&format!("{{\"error\":\"{reason}\"}}")),
            "{extra:?}: {answer}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{extra:?}: {answer}"
        );
    }
    assert!(server.spooled().is_empty());
    // HTTP/1.0 may leave out Host, and its Expect: 100-continue is ignored (RFC 9110 §10.1.1).
    let raw = signed_head(
        "HTTP/1.0",
        body,
        "f-10",
        &format!("{cl}Expect: 100-continue\r\n"),
    );
    let answer = exchange(server.port, &raw);
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(
        answer.starts_with("HTTP/1.1 202 ") || answer.starts_with("HTTP/1.0 202 "),
        "{answer}"
    );
    assert_eq!(server.spooled().len(), 1);
}

#[test]
fn pipelined_requests_are_answered_in_order_but_not_behind_a_rejected_one() {
    let server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    let mut raw = Vec::new();
    for n in 0..5 {
        let body = format!("{{\"action\":\"p{n}\"}}");
        let extra = format!("Host: x\r\nContent-Length: {}\r\n", body.len());
        let close = if n == 4 { "Connection: close\r\n" } else { "" };
        raw.extend(signed_head(
            "HTTP/1.1",
            body.as_bytes(),
            &format!("pipe-{n}"),
            &format!("{extra}{close}"),
        ));
    }
    let answer = exchange(server.port, &raw);
    let ids: Vec<&str> = answer
        .match_indices("\"event_id\":\"pipe-")
        .map(|(i, _)| &answer[i + 12..i + 18])
        .collect();
    assert_eq!(
        ids,
        ["pipe-0", "pipe-1", "pipe-2", "pipe-3", "pipe-4"],
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 202 ").count(), 5, "{answer}");
    assert_eq!(server.spooled().len(), 5);

    // A signed request hidden behind one whose signature fails is never processed.
    let hidden = signed_head(
        "HTTP/1.1",
        br#"{"action":"hidden"}"#,
        "pipe-hidden",
        "Host: x\r\nContent-Length: 19\r\n",
    );
    let forged = br#"{"action":"forged"}"#;
    let mut raw = signed_head(
        "HTTP/1.1",
        br#"{"action":"other"}"#,
        "pipe-bad",
        "Host: x\r\n",
    );
    raw.truncate(raw.len() - br#"{"action":"other"}"#.len() - 2);
    raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", forged.len()).as_bytes());
    raw.extend_from_slice(forged);
    raw.extend_from_slice(&hidden);
    let answer = exchange(server.port, &raw);
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert_eq!(server.spooled().len(), 5);
}

fn mkfifo(path: &std::path::Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success());
}

const SERVER: &str =
    "listen:\n  - addr: 127.0.0.1:1\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\n";

/// `check` and `run` on a config whose filters hold `problem`, bounded as a hang detector.
fn check_and_run(dir: &std::path::Path) -> [(i32, String); 2] {
    let conf = dir.join("portcullis.yaml");
    let conf = conf.to_str().unwrap();
    let started = Instant::now();
    let (code, out, _) = portcullis(&["check", "-c", conf]);
    let (run_code, _, err) = portcullis(&["run", "-c", conf]);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the loader stalled"
    );
    [(code, out), (run_code, err)]
}

#[test]
fn fifos_devices_and_oversized_files_are_refused_without_hanging_or_eating_memory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "portcullis.yaml", SERVER);
    mkfifo(&dir.path().join("secret.fifo"));
    write(
        dir.path(),
        "filters/a.yaml",
        "name: a\npreset: github\nsecrets: [\"file:../secret.fifo\"]\n",
    );
    write(
        dir.path(),
        "filters/b.yaml",
        "name: b\npreset: github\nsecrets: [\"file:/dev/zero\"]\n",
    );
    std::fs::write(dir.path().join("big.secret"), vec![b'k'; 65 * 1024]).unwrap();
    write(
        dir.path(),
        "filters/c.yaml",
        "name: c\npreset: github\nsecrets: [\"file:../big.secret\"]\n",
    );
    mkfifo(&dir.path().join("filters/d.yaml"));
    let mut huge = String::from("name: e\npreset: github\nsecrets: [x]\n");
    while huge.len() <= 1024 * 1024 {
        huge += "# padding padding padding padding padding padding padding padding\n";
    }
    write(dir.path(), "filters/e.yaml", &huge);
    let [(code, out), (run_code, err)] = check_and_run(dir.path());
    assert_eq!((code, run_code), (1, 1), "{out}\n{err}");
    for (file, message) in [
        (
            "a.yaml:3:",
            "secret.fifo is a FIFO: a secret must be a regular file",
        ),
        (
            "b.yaml:3:",
            "/dev/zero is a device: a secret must be a regular file",
        ),
        (
            "c.yaml:3:",
            "big.secret is larger than 64 KiB: a secret may be at most that",
        ),
        (
            "d.yaml:1:",
            "d.yaml is a FIFO: a config or filter file must be a regular file",
        ),
        (
            "e.yaml:1:",
            "e.yaml is larger than 1 MiB: a config or filter file may be at most that",
        ),
    ] {
        assert!(
            out.lines().any(|l| l.contains(file) && l.contains(message)),
            "{file} {message}:\n{out}"
        );
        assert!(err.contains(message), "run: {message}:\n{err}");
    }
}

#[test]
fn deep_nesting_many_problems_and_odd_paths_are_reported_quickly() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "portcullis.yaml", SERVER);
    write(
        dir.path(),
        "filters/a.yaml",
        &format!(
            "name: a\npreset: github\nsecrets: [x]\nallow: {}\n",
            "[".repeat(100_000)
        ),
    );
    write(
        dir.path(),
        "filters/b.yaml",
        &format!(
            "name: b\npreset: github\nsecrets: [x]\nallow:\n{}x\n",
            "- ".repeat(100_000)
        ),
    );
    let mut many = String::from("name: c\npreset: github\nsecrets: [x]\n");
    for i in 0..80_000 {
        many += &format!("k{i}: 1\n");
    }
    write(dir.path(), "filters/c.yaml", &many);
    write(
        dir.path(),
        "filters/d.yaml",
        "name: d\npreset: github\nsecrets: [x]\npath: \"/webhook/a b\"\n",
    );
    write(
        dir.path(),
        "filters/e.yaml",
        "name: e\npreset: github\nsecrets: [x]\npath: \"/webhook/\\u0007\"\n",
    );
    write(
        dir.path(),
        "filters/f.yaml",
        "name: f\npreset: github\nsecrets: [x]\npath: /webhook/%zz\n",
    );
    write(
        dir.path(),
        "filters/g.yaml",
        "name: g\npreset: github\nsecrets: [x]\npath: \"/webhook/ok-%41_~:@!$&'()*+,;=\"\n",
    );
    let [(code, out), (run_code, _)] = check_and_run(dir.path());
    assert_eq!((code, run_code), (1, 1), "{out}");
    for (file, message) in [
        ("a.yaml:4:", "nested more than 64 levels deep"),
        ("b.yaml:5:", "nested more than 64 levels deep"),
        ("c.yaml:4:", "unknown key `k0`"),
        ("c.yaml:1:", "79801 more problems in this file not listed"),
        ("d.yaml:4:", "has ' ', which a request path cannot carry"),
        (
            "e.yaml:4:",
            "has '\\u{7}', which a request path cannot carry",
        ),
        ("f.yaml:4:", "has a `%` not followed by two hex digits"),
    ] {
        assert!(
            out.lines().any(|l| l.contains(file) && l.contains(message)),
            "{file} {message}:\n{}",
            &out[..out.len().min(4000)]
        );
    }
    assert!(
        !out.lines()
            .any(|l| l.contains("g.yaml") && l.contains("error")),
        "a path of RFC 3986 characters is fine:\n{out}"
    );
    // Listed: 200 of c.yaml's, one per other broken file, and the closing count.
    assert!(out.lines().count() < 220, "{} lines", out.lines().count());
}
