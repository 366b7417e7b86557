//! The inbound event log through the real binary: every answered request (accepted,
//! duplicate, rejected, unrouted) becomes one record in the store, read back with
//! `GET /v1/events` and `portcullis events`; a store that does not take the records drops
//! and counts them without holding up a request; records past the retention go.

mod common;

use std::io::Write;

use common::dispatcher::*;
use common::*;

const SECRET: &str = "event-log-github-secret-77";
const INBOX: &str = "name: inbox\npreset: url-key\nkeys: store\n";

fn github() -> String {
    format!("name: github\npreset: github\nsecrets: [\"{SECRET}\"]\n")
}

fn start(store: &str, event_log: &str) -> Dispatcher {
    let github = github();
    let dir = Server::prepare(&[("github.yaml", &github), ("inbox.yaml", INBOX)]);
    Dispatcher::start_managed(
        dir,
        &[],
        store,
        LOCAL,
        &format!("  trusted_proxies: [127.0.0.1/32]\nevent_log: {event_log}\n"),
    )
}

fn push(d: &Dispatcher, id: &str, body: &str) -> Response {
    let headers = sign(&github(), body.as_bytes(), now(), id);
    d.server.post("/webhook/github", &headers, body.as_bytes())
}

fn events(d: &Dispatcher, query: &str) -> Vec<serde_json::Value> {
    let r = d.call("GET", &format!("/v1/events{query}"), &[], "");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["events"].as_array().unwrap().clone()
}

fn counter(d: &Dispatcher, name: &str) -> u64 {
    d.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics")) as u64
}

