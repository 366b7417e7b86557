//! Graceful upgrade, config changes through it, SIGTERM and the readiness drain, through the
//! real binary under a steady stream of signed requests.

mod common;

use std::net::TcpStream;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"lifecycle-secret\"]\n";

fn wait_child(child: &mut Child) -> Option<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

/// Pingora's graceful upgrade: a new process with `--upgrade` takes the listening sockets
/// over when the old one gets SIGQUIT; the old one finishes its requests and exits.
fn upgrade(server: &mut Server) {
    let new = server.spawn_upgrade();
    server.signal("QUIT");
    let mut old = server.adopt(new);
    assert_eq!(
        wait_child(&mut old),
        Some(0),
        "the old process exits cleanly; log:\n{}",
        server.log()
    );
    assert!(
        server.is_alive(),
        "the new process serves; log:\n{}",
        server.log()
    );
}

#[test]
fn upgrades_twice_and_takes_a_changed_filter_without_failing_a_request() {
    let mut server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    let streams: Vec<Traffic> = ["a", "b", "c"]
        .iter()
        .map(|p| Traffic::start_named(server.port, "/webhook/github", GITHUB, p))
        .collect();
    let traffic = &streams[0];
    traffic.wait_for(202, 20);

    // A config that does not load never takes the sockets: the running process keeps them.
    let broken = server.dir.path().join("filters/broken.yaml");
    std::fs::write(&broken, "name: broken\npreset: no-such-preset\n").unwrap();
    let mut refused = server.spawn_upgrade();
    assert_eq!(wait_child(&mut refused), Some(1));
    assert!(server.log().contains("the running gateway keeps serving"));
    std::fs::remove_file(&broken).unwrap();
    let seen = traffic.count(202);
    traffic.wait_for(202, seen + 20);

    upgrade(&mut server);
    let seen = traffic.count(202);
    traffic.wait_for(202, seen + 20);

    // A new filter arrives with the second upgrade.
    let hooks = "name: hooks\npreset: none\n";
    assert_eq!(server.post("/webhook/hooks", &[], b"{}").status, 404);
    std::fs::write(server.dir.path().join("filters/hooks.yaml"), hooks).unwrap();
    upgrade(&mut server);
    let seen = traffic.count(202);
    traffic.wait_for(202, seen + 20);
    assert_eq!(server.post("/webhook/hooks", &[], b"{}").status, 202);

    let sent: Vec<Sent> = streams.into_iter().flat_map(Traffic::finish).collect();
    let spooled = server
        .spooled()
        .iter()
        .filter(|l| l["provider"] == "github")
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_all_accepted_once(sent, spooled, "upgrades");
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits() {
    let upstream = Upstream::start(200);
    upstream.hold();
    let filter = "name: github\npreset: github\nsecrets: [\"lifecycle-secret\"]\nsink: app\n";
    let mut server = Server::start(&[("github.yaml", filter)], &http_sink(upstream.port));
    let port = server.port;
    let senders: Vec<_> = (0..8)
        .map(|i| {
            let filter = filter.to_owned();
            std::thread::spawn(move || {
                let body = format!("{{\"i\":{i}}}");
                let id = format!("term-{i}");
                try_post(
                    port,
                    "/webhook/github",
                    &sign(&filter, body.as_bytes(), now(), &id),
                    body.as_bytes(),
                )
                .map(|r| r.status)
                .map_err(|e| e.to_string())
            })
        })
        .collect();
    wait_until("8 requests held at the upstream", || upstream.count() == 8);

    server.signal("TERM");
    wait_until("listeners closed", || {
        TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    assert_eq!(
        server.wait_exit(Duration::ZERO),
        None,
        "requests still in flight"
    );
    upstream.release();
    let answers: Vec<_> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(answers.iter().all(|a| *a == Ok(202)), "{answers:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), Some(0));
    assert!(
        server.log().contains("no request in flight, exiting"),
        "exits as soon as drained, not after the grace period"
    );
}

#[test]
fn sigterm_with_a_drain_fails_readiness_first_and_keeps_serving() {
    let mut server = Server::start_with(&[("github.yaml", GITHUB)], spool_sink(), "drain: 60s\n");
    assert_eq!(server.admin_get("/readyz").status, 200);
    server.signal("TERM");
    wait_until("readyz fails", || server.admin_get("/readyz").status == 503);
    assert_eq!(server.admin_get("/readyz").json()["status"], "draining");
    assert_eq!(server.admin_get("/healthz").status, 200);
    let body = b"{\"during\":\"drain\"}";
    let response = server.post(
        "/webhook/github",
        &sign(GITHUB, body, now(), "drain-1"),
        body,
    );
    assert_eq!(response.status, 202, "still serving while draining");
    server.signal("INT");
    assert!(server.wait_exit(Duration::from_secs(60)).is_some());
}
