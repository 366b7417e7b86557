//! Issue 14, SIGHUP: filters reload in place. New, changed and removed filters take effect
//! without a restart, the dedup cache and requests in flight are untouched, and a filter set
//! with errors is refused (logged with file:line) while the old one keeps serving.

mod common;

use common::*;

const OLD: &str = "name: github\npreset: github\nsecrets: [\"old-secret\"]\n";
const NEW: &str = "name: github\npreset: github\nsecrets: [\"new-secret\"]\n";
const STEADY: &str = "name: steady\npreset: github\nsecrets: [\"steady-secret\"]\n";
const GONE: &str = "name: gone\npreset: github\nsecrets: [\"gone-secret\"]\n";
const ADDED: &str =
    "name: added\npreset: github\nsecrets: [\"added-secret\"]\nrate_limit: { per_second: 1000 }\n";

fn post(server: &Server, filter: &str, path: &str, id: &str) -> Response {
    let body = format!("{{\"action\":\"opened\",\"id\":\"{id}\"}}");
    server.post(
        path,
        &sign(filter, body.as_bytes(), now(), id),
        body.as_bytes(),
    )
}

#[test]
fn sighup_reloads_changed_new_and_removed_filters_and_keeps_dedup_and_traffic() {
    let mut server = Server::start(
        &[
            ("github.yaml", OLD),
            ("steady.yaml", STEADY),
            ("gone.yaml", GONE),
        ],
        spool_sink(),
    );
    let traffic = Traffic::start(server.port, "/webhook/steady", STEADY);
    traffic.wait_for(202, 10);
    assert_eq!(post(&server, OLD, "/webhook/github", "before").status, 202);

    let filters = server.dir.path().join("filters");
    std::fs::write(filters.join("github.yaml"), NEW).unwrap();
    std::fs::remove_file(filters.join("gone.yaml")).unwrap();
    std::fs::write(filters.join("added.yaml"), ADDED).unwrap();
    server.signal("HUP");
    let mut n = 0;
    wait_until("the new secret is in force", || {
        n += 1;
        post(&server, NEW, "/webhook/github", &format!("probe-{n}")).status == 202
    });
    let r = post(&server, OLD, "/webhook/github", "old-signature");
    expect(&r, 401, "invalid_signature");
    // Accepted before the reload, retried after: still a duplicate.
    assert_eq!(post(&server, NEW, "/webhook/github", "before").status, 200);
    expect(
        &post(&server, GONE, "/webhook/gone", "g-1"),
        404,
        "unknown_provider",
    );
    assert_eq!(post(&server, ADDED, "/webhook/added", "a-1").status, 202);

    // A broken filter set is refused as a whole; the running one keeps serving.
    std::fs::write(filters.join("broken.yaml"), "name: broken\npreset: githb\n").unwrap();
    std::fs::write(filters.join("added.yaml"), "name: added\npreset: none\n").unwrap();
    server.signal("HUP");
    wait_until("the refusal is logged", || {
        server.log().contains("SIGHUP: filters not reloaded")
    });
    let log = server.log();
    assert!(
        log.contains("broken.yaml:2: error: unknown preset `githb`"),
        "{log}"
    );
    assert_eq!(
        post(&server, NEW, "/webhook/github", "after-refusal").status,
        202
    );
    // `added` still checks its signature: the refused set (preset none) never took effect.
    let unsigned = server.post(
        "/webhook/added",
        &h(&[("content-type", "application/json")]),
        b"{}",
    );
    expect(&unsigned, 401, "missing_signature");

    traffic.wait_for(202, traffic.count(202) + 10);
    let results = traffic.finish();
    assert!(
        results.iter().all(|(_, s, _)| *s == 202),
        "a request failed during a reload: {:?}",
        results.iter().find(|(_, s, _)| *s != 202)
    );
    assert!(server.is_alive());
}
