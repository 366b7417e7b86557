//! A fleet: three gateway processes behind haproxy (round robin, Debian's package), sharing
//! the machine's Redis for dedup and as the sink. Copies of one event land on different nodes
//! and still yield exactly one 202 and one stream entry; a node killed mid-stream loses no
//! acknowledged event; a Redis outage follows `on_error`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"fleet-secret\"]\n";

/// haproxy round robin over `backends`, retrying a refused connection on another node,
/// passing the client address in X-Forwarded-For.
fn haproxy(backends: &[u16]) -> Option<Haproxy> {
    Haproxy::start(|port| {
        let mut conf = format!(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 3\n  option redispatch 1\n  option forwardfor\nfrontend edge\n  bind 127.0.0.1:{port}\n  default_backend gateways\nbackend gateways\n  balance roundrobin\n"
        );
        for (i, backend) in backends.iter().enumerate() {
            conf +=
                &format!("  server node{i} 127.0.0.1:{backend} check inter 200ms fall 1 rise 2\n");
        }
        conf
    })
}

fn fleet(dedup: &str, sinks: &str) -> Vec<Server> {
    let extra = format!("trusted_proxies: [\"127.0.0.1\"]\ndedup: {dedup}\n");
    (0..3)
        .map(|_| Server::start_with(&[("github.yaml", GITHUB)], sinks, &extra))
        .collect()
}

fn send(port: u16, id: &str) -> u16 {
    let body = format!("{{\"id\":\"{id}\"}}");
    try_post(
        port,
        "/webhook/github",
        &sign(GITHUB, body.as_bytes(), now(), id),
        body.as_bytes(),
    )
    .map(|r| r.status)
    .unwrap_or(0)
}

#[test]
fn three_nodes_behind_haproxy_accept_each_event_exactly_once() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    let (stream, prefix) = (unique("fleet:"), unique("fleetdedup:"));
    let sinks = format!(
        "  redis: {{ type: redis, url: \"redis://127.0.0.1:6379\", stream: \"{stream}\" }}"
    );
    let dedup =
        format!("{{ backend: redis, url: \"redis://127.0.0.1:6379\", key_prefix: \"{prefix}:\" }}");
    let mut nodes = fleet(&dedup, &sinks);
    let Some(lb) = haproxy(&nodes.iter().map(|n| n.port).collect::<Vec<_>>()) else {
        return;
    };

    // Every id three times at once: round robin puts the copies on different nodes.
    let mut statuses: HashMap<String, Vec<u16>> = HashMap::new();
    for batch in 0..10 {
        let copies: Vec<_> = (0..5)
            .flat_map(|i| {
                let id = format!("dup-{batch}-{i}");
                (0..3).map(move |_| id.clone())
            })
            .map(|id| {
                let port = lb.port;
                std::thread::spawn(move || (id.clone(), send(port, &id)))
            })
            .collect();
        for copy in copies {
            let (id, status) = copy.join().unwrap();
            statuses.entry(id).or_default().push(status);
        }
    }
    for (id, got) in &statuses {
        assert_eq!(
            got.iter().filter(|s| **s == 202).count(),
            1,
            "{id}: {got:?}"
        );
        assert!(
            got.iter().all(|s| [200, 202, 409].contains(s)),
            "{id}: {got:?}"
        );
    }
    let served: Vec<usize> = nodes
        .iter()
        .map(|n| n.log().matches("portcullis::access").count())
        .collect();
    assert!(
        served.iter().all(|n| *n > 0),
        "every node took copies: {served:?}"
    );

    // A node dies in the middle of a stream: nothing it acknowledged is lost.
    let traffic = Traffic::start_named(lb.port, "/webhook/github", GITHUB, "kill");
    traffic.wait_for(202, 30);
    let victim = nodes.remove(1);
    drop(victim); // SIGKILL
    let seen = traffic.count(202);
    traffic.wait_for(202, seen + 30);
    let sent = traffic.finish();

    let kept: Vec<String> = entries(6379, &stream)
        .iter()
        .map(|e| String::from_utf8_lossy(&e["event_id"]).into_owned())
        .collect();
    let mut unique_kept = kept.clone();
    unique_kept.sort();
    unique_kept.dedup();
    assert_eq!(unique_kept.len(), kept.len(), "no event stored twice");
    for id in statuses.keys() {
        assert!(kept.contains(id), "{id} accepted but not in the stream");
    }
    for (id, status, _) in &sent {
        if *status == 202 {
            assert!(
                kept.contains(id),
                "{id} acknowledged, then lost with its node"
            );
        }
    }
    let known: Vec<&String> = statuses.keys().chain(sent.iter().map(|s| &s.0)).collect();
    assert!(
        kept.iter().all(|id| known.contains(&id)),
        "only events that were sent"
    );
}

