//! The outbound dispatcher through the real binary: `POST /outbound` on the API listener,
//! the SQLite ledger, signed deliveries to real local receivers, retries, dead letters, the
//! SSRF guard and a SIGKILL mid-run.

mod common;

use std::net::TcpListener;
use std::time::Duration;

use common::dispatcher::*;
use common::receiver::{Receiver, Reply};
use common::*;

#[test]
fn the_api_answers_with_the_contract_statuses() {
    let rx = Receiver::ok();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[
                    endpoint("orders", &url, "    event_types: [\"order.*\"]\n"),
                    endpoint("all", &url, ""),
                ],
            ),
        )],
        LOCAL,
    );
    let msg = |id: &str, t: &str| {
        format!(r#"{{"tenant":"acme","event_type":"{t}","id":"{id}","payload":{{"n":1}}}}"#)
    };
    let r = d.send(&msg("e1", "order.updated"));
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["status"], "queued");
    assert_eq!(r.json()["endpoints"], 2);
    let first = r.json()["message_id"].as_str().unwrap().to_owned();
    assert!(first.starts_with("msg_"));

    let again = d.send(&msg("e1", "order.updated"));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "duplicate");
    assert_eq!(again.json()["message_id"], first.as_str());

    // Only the endpoint taking every type matches; `endpoints` targets by name.
    assert_eq!(d.send(&msg("e2", "user.created")).json()["endpoints"], 1);
    let targeted = d.send(
        r#"{"tenant":"acme","event_type":"order.x","id":"e3","payload":1,"endpoints":["orders"]}"#,
    );
    assert_eq!(targeted.json()["endpoints"], 1);
    let unknown_ep = d.send(
        r#"{"tenant":"acme","event_type":"order.x","id":"e4","payload":1,"endpoints":["nope"]}"#,
    );
    assert_eq!(
        (unknown_ep.status, unknown_ep.json()["field"].clone()),
        (400, "endpoints".into())
    );

    assert_eq!(d.send_as(None, &msg("e5", "a")).reason(), "unauthorized");
    assert_eq!(d.send_as(None, &msg("e5", "a")).status, 401);
    assert_eq!(d.send_as(Some("wrong"), &msg("e5", "a")).status, 401);
    let unknown = d.send(r#"{"tenant":"nobody","event_type":"a","payload":1}"#);
    assert_eq!(
        (unknown.status, unknown.reason()),
        (404, "unknown_tenant".into())
    );
    for (body, field) in [
        (r#"{"event_type":"a","payload":1}"#, Some("tenant")),
        (r#"{"tenant":"acme","payload":1}"#, Some("event_type")),
        (r#"{"tenant":"acme","event_type":"a"}"#, Some("payload")),
        ("not json", None),
        (r#"{"tenant":"acme","event_type":"a","payload":1"#, None),
    ] {
        let r = d.send(body);
        assert_eq!(
            (r.status, r.reason()),
            (400, "invalid_message".into()),
            "{body}"
        );
        assert_eq!(r.json()["field"].as_str(), field, "{body}");
    }
    let big = format!(
        r#"{{"tenant":"acme","event_type":"a","payload":"{}"}}"#,
        "x".repeat(5000)
    );
    assert_eq!(d.send(&big).status, 413);
    let huge = "x".repeat(64 * 1024);
    assert_eq!(d.send(&huge).reason(), "payload_too_large");
    let get = request(
        d.api,
        format!("GET /outbound HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(get.status, 405);
    let metrics = d.metrics();
    assert!(
        metrics.contains(r#"portcullis_outbound_messages_total{outcome="queued",source="api"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"portcullis_outbound_messages_total{outcome="duplicate",source="api"} 1"#),
        "{metrics}"
    );
    // Every delivery arrives (two for e1, one each for e2 and e3).
    rx.wait_for(4);
}

#[test]
fn one_id_sent_many_times_at_once_is_queued_once_on_either_store() {
    one_id_many_times("sqlite://state/ledger.db");
    // PostgreSQL refuses one upsert touching a row twice: a batch must not ask it to.
    if let Some(db) = PgDatabase::create() {
        one_id_many_times(&db.url());
    }
}

fn one_id_many_times(store: &str) {
    let rx = Receiver::ok();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let d = Dispatcher::start_on_store(
        &[("acme.yaml", tenant("acme", &[endpoint("all", &url, "")]))],
        LOCAL,
        store,
    );
    // Sixteen callers at once with eight ids, two each: calls that share a commit batch
    // must still agree on one message per id.
    let answers: Vec<(u16, String, String)> = std::thread::scope(|s| {
        let calls: Vec<_> = (0..16)
            .map(|i| {
                let d = &d;
                s.spawn(move || {
                    let id = format!("same-{}", i % 8);
                    let r = d.send(&format!(
                        r#"{{"tenant":"acme","event_type":"a","id":"{id}","payload":{{"n":1}}}}"#
                    ));
                    let message = r.json()["message_id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    (r.status, id, message)
                })
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    for k in 0..8 {
        let id = format!("same-{k}");
        let mine: Vec<_> = answers.iter().filter(|a| a.1 == id).collect();
        let mut statuses: Vec<u16> = mine.iter().map(|a| a.0).collect();
        statuses.sort();
        assert_eq!(statuses, [200, 202], "{id}: {answers:?}");
        assert_eq!(mine[0].2, mine[1].2, "{id}: one message id");
    }
    rx.wait_for(8);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), 8, "one delivery per id");
}

#[test]
fn calls_over_the_api_rate_limit_get_429_and_keep_nothing() {
    let rx = Receiver::ok();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let d = Dispatcher::start(
        &[
            ("acme.yaml", tenant("acme", &[endpoint("all", &url, "")])),
            (
                "globex.yaml",
                tenant("globex", &[endpoint("all", &url, "")]),
            ),
        ],
        // The next keys of `outbound:` after the delivery mapping.
        &format!("{LOCAL}\n  rate_limit: {{ per_tenant_per_second: 1 }}"),
    );
    let msg = |tenant: &str, id: &str| {
        format!(r#"{{"tenant":"{tenant}","event_type":"a","id":"{id}","payload":{{"n":1}}}}"#)
    };
    // One call per second is admitted: twenty in a row cannot all fit.
    let mut refused = None;
    for i in 0..20 {
        let r = d.send(&msg("acme", &format!("e{i}")));
        match r.status {
            202 => {}
            429 => {
                assert_eq!(r.reason(), "rate_limited");
                assert_eq!(r.header("retry-after"), Some("1"));
                refused = Some(format!("e{i}"));
                // Another tenant's budget is its own.
                assert_eq!(d.send(&msg("globex", &format!("g{i}"))).status, 202);
                break;
            }
            other => panic!("{other}: {}", String::from_utf8_lossy(&r.body)),
        }
    }
    let refused = refused.expect("twenty calls in a row, none refused at one per second");
    // Nothing was kept: the same id is queued (not a duplicate) once the window has passed.
    let again = loop {
        std::thread::sleep(Duration::from_millis(300));
        let r = d.send(&msg("acme", &refused));
        if r.status != 429 {
            break r;
        }
    };
    assert_eq!(
        (again.status, again.json()["status"].clone()),
        (202, "queued".into())
    );
    assert!(d
        .metrics()
        .contains(r#"portcullis_outbound_messages_total{outcome="rejected",source="api"}"#));
}

#[test]
fn deliveries_carry_the_exact_payload_signed_so_receivers_verify_them() {
    let rx = Receiver::ok();
    let base = format!("http://127.0.0.1:{}", rx.port);
    let standard = format!(
        "  - name: standard\n    url: {base}/std\n    secrets: [\"{SECRET}\", \"whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24=\"]\n    headers: {{ X-Env: test }}\n"
    );
    let wss = format!(
        "  - name: wss\n    url: {base}/wss\n    secrets: [\"legacy-secret\"]\n    scheme: hmac\n    signature: {{ header: X-WSS-Signature, algorithm: sha256, encoding: hex, signed: \"{{timestamp}}{{body}}\" }}\n    timestamp: {{ header: X-WSS-Timestamp, format: unix }}\n"
    );
    // At trace, so that a library logging request heads would show here.
    let dir = Server::prepare(&[]);
    std::fs::write(dir.path().join("env"), "RUST_LOG=trace\n").unwrap();
    let d = Dispatcher::start_in(
        dir,
        &[("acme.yaml", tenant("acme", &[standard, wss]))],
        LOCAL,
        "sqlite://state/ledger.db",
    );
    let payload = r#"{"order": 42,  "status":"shipped", "price": 1.50}"#;
    let id = d.queue("acme", "order.updated", "evt_1", payload);
    let got = rx.wait_for(2);
    for delivery in &got {
        assert_eq!(
            delivery.body,
            payload.as_bytes(),
            "the bytes sent, never re-serialised"
        );
        assert_eq!(delivery.header("webhook-id"), Some(id.as_str()));
        assert_eq!(delivery.header("content-type"), Some("application/json"));
        assert!(delivery
            .header("user-agent")
            .unwrap()
            .starts_with("Portcullis/"));
    }
    let std = got.iter().find(|r| r.path == "/std").unwrap();
    assert_eq!(std.header("x-env"), Some("test"));
    let sigs = std.header("webhook-signature").unwrap();
    assert_eq!(
        sigs.split(' ').count(),
        2,
        "one signature per active secret: {sigs}"
    );

    let wss = got.iter().find(|r| r.path == "/wss").unwrap();
    let ts = wss.header("x-wss-timestamp").unwrap();
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"legacy-secret").unwrap();
    mac.update(ts.as_bytes());
    mac.update(payload.as_bytes());
    assert_eq!(
        wss.header("x-wss-signature").unwrap(),
        hex::encode(mac.finalize().into_bytes())
    );

    // No signature and no secret in the log, at any level.
    let log = d.server.log();
    let mut secret_parts: Vec<&str> = sigs.split(' ').collect();
    secret_parts.extend([
        wss.header("x-wss-signature").unwrap(),
        "legacy-secret",
        SECRET.trim_start_matches("whsec_"),
    ]);
    for part in secret_parts {
        let leaks: Vec<&str> = log.lines().filter(|l| l.contains(part)).collect();
        assert!(
            leaks.is_empty(),
            "`{part}` in the log:\n{}",
            leaks.join("\n")
        );
    }

    // The standardwebhooks package verifies with either secret.
    let secrets = [SECRET, "whsec_c2Vjb25kLXNlY3JldC1mb3Itcm90YXRpb24="];
    if let Some(verdict) = standard_webhooks_verify(&secrets, payload, std) {
        verdict.unwrap();
    }
}

#[test]
fn failures_retry_with_the_same_id_then_become_dead_letters() {
    // flaky: 500, 500, then 200; broken: 500 until it is mended (after its dead letter).
    let flaky = Receiver::start(|n| Reply::Status(if n < 2 { 500 } else { 200 }));
    let broken = Receiver::start(|n| {
        if n < 3 {
            Reply::Full(500, vec![], vec![b'e'; 100_000])
        } else {
            Reply::Status(200)
        }
    });
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[
                    endpoint("flaky", &format!("http://127.0.0.1:{}/", flaky.port), ""),
                    endpoint("broken", &format!("http://127.0.0.1:{}/", broken.port), ""),
                ],
            ),
        )],
        LOCAL,
    );
    let id = d.queue("acme", "a", "e1", "{}");
    let flaky_attempts = d.wait_attempts(&id, "flaky", 3);
    let outcomes: Vec<_> = flaky_attempts
        .iter()
        .map(|a| a["outcome"].clone())
        .collect();
    assert_eq!(outcomes, ["http_status", "http_status", "delivered"]);
    assert!(flaky
        .all()
        .iter()
        .all(|r| r.header("webhook-id") == Some(id.as_str())));

    // A first attempt and the two retries of the schedule, then no more.
    let broken_attempts = d.wait_attempts(&id, "broken", 3);
    assert!(broken_attempts
        .iter()
        .all(|a| a["outcome"] == "http_status" && a["status"] == 500));
    let preview = broken_attempts[0]["preview"].as_str().unwrap();
    assert_eq!(preview.len(), 512, "only the first 512 bytes are kept");
    d.wait_metric(r#"portcullis_outbound_dead_letters_total{reason="retries_exhausted"} 1"#);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(broken.count(), 3, "a dead letter is not attempted again");
    assert_eq!(flaky.count(), 3);
    assert!(broken
        .all()
        .iter()
        .all(|r| r.header("webhook-id") == Some(id.as_str())));

    // The dead letter is listed, replayed with a fresh budget and delivered (same id).
    let conf = d.server.dir.path().join("portcullis.yaml");
    let conf = conf.to_str().unwrap();
    let (code, out, err) = portcullis(&["outbound", "dlq", "list", "-c", conf, "--json"]);
    assert_eq!(code, 0, "{err}");
    let dead: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(dead.len(), 1, "{out}");
    assert_eq!(
        (
            &dead[0]["message_id"],
            &dead[0]["endpoint"],
            &dead[0]["reason"]
        ),
        (
            &serde_json::Value::from(id.as_str()),
            &"broken".into(),
            &"retries_exhausted".into()
        )
    );
    let (code, out, err) = portcullis(&["outbound", "dlq", "replay", "-c", conf, &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 dead delivery queued again"), "{out}");
    let got = broken.wait_for(4);
    assert_eq!(got[3].header("webhook-id"), Some(id.as_str()));
    let again = d.wait_attempts(&id, "broken", 4);
    assert_eq!(again[3]["outcome"], "delivered");
    let (_, out, _) = portcullis(&["outbound", "dlq", "list", "-c", conf, "--json"]);
    assert_eq!(out.trim(), "[]");
    let (code, _, err) = portcullis(&["outbound", "dlq", "replay", "-c", conf, &id]);
    assert_eq!(code, 1, "nothing dead left to replay: {err}");
}

#[test]
fn each_outcome_of_the_contract_is_recorded_and_acted_on() {
    let elsewhere = Receiver::ok();
    let location = format!("http://127.0.0.1:{}/moved", elsewhere.port);
    let redirect = Receiver::start(move |n| {
        if n == 0 {
            Reply::Full(302, vec![("Location".into(), location.clone())], vec![])
        } else {
            Reply::Status(200)
        }
    });
    let throttled = Receiver::start(|n| {
        if n == 0 {
            Reply::Full(429, vec![("Retry-After".into(), "0".into())], vec![])
        } else {
            Reply::Status(204)
        }
    });
    let slow = Receiver::start(|n| {
        if n == 0 {
            Reply::Hang(Duration::from_secs(3))
        } else {
            Reply::Status(200)
        }
    });
    let gone = Receiver::start(|_| Reply::Status(410));
    let url = |rx: &Receiver| format!("http://127.0.0.1:{}/", rx.port);
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[
                    endpoint("redirect", &url(&redirect), ""),
                    endpoint("throttled", &url(&throttled), ""),
                    endpoint("slow", &url(&slow), "    timeout: 300ms\n"),
                    endpoint("gone", &url(&gone), ""),
                ],
            ),
        )],
        LOCAL,
    );
    let id = d.queue("acme", "a", "e1", "{}");
    let outcomes = |ep| -> Vec<String> {
        d.wait_attempts(&id, ep, 2)
            .iter()
            .map(|a| a["outcome"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(outcomes("redirect"), ["redirect", "delivered"]);
    assert_eq!(elsewhere.count(), 0, "a redirect is never followed");
    assert_eq!(outcomes("throttled"), ["throttled", "delivered"]);
    assert_eq!(outcomes("slow"), ["timeout", "delivered"]);
    let gone_attempts = d.wait_attempts(&id, "gone", 1);
    assert_eq!(gone_attempts[0]["outcome"], "gone");
    // 410 disables the endpoint: the next message no longer goes there.
    let next = d.send(r#"{"tenant":"acme","event_type":"a","id":"e2","payload":{}}"#);
    assert_eq!(
        next.json()["endpoints"],
        3,
        "{}",
        String::from_utf8_lossy(&next.body)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(gone.count(), 1);
    assert!(d
        .metrics()
        .contains(r#"portcullis_outbound_dead_letters_total{reason="endpoint_gone"} 1"#));
}

#[test]
fn internal_addresses_are_refused_at_load_and_at_delivery() {
    // Literal internal addresses, however spelt: `check` refuses the endpoint.
    for host in [
        "127.0.0.1",
        "127.1",
        "2130706433",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "10.1.2.3",
        "[fd00::1]",
    ] {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "filters/.keep", "");
        write(
            dir.path(),
            "endpoints/t.yaml",
            &tenant("t", &[endpoint("e", &format!("http://{host}:9/"), "")]),
        );
        let conf = write(
            dir.path(),
            "portcullis.yaml",
            "outbound:\n  api: 127.0.0.1:1\n  tokens: [x]\n  endpoints: endpoints/\n  delivery: { allow_http: true }\nstore: { url: \"sqlite://s/l.db\" }\n",
        );
        let (code, out, _) = portcullis(&["check", "-c", &conf]);
        assert_eq!(code, 1, "{host}: {out}");
        assert!(out.contains("is an internal address"), "{host}: {out}");
    }

    // A name that resolves to loopback passes the load and is refused at delivery.
    let rx = Receiver::ok();
    let d = Dispatcher::start(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://localhost:{}/", rx.port), "")],
            ),
        )],
        "{ allow_http: true, retry: [100ms] }",
    );
    let id = d.queue("t", "a", "e1", "{}");
    let attempts = d.wait_attempts(&id, "e", 2);
    assert!(
        attempts.iter().all(|a| a["outcome"] == "ssrf_blocked"),
        "{attempts:?}"
    );
    assert_eq!(rx.count(), 0, "the receiver sees nothing");
    assert!(d
        .metrics()
        .contains(r#"portcullis_outbound_attempts_total{outcome="ssrf_blocked"} 2"#));
}

#[test]
fn a_killed_dispatcher_delivers_every_queued_message_after_restart() {
    // The receiver is down while the messages are queued (so the breaker opens: a short
    // cooldown); the process is then SIGKILLed.
    let port = free_port();
    let mut d = Dispatcher::start(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://127.0.0.1:{port}/"), "")],
            ),
        )],
        &down_then_up(),
    );
    let ids: Vec<String> = (0..20)
        .map(|i| d.queue("t", "a", &format!("e{i}"), &format!("{{\"n\":{i}}}")))
        .collect();
    use std::os::unix::fs::PermissionsExt;
    let state = d.server.dir.path().join("state");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("ledger.db")), 0o600, "payloads are in it");
    d.server.restart(); // SIGKILL, then start again on the same ledger
    let rx = Receiver::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), |_| {
        Reply::Status(200)
    });
    wait_delivered(&rx, &ids);
    // Queued once, so a retry of the same id after the restart is still a duplicate.
    let again = d.send(r#"{"tenant":"t","event_type":"a","id":"e3","payload":{}}"#);
    assert_eq!(again.json()["message_id"], ids[3].as_str());
}

/// Delivery settings for a receiver that is down while messages are queued: retries every
/// 100 ms for long enough, a breaker that probes every 200 ms, and a short attempt timeout
/// (a dead node's leases last timeout + 5 s).
fn down_then_up() -> String {
    let retry = format!("[{}]", vec!["100ms"; 100].join(", "));
    format!(
        "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: {retry}, timeout: 1s, breaker: {{ cooldown: 200ms }} }}"
    )
}

/// Queues 10,000 messages, SIGKILLs the node once a tenth of them were delivered (the rest
/// queued or in flight, some recorded and some not), restarts it on the same ledger: every
/// message arrives, at least once.
#[test]
fn ten_thousand_queued_messages_survive_a_sigkill_mid_run() {
    const N: usize = 10_000;
    // The receiver comes up only once all are queued (the breaker opened meanwhile: a short
    // cooldown), so the kill finds most of them still queued.
    let port = free_port();
    let mut d = Dispatcher::start(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://127.0.0.1:{port}/"), "")],
            ),
        )],
        &down_then_up(),
    );
    let ids = d.queue_many("t", "k", N, 8);
    let rx = Receiver::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), |_| {
        Reply::Status(200)
    });
    rx.wait_for(N / 10);
    d.server.restart();
    let got = wait_delivered_within(&rx, &ids, Duration::from_secs(600));
    assert!(got >= N);
    eprintln!(
        "{N} messages, {got} deliveries ({} again after the kill)",
        got - N
    );
}

/// Two nodes on one PostgreSQL ledger share 4,000 messages; one is SIGKILLed mid-run and
/// not restarted: the other takes its leases over once they run out and delivers the rest.
#[test]
fn two_nodes_on_one_postgresql_ledger_lose_nothing_when_one_is_killed() {
    const N: usize = 4_000;
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let port = free_port();
    let endpoints = [(
        "t.yaml",
        tenant(
            "t",
            &[endpoint("e", &format!("http://127.0.0.1:{port}/"), "")],
        ),
    )];
    let delivery = down_then_up();
    let mut a = Dispatcher::start_on_store(&endpoints, &delivery, &db.url());
    let b = Dispatcher::start_on_store(&endpoints, &delivery, &db.url());
    let (mut ids, more) = std::thread::scope(|s| {
        let on_b = s.spawn(|| b.queue_many("t", "b", N / 2, 4));
        (a.queue_many("t", "a", N / 2, 4), on_b.join().unwrap())
    });
    ids.extend(more);
    let rx = Receiver::start_on(TcpListener::bind(("127.0.0.1", port)).unwrap(), |_| {
        Reply::Status(200)
    });
    rx.wait_for(N / 10);
    a.server.signal("KILL");
    assert!(a.server.wait_exit(Duration::from_secs(10)).is_some());
    let got = wait_delivered_within(&rx, &ids, Duration::from_secs(600));
    eprintln!(
        "{N} messages, {got} deliveries ({} again after the kill)",
        got - N
    );
    let log = b.server.log();
    assert!(!log.contains("panicked"), "{log}");
    drop((a, b, db));
}

#[test]
fn the_postgresql_ledger_queues_retries_and_survives_a_kill() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let rx = Receiver::start(|n| Reply::Status(if n == 0 { 500 } else { 200 }));
    let mut d = Dispatcher::start_on_store(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "")],
            ),
        )],
        LOCAL,
        &db.url(),
    );
    let first = d.queue("t", "a", "e0", r#"{"n":0}"#);
    let again = d.send(r#"{"tenant":"t","event_type":"a","id":"e0","payload":{}}"#);
    assert_eq!(
        (again.status, again.json()["message_id"].clone()),
        (200, first.as_str().into())
    );
    let attempts = d.wait_attempts(&first, "e", 2);
    let outcomes: Vec<_> = attempts.iter().map(|a| a["outcome"].clone()).collect();
    assert_eq!(outcomes, ["http_status", "delivered"]);

    let ids: Vec<String> = (1..=10)
        .map(|i| d.queue("t", "a", &format!("e{i}"), &format!("{{\"n\":{i}}}")))
        .collect();
    d.server.restart();
    wait_delivered(&rx, &ids);
    drop(d);
}

#[test]
fn a_redis_stream_source_acks_after_commit_and_takes_over_a_dead_consumers_entries() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client.get_connection().unwrap();
    let stream = unique("outbound-src");
    let xadd = |conn: &mut redis::Connection, fields: &[(&str, &str)]| -> String {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&stream).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query(conn).unwrap()
    };
    // A node read this entry and died before committing it.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("portcullis")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut conn)
        .unwrap();
    xadd(
        &mut conn,
        &[
            ("tenant", "t"),
            ("event_type", "a"),
            ("id", "orphan"),
            ("payload", r#"{"n": 0}"#),
        ],
    );
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("portcullis")
        .arg("dead-node")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    // Written before the dispatcher started: delivered too.
    xadd(
        &mut conn,
        &[
            ("tenant", "t"),
            ("event_type", "a"),
            ("id", "early"),
            ("payload", r#"{"n":  1}"#),
        ],
    );
    xadd(&mut conn, &[("event_type", "a"), ("payload", "{}")]); // no tenant
    xadd(
        &mut conn,
        &[
            ("tenant", "t"),
            ("event_type", "a"),
            ("payload", "{not json"),
        ],
    );
    xadd(
        &mut conn,
        &[("tenant", "nobody"), ("event_type", "a"), ("payload", "{}")],
    );

    let rx = Receiver::ok();
    let delivery = format!(
        "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms] }}\n  sources:\n    - {{ type: redis, url: \"redis://127.0.0.1:6379\", stream: \"{stream}\", consumer: node-1, claim_idle: 1s }}"
    );
    let d = Dispatcher::start(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "")],
            ),
        )],
        &delivery,
    );
    xadd(
        &mut conn,
        &[
            ("tenant", "t"),
            ("event_type", "a"),
            ("id", "late"),
            ("payload", r#"{"n":2}"#),
        ],
    );
    let got = rx.wait_for(3);
    let mut bodies: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [r#"{"n":  1}"#, r#"{"n": 0}"#, r#"{"n":2}"#],
        "payloads byte for byte"
    );

    // Everything is acked: the delivered entries after their commit, the three that are no
    // message after their dead letter.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
            .arg(&stream)
            .arg("portcullis")
            .query(&mut conn)
            .unwrap();
        if pending.0 == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} entries still pending",
            pending.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = d.metrics();
    assert!(
        metrics.contains(r#"portcullis_outbound_dead_letters_total{reason="invalid_message"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"portcullis_outbound_dead_letters_total{reason="unknown_tenant"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"portcullis_outbound_messages_total{outcome="queued",source="redis"} 3"#),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), 3, "each entry once");
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
}

#[test]
fn https_endpoints_are_verified_against_the_trusted_roots_and_get_the_delivery() {
    // A CA the dispatcher trusts (SSL_CERT_FILE, as rustls-native-certs reads it) and a
    // receiver certificate for `localhost` signed by it.
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let rx = Receiver::start_tls(std::sync::Arc::new(config), |_| Reply::Status(200));
    // An untrusted certificate (a CA of nobody's) fails the handshake: tls_error, no delivery.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&other_key)
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let untrusted = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![stranger.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(other_key.serialize_der().into()),
        )
        .unwrap();
    let impostor = Receiver::start_tls(std::sync::Arc::new(untrusted), |_| Reply::Status(200));

    let dir = Server::prepare(&[]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(
        dir.path().join("env"),
        format!("SSL_CERT_FILE={}\n", ca_file.display()),
    )
    .unwrap();
    let d = Dispatcher::start_in(
        dir,
        &[(
            "t.yaml",
            tenant(
                "t",
                &[
                    endpoint("good", &format!("https://localhost:{}/hook", rx.port), ""),
                    endpoint(
                        "bad",
                        &format!("https://localhost:{}/hook", impostor.port),
                        "",
                    ),
                ],
            ),
        )],
        "{ allow_internal: [127.0.0.1/32, \"::1/128\"], retry: [100ms] }",
        "sqlite://state/ledger.db",
    );
    let id = d.queue("t", "a", "e1", r#"{"tls":true}"#);
    let got = rx.wait_for(1);
    assert_eq!(got[0].body, br#"{"tls":true}"#);
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()));
    let bad = d.wait_attempts(&id, "bad", 2);
    assert!(bad.iter().all(|a| a["outcome"] == "tls_error"), "{bad:?}");
    assert_eq!(impostor.count(), 0);
}

#[test]
fn a_jetstream_source_acks_after_commit_and_keeps_malformed_messages_as_dead_letters() {
    if !broker("NATS", "127.0.0.1:4222") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = unique("OUTSRC").replace(['-', '.', ':'], "_");
    let subject = format!("dispatch.{name}");
    let js = runtime.block_on(async {
        let client = async_nats::connect("nats://127.0.0.1:4222").await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });
    let publish = |body: &str| {
        runtime.block_on(async {
            js.publish(subject.clone(), body.to_owned().into())
                .await
                .unwrap()
                .await
                .unwrap();
        })
    };
    publish(r#"{"tenant":"t","event_type":"a","id":"early","payload":{"n": 1}}"#);
    publish("not a message");
    let rx = Receiver::ok();
    let delivery = format!(
        "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms] }}\n  sources:\n    - {{ type: nats, url: \"nats://127.0.0.1:4222\", stream: \"{name}\", subject: \"{subject}\" }}"
    );
    let d = Dispatcher::start(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "")],
            ),
        )],
        &delivery,
    );
    publish(r#"{"tenant":"t","event_type":"a","id":"late","payload":[2]}"#);
    publish(r#"{"tenant":"t","event_type":"a","id":"late","payload":[2]}"#); // a duplicate
    let got = rx.wait_for(2);
    assert_eq!(sorted_bodies(&got), ["[2]", r#"{"n": 1}"#]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = runtime.block_on(async {
            let stream = js.get_stream(&name).await.unwrap();
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("portcullis").await.unwrap();
            consumer.info().await.unwrap().clone()
        });
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{info:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = d.metrics();
    assert!(
        metrics.contains(r#"portcullis_outbound_dead_letters_total{reason="invalid_message"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"portcullis_outbound_messages_total{outcome="duplicate",source="nats"} 1"#),
        "{metrics}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.count(), 2);
    runtime.block_on(async {
        let _ = js.delete_stream(&name).await;
    });
}

#[test]
fn a_rabbitmq_source_acks_after_commit_and_keeps_malformed_messages_as_dead_letters() {
    if !broker("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::FieldTable;
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let queue = unique("outbound-src");
    let (conn, channel) = runtime.block_on(async {
        let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (conn, channel)
    });
    let publish = |body: &str| {
        runtime.block_on(async {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    lapin::BasicProperties::default(),
                )
                .await
                .unwrap();
        })
    };
    publish(r#"{"tenant":"t","event_type":"a","id":"early","payload":{"n": 1}}"#);
    publish(r#"{"tenant":"t","payload":{}}"#); // no event_type
    let rx = Receiver::ok();
    let delivery = format!(
        "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms] }}\n  sources:\n    - {{ type: amqp, url: \"{URL}\", queue: \"{queue}\" }}"
    );
    let d = Dispatcher::start(
        &[(
            "t.yaml",
            tenant(
                "t",
                &[endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "")],
            ),
        )],
        &delivery,
    );
    publish(r#"{"tenant":"t","event_type":"a","id":"late","payload":[2]}"#);
    let got = rx.wait_for(2);
    assert_eq!(sorted_bodies(&got), ["[2]", r#"{"n": 1}"#]);
    d.wait_metric(r#"portcullis_outbound_dead_letters_total{reason="invalid_message"} 1"#);
    assert!(d
        .metrics()
        .contains(r#"portcullis_outbound_messages_total{outcome="queued",source="amqp"} 2"#));
    // Everything acked: after the dispatcher stops, nothing comes back to the queue.
    drop(d);
    std::thread::sleep(Duration::from_millis(500));
    let left = runtime.block_on(async {
        let q = channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
        let _ = conn.close(200, "done".into()).await;
        q.message_count()
    });
    assert_eq!(left, 0, "every delivery was acked");
}

#[test]
fn the_inbound_bridge_turns_a_verified_github_webhook_into_a_signed_delivery() {
    const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"gh-secret\"]\nsink: bridge\n";
    let rx = Receiver::ok();
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let d = Dispatcher::start_with_sinks(
        dir,
        &[(
            "internal.yaml",
            tenant(
                "internal",
                &[endpoint(
                    "ci",
                    &format!("http://127.0.0.1:{}/ci", rx.port),
                    "    event_types: [\"github.*\"]\n",
                )],
            ),
        )],
        LOCAL,
        "sqlite://state/ledger.db",
        "  bridge: { type: outbound, tenant: internal }",
    );
    let body = r#"{"ref":"refs/heads/main","after":"abc123"}"#;
    let mut headers = sign(GITHUB, body.as_bytes(), now(), "delivery-1");
    headers.push(("x-github-event".into(), "push".into()));
    let r = d.server.post("/webhook/github", &headers, body.as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let got = rx.wait_for(1);
    assert_eq!(
        got[0].body,
        body.as_bytes(),
        "the raw inbound body, as it came"
    );
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    assert!(
        got[0].header("x-hub-signature-256").is_none(),
        "the inbound signature stays behind"
    );
    let message_id = got[0].header("webhook-id").unwrap().to_owned();
    if let Some(verdict) = standard_webhooks_verify(&[SECRET], body, &got[0]) {
        verdict.unwrap();
    }
    let attempts = d.wait_attempts(&message_id, "ci", 1);
    assert_eq!(attempts[0]["outcome"], "delivered");

    // A bad signature never reaches the ledger.
    let mut forged = sign(GITHUB, b"{\"other\":1}", now(), "delivery-2");
    forged.push(("x-github-event".into(), "push".into()));
    let r = d.server.post("/webhook/github", &forged, body.as_bytes());
    assert_eq!(r.status, 401);
    d.wait_metric(r#"portcullis_outbound_messages_total{outcome="queued",source="inbound"} 1"#);
    assert_eq!(rx.count(), 1);

    // `check` refuses a bridge to a tenant without endpoints.
    let conf = d.server.dir.path().join("portcullis.yaml");
    let text = std::fs::read_to_string(&conf).unwrap();
    let bad = d.server.dir.path().join("bad.yaml");
    std::fs::write(&bad, text.replace("tenant: internal", "tenant: nobody")).unwrap();
    let (code, out, err) = portcullis(&["check", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        (out.clone() + &err).contains("tenant `nobody` has no endpoints file"),
        "{out}{err}"
    );
}

#[test]
fn the_cli_sends_reports_status_and_disables_and_enables_an_endpoint() {
    let a = Receiver::ok();
    // b fails its first attempt, so a retry is pending when it is disabled.
    let b = Receiver::start(|n| Reply::Status(if n == 0 { 500 } else { 200 }));
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[
                    endpoint("a", &format!("http://127.0.0.1:{}/", a.port), ""),
                    endpoint("b", &format!("http://127.0.0.1:{}/", b.port), ""),
                ],
            ),
        )],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [300ms] }",
    );
    let conf = d.server.dir.path().join("portcullis.yaml");
    let conf = conf.to_str().unwrap();
    let send = |id: &str| {
        portcullis(&[
            "outbound",
            "send",
            "-c",
            conf,
            "--tenant",
            "acme",
            "--type",
            "t",
            "--id",
            id,
            "--data",
            r#"{"n": 1}"#,
        ])
    };
    let (code, out, err) = send("cli-1");
    assert_eq!(code, 0, "{err}");
    let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (&answer["status"], &answer["endpoints"]),
        (&"queued".into(), &2.into())
    );
    let message_id = answer["message_id"].as_str().unwrap().to_owned();
    let (code, out, _) = send("cli-1");
    assert_eq!(code, 0);
    assert!(
        out.contains("\"duplicate\"") && out.contains(&message_id),
        "{out}"
    );
    let got = a.wait_for(1);
    assert_eq!(got[0].body, br#"{"n": 1}"#, "the --data bytes");
    assert_eq!(got[0].header("webhook-id"), Some(message_id.as_str()));
    d.wait_attempts(&message_id, "b", 1);

    let (code, out, err) = portcullis(&["outbound", "endpoint", "disable", "-c", conf, "acme/b"]);
    assert_eq!((code, out.trim()), (0, "acme/b disabled"), "{err}");
    let (code, out, err) = portcullis(&["outbound", "status", "-c", conf, "--json"]);
    assert_eq!(code, 0, "{err}");
    let list: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let of = |list: &[serde_json::Value], name: &str| {
        list.iter()
            .find(|s| s["endpoint"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(of(&list, "a")["pending"], 0);
    assert!(of(&list, "a")["last_success"].is_i64(), "{list:?}");
    assert_eq!(of(&list, "b")["disabled"], "disabled");
    assert_eq!(of(&list, "b")["pending"], 1, "its retry waits: {list:?}");
    assert!(of(&list, "b")["last_failure"].is_i64());
    // A new message skips the disabled endpoint; the waiting retry is not attempted.
    let (_, out, _) = send("cli-2");
    assert!(out.contains("\"endpoints\":1"), "{out}");
    a.wait_for(2);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(b.count(), 1, "nothing goes to a disabled endpoint");

    let (code, out, _) = portcullis(&["outbound", "endpoint", "enable", "-c", conf, "acme/b"]);
    assert_eq!((code, out.trim()), (0, "acme/b enabled"));
    let got = b.wait_for(2);
    assert_eq!(got[1].header("webhook-id"), Some(message_id.as_str()));
    d.wait_attempts(&message_id, "b", 2);
    let (code, _, err) = portcullis(&["outbound", "endpoint", "enable", "-c", conf, "acme/nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no endpoint acme/nope"), "{err}");
    let (code, out, _) = portcullis(&["outbound", "status", "-c", conf]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ENDPOINT\tPENDING"), "{out}");
    assert!(out.contains("acme/b\t0\t0\t0\tclosed"), "{out}");
}

#[test]
fn delivered_messages_are_purged_after_the_retention_and_dead_letters_stay() {
    let ok = Receiver::ok();
    let broken = Receiver::start(|_| Reply::Status(500));
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[
                    endpoint("ok", &format!("http://127.0.0.1:{}/", ok.port), ""),
                    endpoint("broken", &format!("http://127.0.0.1:{}/", broken.port), ""),
                ],
            ),
        )],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [] }\n  retention: 1s",
    );
    let both = d.queue("acme", "t", "both", "{}");
    let r =
        d.send(r#"{"tenant":"acme","event_type":"t","id":"one","endpoints":["ok"],"payload":{}}"#);
    assert_eq!(r.status, 202);
    let delivered = r.json()["message_id"].as_str().unwrap().to_owned();
    d.wait_attempts(&delivered, "ok", 1);
    d.wait_attempts(&both, "broken", 1);
    wait_until("the delivered message is purged", || {
        d.attempts(&delivered).is_empty()
    });
    assert!(d.server.log().contains("purged delivered messages"));
    // The message with a dead delivery is kept whole, and still listed and replayable.
    assert_eq!(d.attempts(&both).len(), 2);
    let dead = d.dead_letters();
    assert!(
        dead.iter().any(|l| l["message_id"] == both.as_str()),
        "{dead:?}"
    );
}

#[test]
fn dead_letters_are_published_to_a_redis_stream_once_each_death() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    let broken = Receiver::start(|_| Reply::Status(500));
    let prefix = unique("dead");
    let d = Dispatcher::start_with_sinks(
        Server::prepare(&[]),
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[endpoint("broken", &format!("http://127.0.0.1:{}/", broken.port), "")],
            ),
        )],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [] }\n  dead_letters: { sink: dl }",
        "sqlite://state/ledger.db",
        &format!("  dl: {{ type: redis, url: \"redis://127.0.0.1:6379\", stream: \"{prefix}:{{provider}}\" }}"),
    );
    let payload = r#"{"order": 42}"#;
    let id = d.queue("acme", "order.updated", "e1", payload);
    let stream = format!("{prefix}:acme");
    let mut conn = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_connection()
        .unwrap();
    let entries = |conn: &mut redis::Connection| -> Vec<serde_json::Value> {
        type Entry = (String, Vec<(String, Vec<u8>)>);
        let raw: Vec<Entry> = redis::cmd("XRANGE")
            .arg(&stream)
            .arg("-")
            .arg("+")
            .query(conn)
            .unwrap();
        raw.into_iter()
            .map(|(_, fields)| {
                let body = &fields.iter().find(|(k, _)| k == "body").unwrap().1;
                serde_json::from_slice(body).unwrap()
            })
            .collect()
    };
    wait_until("the dead letter is published", || {
        entries(&mut conn).len() == 1
    });
    let first = &entries(&mut conn)[0];
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["kind"], "delivery");
    assert_eq!(
        (&first["tenant"], &first["endpoint"]),
        (&"acme".into(), &"broken".into())
    );
    assert_eq!(first["reason"], "retries_exhausted");
    assert_eq!(first["event_type"], "order.updated");
    assert_eq!(first["payload"], serde_json::json!({"order": 42}));

    // Replayed, it dies again: published again (a second entry), and not a third time.
    let conf = d.server.dir.path().join("portcullis.yaml");
    let (code, _, err) = portcullis(&[
        "outbound",
        "dlq",
        "replay",
        "-c",
        conf.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(code, 0, "{err}");
    wait_until("the second death is published", || {
        entries(&mut conn).len() == 2
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(entries(&mut conn).len(), 2);
    let _: () = redis::cmd("DEL").arg(&stream).query(&mut conn).unwrap();
}

#[test]
fn a_redis_source_over_tls_with_an_acl_user_feeds_the_ledger() {
    let ca = common::certs::Ca::new("source test ca");
    let redis = TlsRedis::start(&ca, "src-pw-4711");
    let rx = Receiver::ok();
    let dir = Server::prepare(&[]);
    std::fs::write(dir.path().join("env"), "REDIS_PASSWORD=src-pw-4711\n").unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    let delivery = format!(
        "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms] }}\n  sources:\n    - {{ type: redis, url: \"rediss://portcullis@127.0.0.1:{}\", stream: dispatch, password: \"env:REDIS_PASSWORD\", tls: {{ ca: ca.pem }} }}",
        redis.port
    );
    let e = endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "");
    let d = Dispatcher::start_in(
        dir,
        &[("t.yaml", tenant("t", &[e]))],
        &delivery,
        "sqlite://state/ledger.db",
    );
    redis.cli(
        "src-pw-4711",
        &[
            "XADD",
            "dispatch",
            "*",
            "tenant",
            "t",
            "event_type",
            "a",
            "id",
            "tls-1",
            "payload",
            r#"{"over":"tls"}"#,
        ],
    );
    let got = rx.wait_for(1);
    assert_eq!(got[0].body, br#"{"over":"tls"}"#);
    wait_until("the entry is acked", || {
        redis
            .cli("src-pw-4711", &["XPENDING", "dispatch", "portcullis"])
            .starts_with('0')
    });
    let ready = d.server.admin_get("/readyz");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert_eq!(ready.json()["sources"]["redis:dispatch"], true);
    assert!(
        !d.server.log().contains("src-pw-4711"),
        "no password in the log"
    );
}

#[test]
fn a_jetstream_source_over_mtls_with_a_password_feeds_the_ledger_and_a_refused_one_is_not_ready() {
    let ca = common::certs::Ca::new("nats source ca");
    let user = nkeys::KeyPair::new_user();
    let nats = SecureNats::start(&ca, &user, "nats-src-pw-31");
    let (client_cert, client_key, _) = ca.leaf(&["portcullis"], true);
    let rx = Receiver::ok();
    let start = |password: &str| {
        let dir = Server::prepare(&[]);
        for (name, text) in [
            ("ca.pem", &ca.pem),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
        ] {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(
            dir.path().join("env"),
            format!("NATS_PASSWORD={password}\n"),
        )
        .unwrap();
        let delivery = format!(
            "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms] }}\n  sources:\n    - {{ type: nats, url: \"nats://127.0.0.1:{}\", stream: DISPATCH, subject: dispatch, username: portcullis, password: \"env:NATS_PASSWORD\", tls: {{ ca: ca.pem, cert: client.pem, key: client.key }} }}",
            nats.port
        );
        let e = endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "");
        Dispatcher::start_in(
            dir,
            &[("t.yaml", tenant("t", &[e]))],
            &delivery,
            "sqlite://state/ledger.db",
        )
    };
    let good = start("nats-src-pw-31");
    let refused = start("a-wrong-password");
    wait_until("the source is subscribed", || {
        good.server.admin_get("/readyz").status == 200
    });
    assert_eq!(
        good.server.admin_get("/readyz").json()["sources"]["nats:DISPATCH"],
        true
    );
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::with_nkey(user.seed().unwrap())
            .require_tls(true)
            .add_root_certificates(nats.dir.path().join("ca.pem"))
            .add_client_certificate(
                good.server.dir.path().join("client.pem"),
                good.server.dir.path().join("client.key"),
            )
            .connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.publish(
            "dispatch",
            r#"{"tenant":"t","event_type":"a","id":"nats-tls-1","payload":{"over":"mtls"}}"#.into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    });
    let got = rx.wait_for(1);
    assert_eq!(got[0].body, br#"{"over":"mtls"}"#);
    let ready = refused.server.admin_get("/readyz");
    assert_eq!(ready.status, 503, "{ready:?}");
    assert_eq!(ready.json()["sources"]["nats:DISPATCH"], false);
    let log = refused.server.log();
    assert!(
        log.contains("outbound source nats") && log.to_lowercase().contains("authorization"),
        "{log}"
    );
    for d in [&good, &refused] {
        let log = d.server.log();
        assert!(
            !log.contains("nats-src-pw-31") && !log.contains("a-wrong-password"),
            "no password in the log"
        );
    }
    // The server goes away: the client keeps trying, and the source is not ready meanwhile.
    drop(nats);
    wait_until("/readyz notices the lost server", || {
        good.server.admin_get("/readyz").json()["sources"]["nats:DISPATCH"] == false
    });
}