fn cli(d: &Dispatcher, args: &[&str]) -> (i32, String, String) {
    let conf = d.server.dir.path().join("portcullis.yaml");
    let mut all = vec!["events", "-c", conf.to_str().unwrap()];
    all.extend_from_slice(args);
    portcullis(&all)
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn every_answered_request_is_one_record_read_back_through_the_api_and_the_cli() {
    let d = start("{ url: \"sqlite://state/ledger.db\" }", "{ retention: 7d }");
    let r = d.call("POST", "/v1/filters/inbox/keys", &[], "");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let (key_id, key) = (
        r.json()["id"].as_str().unwrap().to_owned(),
        r.json()["key"].as_str().unwrap().to_owned(),
    );

    let body = r#"{"action":"opened","marker":"payload-never-logged"}"#;
    let accepted = push(&d, "evt-log-1", body);
    assert_eq!(accepted.status, 202);
    assert_eq!(push(&d, "evt-log-1", body).status, 200);
    let mut forged = sign(&github(), body.as_bytes(), now(), "evt-log-2");
    let signature = forged
        .iter_mut()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-hub-signature-256"))
        .unwrap();
    signature.1 = format!("sha256={}", "0".repeat(64));
    let r = d.server.post("/webhook/github", &forged, body.as_bytes());
    assert_eq!((r.status, r.reason()), (401, "invalid_signature".into()));
    assert_eq!(d.server.post("/nowhere", &h(&[]), b"{}").status, 404);
    let hook = |k: &str| {
        d.server
            .post(&format!("/webhook/inbox/{k}"), &h(&[]), b"{\"n\":1}")
    };
    assert_eq!(hook(&key).status, 202);
    assert_eq!(
        hook("wh_0123456789abcdefghijABCDEFGHIJkl").status,
        401,
        "a key the store does not hold"
    );

    wait_until("six records", || events(&d, "").len() == 6);
    let mut all = events(&d, "");
    // Newest first: the wrong key, the stored key, the unrouted path, the forgery, the
    // duplicate, the first delivery.
    let expected = [
        ("inbox", 401, "rejected"),
        ("inbox", 202, "accepted"),
        ("unknown", 404, "rejected"),
        ("github", 401, "rejected"),
        ("github", 200, "duplicate"),
        ("github", 202, "accepted"),
    ];
    let at = |e: &serde_json::Value| e["at"].as_str().unwrap().to_owned();
    assert!(
        all.windows(2).all(|w| at(&w[0]) >= at(&w[1])),
        "newest first: {all:?}"
    );
    // Requests that arrived in the same millisecond may be listed either way round.
    let outcome = |e: &serde_json::Value| {
        (
            e["provider"].as_str().unwrap().to_owned(),
            e["status"].as_u64().unwrap(),
            e["outcome"].as_str().unwrap().to_owned(),
        )
    };
    let rank = |e: &serde_json::Value| {
        let o = outcome(e);
        expected
            .iter()
            .position(|x| (x.0, x.1, x.2) == (o.0.as_str(), o.1, o.2.as_str()))
            .unwrap_or(usize::MAX)
    };
    all.sort_by_key(|e| (std::cmp::Reverse(at(e)), rank(e)));
    let outcomes: Vec<_> = all.iter().map(outcome).collect();
    let expected: Vec<_> = expected
        .iter()
        .map(|x| (x.0.to_owned(), x.1, x.2.to_owned()))
        .collect();
    assert_eq!(outcomes, expected);
    let first = &all[5];
    assert_eq!(first["event_id"], "evt-log-1");
    assert_eq!(first["client_ip"], "127.0.0.1");
    assert_eq!(first["bytes"], body.len());
    assert!(first["reason"].is_null() && first["key_id"].is_null());
    assert!(first["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(first["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        first["request_id"].as_str(),
        accepted.header("x-request-id"),
        "the record names the request as its answer did"
    );
    assert_eq!(all[3]["reason"], "invalid_signature");
    assert_eq!(all[2]["reason"], "unknown_provider");
    assert_eq!(all[1]["key_id"], key_id.as_str());
    assert!(all[0]["key_id"].is_null());

    // Narrowed as asked.
    assert_eq!(events(&d, "?provider=github").len(), 3);
    assert_eq!(events(&d, "?outcome=rejected").len(), 3);
    assert_eq!(events(&d, "?reason=invalid_signature").len(), 2);
    assert_eq!(
        events(&d, "?provider=github&outcome=accepted")[0]["event_id"],
        "evt-log-1"
    );
    let newest = events(&d, "?limit=1");
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["provider"], "inbox");
    assert_eq!(events(&d, "?since=1h").len(), 6);
    assert!(events(&d, "?since=2099-01-01T00:00:00Z").is_empty());
    for bad in ["?outcome=fine", "?limit=0", "?since=soon", "?page=2"] {
        let r = d.call("GET", &format!("/v1/events{bad}"), &[], "");
        assert_eq!(
            (r.status, r.reason()),
            (400, "invalid_query".into()),
            "{bad}"
        );
    }
    let r = d.call("GET", "/v1/events", &[("X-Account-Id", "acme")], "");
    assert_eq!(
        (r.status, r.reason()),
        (403, "admin_only".into()),
        "a tenant does not read inbound traffic"
    );
    assert_eq!(d.call("DELETE", "/v1/events", &[], "").status, 405);

    // The CLI reads the same store.
    let (code, out, err) = cli(&d, &["--provider", "github", "--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(listed, events(&d, "?provider=github"));
    let (code, out, _) = cli(&d, &["--outcome", "rejected", "--since", "1h"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(
        out.lines()
            .all(|l| l.contains("\t401\t") || l.contains("\t404\t")),
        "{out}"
    );
    let (code, _, err) = cli(&d, &["--outcome", "fine"]);
    assert_eq!(code, 2);
    assert!(err.contains("accepted, duplicate, rejected"), "{err}");

    assert_eq!(counter(&d, "portcullis_event_log_written_total"), 6);
    assert_eq!(counter(&d, "portcullis_event_log_dropped_total"), 0);
    // No secret, signature, key or payload in the store's files, nor in the records once
    // their pages are decompressed (every record, as the CLI decodes them).
    let mut dump = Vec::new();
    for entry in std::fs::read_dir(d.server.dir.path().join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            dump.extend(std::fs::read(path).unwrap());
        }
    }
    let (code, decoded, err) = cli(&d, &["--json", "--limit", "1000"]);
    assert_eq!(code, 0, "{err}");
    assert!(holds(decoded.as_bytes(), "evt-log-1"), "{decoded}");
    dump.extend(decoded.into_bytes());
    for secret in [SECRET, &key, "payload-never-logged", &"0".repeat(64)] {
        assert!(!holds(&dump, secret), "{secret} is in the store");
    }
}

#[test]
fn without_the_event_log_the_api_and_the_cli_say_how_to_turn_it_on() {
    let dir = Server::prepare(&[]);
    let d = Dispatcher::start_managed(dir, &[], "{ url: \"sqlite://state/ledger.db\" }", LOCAL, "");
    let r = d.call("GET", "/v1/events", &[], "");
    assert_eq!((r.status, r.reason()), (404, "event_log_off".into()));
    let (code, _, err) = cli(&d, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("event_log: { retention: 7d }"), "{err}");
    assert!(!d.metrics().contains("portcullis_event_log_dropped_total"));
}

#[test]
fn a_store_that_does_not_take_the_records_drops_and_counts_them_and_no_request_waits() {
    // (Skips with a message when absent; fails under PORTCULLIS_REQUIRE_BROKERS=1.)
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let d = start(
        &format!("{{ url: \"{}\" }}", db.url()),
        "{ retention: 7d, queue: 4 }",
    );
    assert_eq!(push(&d, "evt-before", r#"{"action":"a"}"#).status, 202);
    wait_until("the first record", || events(&d, "").len() == 1);

    // A transaction holding the table: every insert of the writer waits behind it.
    let mut holder = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            &db.name,
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("psql");
    let stdin = holder.stdin.as_mut().unwrap();
    writeln!(
        stdin,
        "BEGIN; LOCK TABLE inbound_event_pages IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
    )
    .unwrap();
    stdin.flush().unwrap();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("locked") {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "psql ended");
        }
    }
    // Every one answered while the table is still locked: none waited on the log.
    const SENT: u64 = 40;
    for i in 0..SENT {
        let r = push(&d, &format!("evt-held-{i}"), r#"{"action":"b"}"#);
        assert_eq!(r.status, 202);
    }
    wait_until("drops counted", || {
        counter(&d, "portcullis_event_log_dropped_total") > 0
    });
    let stdin = holder.stdin.as_mut().unwrap();
    writeln!(stdin, "COMMIT;").unwrap();
    drop(holder.stdin.take());
    let _ = holder.wait();

    // Every record is either written or counted as dropped, and the written ones are there.
    wait_until("every record accounted for", || {
        counter(&d, "portcullis_event_log_written_total")
            + counter(&d, "portcullis_event_log_dropped_total")
            == SENT + 1
    });
    let written = counter(&d, "portcullis_event_log_written_total");
    assert!(
        written > 1,
        "records queued behind the lock are written after it"
    );
    assert_eq!(events(&d, "?limit=1000").len() as u64, written);
    // And the log writes again.
    assert_eq!(push(&d, "evt-after", r#"{"action":"c"}"#).status, 202);
    wait_until("the record after the outage", || {
        events(&d, "?limit=1")[0]["event_id"] == "evt-after"
    });
}

#[test]
fn records_past_the_retention_are_deleted() {
    let d = start("{ url: \"sqlite://state/ledger.db\" }", "{ retention: 1s }");
    for i in 0..3 {
        assert_eq!(
            push(&d, &format!("evt-old-{i}"), r#"{"action":"a"}"#).status,
            202
        );
    }
    wait_until("three records written", || {
        counter(&d, "portcullis_event_log_written_total") == 3
    });
    wait_until("the records purged", || events(&d, "").is_empty());
}

#[test]
fn a_shutdown_writes_the_last_records_before_the_process_exits() {
    let mut d = start("{ url: \"sqlite://state/ledger.db\" }", "{ retention: 7d }");
    for i in 0..5 {
        assert_eq!(
            push(&d, &format!("evt-last-{i}"), r#"{"action":"a"}"#).status,
            202
        );
    }
    // At once: the writer is still lingering over its half-second page.
    d.server.signal("TERM");
    assert_eq!(
        d.server.wait_exit(std::time::Duration::from_secs(30)),
        Some(0),
        "{}",
        d.server.log()
    );
    let (code, out, err) = cli(&d, &["--json"]);
    assert_eq!(code, 0, "{err}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "evt-last-4",
            "evt-last-3",
            "evt-last-2",
            "evt-last-1",
            "evt-last-0"
        ]
    );
}