#[test]
fn a_redis_outage_follows_on_error() {
    let mut redis = PrivateBroker::redis();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let reject = Server::start_with(
        &[("github.yaml", GITHUB)],
        spool_sink(),
        &format!("dedup: {{ backend: redis, url: \"{url}\", timeout: 300ms }}\n"),
    );
    let local = Server::start_with(
        &[("github.yaml", GITHUB)],
        spool_sink(),
        &format!("dedup: {{ backend: redis, url: \"{url}\", timeout: 300ms, on_error: local }}\n"),
    );
    assert_eq!(send(reject.port, "up-1"), 202);
    assert_eq!(send(reject.port, "up-1"), 200);
    assert_eq!(reject.admin_get("/readyz").status, 200);

    redis.kill();
    let refused = {
        let body = b"{\"id\":\"down-1\"}";
        reject.post(
            "/webhook/github",
            &sign(GITHUB, body, now(), "down-1"),
            body,
        )
    };
    assert_eq!(refused.status, 503);
    assert_eq!(refused.reason(), "dedup_unavailable");
    assert!(refused.header("retry-after").is_some());
    assert_eq!(reject.admin_get("/readyz").status, 503);
    assert_eq!(reject.spooled().len(), 1, "nothing kept while refusing");

    assert_eq!(
        send(local.port, "down-2"),
        202,
        "on_error: local keeps accepting"
    );
    assert_eq!(
        send(local.port, "down-2"),
        200,
        "…deduplicated by the node's own cache (no Redis call)"
    );
    let metrics = String::from_utf8_lossy(&local.admin_get("/metrics").body).into_owned();
    assert!(
        metrics.contains("portcullis_dedup_local_fallbacks_total 1"),
        "{metrics}"
    );

    redis.spawn();
    let mut status = 0;
    for _ in 0..100 {
        status = send(reject.port, "back-1");
        if status == 202 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, 202, "accepting again once Redis is back");
}

#[test]
fn a_fleet_rate_limit_admits_about_n_per_second_across_three_nodes() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    const N: f64 = 20.0;
    let name = unique("rl").replace(['x'], "");
    let filter =
        format!("name: {name}\npreset: none\nrate_limit: {{ per_second: 20, scope: fleet }}\n");
    let dedup = format!(
        "{{ backend: redis, url: \"redis://127.0.0.1:6379\", key_prefix: \"{}:\" }}",
        unique("rldedup")
    );
    let extra = format!("dedup: {dedup}\n");
    let nodes: Vec<Server> = (0..3)
        .map(|_| Server::start_with(&[("rl.yaml", filter.as_str())], spool_sink(), &extra))
        .collect();
    let path = format!("/webhook/{name}");
    let started = std::time::Instant::now();
    let senders: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(n, node)| {
            let (port, path) = (node.port, path.clone());
            std::thread::spawn(move || {
                let (mut admitted, mut limited, mut i) = (0u32, 0u32, 0u32);
                let begin = std::time::Instant::now();
                while begin.elapsed() < Duration::from_secs(5) {
                    let body = format!("{{\"node\":{n},\"i\":{i}}}");
                    match post(port, &path, &[], body.as_bytes()).status {
                        202 => admitted += 1,
                        429 => limited += 1,
                        other => panic!("unexpected {other}"),
                    }
                    i += 1;
                }
                (admitted, limited)
            })
        })
        .collect();
    let counts: Vec<(u32, u32)> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let elapsed = started.elapsed().as_secs_f64();
    let admitted: u32 = counts.iter().map(|c| c.0).sum();
    let limited: u32 = counts.iter().map(|c| c.1).sum();
    // Within one second's worth either way: GCRA's burst (N) on one side, the local
    // one-second windows in front (which pass requests at each window's start) on the other.
    let expected = N * elapsed;
    let ratio = f64::from(admitted) / expected;
    eprintln!(
        "fleet rate limit {N}/s over {elapsed:.2}s on 3 nodes: {admitted} admitted (expected {expected:.1}, ratio {ratio:.3}), {limited} limited, per node {counts:?}"
    );
    assert!(limited > 0, "the senders went over the limit");
    assert!(
        (N * (elapsed - 1.0)..=N * (elapsed + 1.0) + 1.0).contains(&f64::from(admitted)),
        "admitted {admitted}, expected about {expected:.1} (a node-local limit would admit ~3x)"
    );
    assert!(counts.iter().all(|c| c.0 > 0), "every node admitted some");
}

