//! Issue 14, exactly once across restarts: with memory dedup, an event accepted before a
//! graceful restart, a SIGKILL or a graceful upgrade is still a duplicate afterwards (read
//! back from the spool's segments, or from the dedup journal for other sinks), and the sink
//! holds it once.

mod common;

use std::time::{Duration, Instant};

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"restart-secret\"]\n";

fn post_event(server: &Server, id: &str) -> u16 {
    let body = format!("{{\"action\":\"opened\",\"id\":\"{id}\"}}");
    post_signed(server, GITHUB, id, body.as_bytes())
}

fn stop_gracefully(server: &mut Server) {
    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(30)).is_some(),
        "SIGTERM"
    );
}

/// Upgrade to a new process (Pingora's `-u` + SIGQUIT), waiting for the old one to exit.
fn upgrade(server: &mut Server) {
    let new = server.spawn_upgrade();
    server.signal("QUIT");
    let mut old = server.adopt(new);
    let deadline = Instant::now() + Duration::from_secs(60);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.wait_healthy();
}

#[test]
fn spooled_ids_stay_duplicates_across_restart_crash_and_upgrade() {
    let mut server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    assert_eq!(post_event(&server, "before-all"), 202);
    assert_eq!(post_event(&server, "before-all"), 200);

    stop_gracefully(&mut server);
    server.restart();
    assert_eq!(
        post_event(&server, "before-all"),
        200,
        "after a graceful restart"
    );
    assert_eq!(post_event(&server, "after-restart"), 202);

    server.restart(); // SIGKILL, then start again
    assert_eq!(post_event(&server, "before-all"), 200, "after SIGKILL");
    assert_eq!(post_event(&server, "after-restart"), 200, "after SIGKILL");
    assert_eq!(post_event(&server, "after-crash"), 202);

    upgrade(&mut server);
    for id in ["before-all", "after-restart", "after-crash"] {
        assert_eq!(post_event(&server, id), 200, "{id} after an upgrade");
    }
    assert_eq!(post_event(&server, "after-upgrade"), 202);
    let ids = server.spooled_ids();
    assert_eq!(
        ids,
        [
            "after-crash",
            "after-restart",
            "after-upgrade",
            "before-all"
        ]
    );
    assert!(server
        .log()
        .contains("dedup: remembered the ids accepted within their TTL"));
}

#[test]
fn an_expired_id_is_accepted_again_after_a_restart() {
    let short = format!("{GITHUB}dedup: {{ ttl: 1s }}\n");
    let mut server = Server::start(&[("github.yaml", &short)], spool_sink());
    let body = b"{\"action\":\"opened\"}";
    let post = |server: &Server| {
        server
            .post(
                "/webhook/github",
                &sign(&short, body, now(), "short-1"),
                body,
            )
            .status
    };
    assert_eq!(post(&server), 202);
    std::thread::sleep(Duration::from_millis(1500));
    server.restart();
    assert_eq!(
        post(&server),
        202,
        "the TTL counts from arrival, across restarts too"
    );
}

#[test]
fn the_journal_remembers_ids_of_an_http_sink_across_a_crash() {
    let upstream = Upstream::start(202);
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let port = free_port();
    let listen = format!("  - addr: 127.0.0.1:{port}");
    let mut server = Server::start_in(
        dir,
        port,
        &listen,
        &http_sink(upstream.port),
        "dedup: { journal: state/dedup/ }\n",
    );
    for i in 0..20 {
        assert_eq!(post_event(&server, &format!("j-{i}")), 202);
    }
    server.restart(); // SIGKILL
    for i in 0..20 {
        assert_eq!(
            post_event(&server, &format!("j-{i}")),
            200,
            "j-{i} after SIGKILL"
        );
    }
    assert_eq!(post_event(&server, "j-new"), 202);
    assert_eq!(upstream.count(), 21, "the upstream saw every event once");
    assert!(server.dir.path().join("state/dedup").is_dir());
}

#[test]
fn a_redis_sink_stores_an_event_once_across_a_crash_without_a_journal() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    let provider = unique("marker");
    let filter = format!("name: {provider}\npreset: github\nsecrets: [\"restart-secret\"]\n");
    let sink = "  queue: { type: redis, url: \"redis://127.0.0.1:6379\", stream: \"webhooks:{provider}\", timeout: 2s }";
    let mut server = Server::start(&[("f.yaml", &filter)], sink);
    for i in 0..5 {
        assert_eq!(post_id(&server, &filter, &format!("m-{i}")), 202);
    }
    server.restart(); // SIGKILL: this node's cache is gone, the markers in Redis are not
    for i in 0..5 {
        // Acknowledged again (the event is in the stream), but not added a second time.
        assert_eq!(post_id(&server, &filter, &format!("m-{i}")), 202);
    }
    assert_eq!(entries(6379, &format!("webhooks:{provider}")).len(), 5);
}

#[test]
fn check_warns_when_a_queue_sink_has_no_journal() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "portcullis.yaml",
        "listen:\n  - addr: 127.0.0.1:8080\nfilters: filters/\nsinks:\n  queue: { type: nats, url: \"nats://127.0.0.1:4222\", stream: W, subject: \"w.{provider}\" }\n",
    );
    write(
        dir.path(),
        "filters/a.yaml",
        "name: a\npreset: github\nsecrets: [x]\n",
    );
    let (code, out, _) = portcullis(&["check", "-c", &conf]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ids accepted for sink queue are forgotten on a restart"),
        "{out}"
    );
}
