//! `fallback: spool`: with the broker down, events are spooled and acknowledged; once it is
//! back they all reach it exactly once and in order, even across a gateway restart between.

mod common;

use std::time::Duration;

use common::*;

/// The event ids in a private Redis's stream, in stream order.
fn event_ids(redis: &PrivateBroker, stream: &str) -> Vec<String> {
    entries(redis.port, stream)
        .iter()
        .map(|e| String::from_utf8(e["event_id"].clone()).unwrap())
        .collect()
}

const FILTER: &str = "name: fb\npreset: github\nsecrets: [\"fb\"]\nsink: queue\n";

fn send(server: &Server, i: u32) -> u16 {
    let id = format!("e{i:03}");
    let body = format!("{{\"i\":{i}}}").into_bytes();
    server
        .post("/webhook/fb", &sign(FILTER, &body, now(), &id), &body)
        .status
}

#[test]
fn spooled_events_reach_the_broker_exactly_once_in_order_across_a_gateway_restart() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    let mut redis = PrivateBroker::redis();
    let sinks = format!(
        "  queue: {{ type: redis, url: \"redis://127.0.0.1:{}\", stream: \"webhooks:{{provider}}\", timeout: 1s, fallback: backup }}\n  backup: {{ type: spool, dir: backup/ }}",
        redis.port
    );
    let mut server = Server::start(&[("f.yaml", FILTER)], &sinks);

    for i in 0..5 {
        assert_eq!(send(&server, i), 202);
    }
    assert_eq!(
        event_ids(&redis, "webhooks:fb").len(),
        5,
        "straight to Redis while it is up"
    );

    redis.kill();
    for i in 5..15 {
        assert_eq!(send(&server, i), 202, "the fallback spool takes it");
    }
    assert_eq!(
        server.admin_get("/readyz").status,
        200,
        "still taking events"
    );
    server.restart();
    for i in 15..20 {
        assert_eq!(
            send(&server, i),
            202,
            "spooled behind the backlog after the restart"
        );
    }
    assert_eq!(spool_lines(&server.dir.path().join("backup")).len(), 15);

    redis.spawn();
    let expected: Vec<String> = (0..20).map(|i| format!("e{i:03}")).collect();
    let mut got = Vec::new();
    for _ in 0..1000 {
        got = event_ids(&redis, "webhooks:fb");
        if got.len() >= expected.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(got, expected, "every event exactly once, in arrival order");
    // New events go straight through again once the backlog is gone.
    for _ in 0..500 {
        if send(&server, 20 + got.len() as u32) == 202
            && event_ids(&redis, "webhooks:fb").len() > got.len()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = event_ids(&redis, "webhooks:fb");
    assert!(after.len() > expected.len());
    let unique: std::collections::HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "nothing replayed twice");
}

#[test]
fn a_fallback_must_be_a_spool_no_filter_uses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("filters")).unwrap();
    std::fs::write(
        dir.path().join("filters/a.yaml"),
        "name: a\npreset: none\nallow: [\"127.0.0.1\"]\nsink: backup\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "listen: [{ addr: \"127.0.0.1:1\" }]\nfilters: filters/\nsinks:\n  q: { type: redis, url: \"redis://127.0.0.1:6379\", fallback: backup }\n  r: { type: redis, url: \"redis://127.0.0.1:6379\", fallback: q }\n  backup: { type: spool, dir: b/ }\n",
    )
    .unwrap();
    let (code, text) = check(&dir.path().join("p.yaml"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("fallback `q` must be a sink of type spool"),
        "{text}"
    );
    assert!(text.contains("is the fallback spool of `q`"), "{text}");
}