#[test]
fn a_fleet_per_source_limit_follows_the_sender_across_nodes() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    const PER_IP: f64 = 2.0;
    let name = unique("ip").replace(['x'], "");
    let filter = format!(
        "name: {name}\npreset: none\nrate_limit: {{ per_second: 100000, per_ip_per_second: 2, scope: fleet }}\n"
    );
    let extra = format!(
        "trusted_proxies: [127.0.0.1/32]\ndedup: {{ backend: redis, url: \"redis://127.0.0.1:6379\", key_prefix: \"{}:\" }}\n",
        unique("ipdedup")
    );
    let nodes: Vec<Server> = (0..3)
        .map(|_| Server::start_with(&[("ip.yaml", filter.as_str())], spool_sink(), &extra))
        .collect();
    let path = format!("/webhook/{name}");
    let from = |ip: &str| vec![("x-forwarded-for".to_string(), ip.to_string())];
    // One sender spread over the three nodes, as a balancer would spread it.
    let started = std::time::Instant::now();
    let mut admitted = 0;
    for i in 0..30 {
        let node = &nodes[i % 3];
        let body = format!("{{\"i\":{i}}}");
        match node
            .post(&path, &from("198.51.100.7"), body.as_bytes())
            .status
        {
            202 => admitted += 1,
            429 => {}
            other => panic!("unexpected {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A node-local limit would admit 2 per node per second (6 in the first second).
    assert!(admitted >= 2, "the sender's first requests pass");
    assert!(
        f64::from(admitted) <= PER_IP * (elapsed + 1.0),
        "admitted {admitted} in {elapsed:.2}s from one source, fleet limit {PER_IP}/s"
    );
    // Another sender is not charged for the first one's excess.
    assert_eq!(
        nodes[1]
            .post(&path, &from("203.0.113.9"), b"{\"other\":1}")
            .status,
        202
    );
}

#[test]
fn the_fleet_dedup_store_over_tls_with_an_acl_user_sees_duplicates_and_a_wrong_ca_is_refused() {
    let ca = common::certs::Ca::new("dedup test ca");
    let redis = TlsRedis::start(&ca, "dedup-pw-93");
    let dedup = |prefix: &str| {
        format!(
            "dedup: {{ backend: redis, url: \"rediss://portcullis@127.0.0.1:{}\", key_prefix: \"{prefix}:\", password: \"env:REDIS_PASSWORD\", tls: {{ ca: ca.pem }}, timeout: 500ms }}\n",
            redis.port
        )
    };
    let node = |prefix: &str, ca_pem: &str| {
        let dir = Server::prepare(&[("github.yaml", GITHUB)]);
        std::fs::write(dir.path().join("env"), "REDIS_PASSWORD=dedup-pw-93\n").unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
        let port = free_port();
        let listen = format!("  - addr: 127.0.0.1:{port}");
        Server::start_in(dir, port, &listen, spool_sink(), &dedup(prefix))
    };
    let (a, b) = (node("tlsdedup", &ca.pem), node("tlsdedup", &ca.pem));
    assert_eq!(send(a.port, "tls-1"), 202);
    assert_eq!(
        send(b.port, "tls-1"),
        200,
        "the other node sees it through the TLS store"
    );
    assert_eq!(
        redis.cli("dedup-pw-93", &["EXISTS", "tlsdedup:github:tls-1"]),
        "1"
    );

    let other = common::certs::Ca::new("another ca");
    let wrong = node("tlsdedup", &other.pem);
    assert_eq!(
        send(wrong.port, "tls-2"),
        503,
        "on_error reject: nothing kept"
    );
    assert_eq!(wrong.admin_get("/readyz").status, 503);
    assert!(wrong.log().contains("UnknownIssuer"), "{}", wrong.log());
    for n in [&a, &b, &wrong] {
        assert!(!n.log().contains("dedup-pw-93"), "no password in the log");
    }
}
