//! Issue 19, the service as an SRE meets it: a taken port stops the start with the address
//! and what to do (never a live process that serves nothing), `check` refuses listeners that
//! collide, spool files are private, answers end with a newline, 404s are logged with the
//! client address, and every metric series is there at zero from the start.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const GITHUB: &str = "name: github\npreset: github\nsecrets: [\"svc-secret\"]\n";

/// Runs `portcullis run` on `conf` and waits (bounded: a hang detector) for it to exit.
fn run_to_exit(conf: &str) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "-c", conf])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code(), err);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    (None, String::new())
}

#[test]
fn a_taken_listen_or_admin_port_stops_the_start_with_the_address() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "filters/github.yaml", GITHUB);
    for which in ["listen", "admin"] {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let (listen, admin) = match which {
            "listen" => (taken_port, free_port()),
            _ => (free_port(), taken_port),
        };
        let conf = write(
            dir.path(),
            "portcullis.yaml",
            &format!("listen:\n  - addr: 127.0.0.1:{listen}\nadmin: 127.0.0.1:{admin}\nfilters: filters/\nsinks:\n  spool: {{ type: spool, dir: spool/ }}\n"),
        );
        let (code, err) = run_to_exit(&conf);
        assert_eq!(code, Some(1), "{which}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{taken_port} is already in use")),
            "{which}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        drop(taken);
    }
}

#[test]
fn check_refuses_a_listener_twice_and_an_admin_on_a_listener() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "filters/github.yaml", GITHUB);
    let conf = write(
        dir.path(),
        "portcullis.yaml",
        "listen:\n  - addr: 127.0.0.1:8080\n  - addr: 127.0.0.1:8081\n  - addr: 127.0.0.1:8080\n  - addr: not-an-address\nadmin: 127.0.0.1:8081\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\n",
    );
    let (code, out, _) = portcullis(&["check", "-c", &conf]);
    assert_eq!(code, 1, "{out}");
    for (line, message) in [
        (
            "portcullis.yaml:4:",
            "listen addr 127.0.0.1:8080 is listed twice",
        ),
        (
            "portcullis.yaml:5:",
            "listen addr `not-an-address` is not IP:PORT",
        ),
        (
            "portcullis.yaml:6:",
            "admin 127.0.0.1:8081 is also a listener",
        ),
    ] {
        assert!(
            out.lines().any(|l| l.contains(line) && l.contains(message)),
            "{line} {message}:\n{out}"
        );
    }
}

#[test]
fn group_access_opens_the_spool_to_its_directory_group_and_keeps_setgid() {
    let dir = Server::prepare(&[("github.yaml", GITHUB)]);
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    // A deployment's setgid directory: segments take its group.
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o2700)).unwrap();
    // A segment from before `group_access` was set: it is opened up too.
    let older = spool.join(format!("{:020}.jsonl", 1));
    std::fs::write(&older, b"").unwrap();
    std::fs::set_permissions(&older, std::fs::Permissions::from_mode(0o600)).unwrap();
    let port = free_port();
    let server = Server::start_in(
        dir,
        port,
        &format!("  - addr: 127.0.0.1:{port}"),
        "  spool: { type: spool, dir: spool/, group_access: read-write }",
        "",
    );
    let body = br#"{"action":"opened"}"#;
    let r = server.post("/webhook/github", &sign(GITHUB, body, now(), "grp-1"), body);
    assert_eq!(r.status, 202);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&spool), 0o2770, "group may list, ack and delete");
    let segments: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!segments.is_empty());
    for path in segments {
        assert_eq!(mode(&path), 0o660, "{}", path.display());
    }
}

#[test]
fn spool_files_are_private_answers_end_with_a_newline_and_404s_name_the_client() {
    let server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    let body = br#"{"action":"opened"}"#;
    let r = server.post("/webhook/github", &sign(GITHUB, body, now(), "svc-1"), body);
    assert_eq!(r.status, 202);
    assert!(
        r.body.ends_with(b"}\n"),
        "{:?}",
        String::from_utf8_lossy(&r.body)
    );
    let dir = server.spool_dir();
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let r = server.post("/nowhere", &[], b"{}");
    expect(&r, 404, "unknown_provider");
    assert!(r.body.ends_with(b"\n"));
    wait_until("the 404 is logged", || {
        server.log().lines().any(|l| {
            l.contains("portcullis::access")
                && l.contains("status=404")
                && l.contains("client_ip=127.0.0.1")
        })
    });
}

#[test]
fn every_metric_series_of_the_contract_is_there_at_zero_from_the_start() {
    let server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").body).into_owned();
    for series in [
        r#"portcullis_requests_total{outcome="accepted",provider="github"} 0"#,
        r#"portcullis_requests_total{outcome="error",provider="github"} 0"#,
        r#"portcullis_requests_total{outcome="rejected",provider="unknown"} 0"#,
        r#"portcullis_rejections_total{provider="github",reason="invalid_signature"} 0"#,
        r#"portcullis_request_duration_seconds_count{provider="github"} 0"#,
        r#"portcullis_sink_errors_total{sink="spool"} 0"#,
        r#"portcullis_sink_publish_duration_seconds_count{sink="spool"} 0"#,
        "portcullis_dedup_entries 0",
        "portcullis_header_timeouts_total 0",
        "portcullis_dedup_journal_errors_total 0",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
}

#[test]
fn check_counts_in_words_and_warns_about_a_tolerance_nothing_uses() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "filters/github.yaml",
        "name: github\npreset: github\nsecrets: [\"s\"]\ntolerance: 5m\n",
    );
    let conf = write(
        dir.path(),
        "portcullis.yaml",
        "listen:\n  - addr: 127.0.0.1:8080\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\n",
    );
    let (code, out, _) = portcullis(&["check", "-c", &conf]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "github.yaml:4: warning: tolerance has no effect: preset `github` signs no timestamp"
        ),
        "{out}"
    );
    assert!(out.contains("ok (1 filter, 1 sink, 2 warnings)"), "{out}");
    let (code, out, _) = portcullis(&["check", "-c", "no/such/portcullis.yaml"]);
    assert_eq!(code, 1);
    assert!(out.contains("pass -c /path/to/portcullis.yaml"), "{out}");
    assert!(out.contains(": 1 error, 0 warnings"), "{out}");
}

#[test]
fn access_lines_leave_out_what_a_request_did_not_have() {
    let server = Server::start(&[("github.yaml", GITHUB)], spool_sink());
    let body = br#"{"action":"opened"}"#;
    let r = server.post(
        "/webhook/github",
        &sign(GITHUB, body, now(), "svc-log"),
        body,
    );
    assert_eq!(r.status, 202);
    let line = || {
        server
            .log()
            .lines()
            .find(|l| l.contains("portcullis::access") && l.contains("event_id=\"svc-log\""))
            .map(str::to_owned)
    };
    wait_until("the access line", || line().is_some());
    let line = line().unwrap();
    assert!(
        !line.contains("reason=") && !line.contains("shadow_verdict="),
        "{line}"
    );
    assert!(line.contains("client_ip=127.0.0.1"), "{line}");
}

#[test]
fn check_suggests_nested_keys_names_no_rust_types_and_folds_paths() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "filters/a.yaml",
        "name: a\npreset: github\nsecrets: [x]\nrate_limit: { per_secnd: 5 }\n",
    );
    write(
        dir.path(),
        "filters/b.yaml",
        "name: b\npreset: github\nsecrets: [x]\ndedup: { tll: 1h }\n",
    );
    let conf = write(
        dir.path(),
        "conf/portcullis.yaml",
        "listen:\n  - addr: 127.0.0.1:1\n    tsl: {}\nfilters: ../filters/\ndedup: { backnd: memory }\nsinks:\n  s: { type: spool, dri: x/ }\n",
    );
    let (code, out, _) = portcullis(&["check", "-c", &conf]);
    assert_eq!(code, 1, "{out}");
    for (line, message) in [
        (
            "portcullis.yaml:3:",
            "unknown key `listen.tsl`: did you mean `tls`?",
        ),
        (
            "portcullis.yaml:5:",
            "unknown key `dedup.backnd`: did you mean `backend`?",
        ),
        (
            "portcullis.yaml:7:",
            "unknown key `sinks.s.dri`: did you mean `dir`?",
        ),
        (
            "a.yaml:4:",
            "unknown key `rate_limit.per_secnd`: did you mean `per_second`?",
        ),
        ("b.yaml:", "this value has none of the forms the key takes"),
    ] {
        assert!(
            out.lines().any(|l| l.contains(line) && l.contains(message)),
            "{line} {message}:\n{out}"
        );
    }
    assert!(
        !out.contains("untagged enum") && !out.contains("DedupSpec"),
        "{out}"
    );
    assert!(!out.contains("/../"), "paths are folded:\n{out}");
}

fn spool_cli(server: &Server, args: &[&str]) -> (i32, String, String) {
    let conf = server.dir.path().join("portcullis.yaml");
    let mut all = vec!["spool"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", conf.to_str().unwrap()]);
    portcullis(&all)
}

fn post_padded(server: &Server, id: &str) -> u16 {
    let body = format!("{{\"action\":\"opened\",\"pad\":\"{}\"}}", "x".repeat(600));
    post_signed(server, GITHUB, id, body.as_bytes())
}

#[test]
fn a_consumer_reads_from_its_checkpoint_acks_and_consumed_segments_go() {
    let sinks = "  spool: { type: spool, dir: spool/, segment_size: 4KiB }";
    let server = Server::start(&[("github.yaml", GITHUB)], sinks);
    for i in 0..30 {
        assert_eq!(post_padded(&server, &format!("c-{i:02}")), 202);
    }
    let segments_before = std::fs::read_dir(server.spool_dir()).unwrap().count();
    assert!(segments_before > 3, "{segments_before} segments");
    let mut seen = Vec::new();
    loop {
        let (code, out, err) = spool_cli(&server, &["read", "--max", "7"]);
        assert_eq!(code, 0, "{err}");
        let next = err
            .trim()
            .strip_prefix("next: ")
            .expect("next: SEQ:OFFSET on stderr")
            .to_owned();
        let batch: Vec<String> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        // Reading again without an ack gives the same batch: nothing moved.
        assert_eq!(spool_cli(&server, &["read", "--max", "7"]).1, out);
        if batch.is_empty() {
            break;
        }
        seen.extend(batch);
        let (code, out, err) = spool_cli(&server, &["ack", &next]);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains(&format!("consumer default at {next}")),
            "{out}"
        );
    }
    let expected: Vec<String> = (0..30).map(|i| format!("c-{i:02}")).collect();
    assert_eq!(seen, expected, "every event once, in order");
    // Every sealed segment was consumed and deleted; the open one stays.
    let left = std::fs::read_dir(server.spool_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jsonl")
        })
        .count();
    assert_eq!(left, 1, "only the open segment is left");
    let (_, status, _) = spool_cli(&server, &["status"]);
    assert!(status.contains("open"), "{status}");
    let (code, _, err) = spool_cli(&server, &["ack", "1:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("before the checkpoint"), "{err}");
}

#[test]
fn below_min_free_the_spool_answers_503_and_is_not_ready() {
    let sinks = "  spool: { type: spool, dir: spool/, min_free: 1000000TiB }";
    let server = Server::start(&[("github.yaml", GITHUB)], sinks);
    let body = br#"{"action":"opened"}"#;
    let r = server.post(
        "/webhook/github",
        &sign(GITHUB, body, now(), "full-1"),
        body,
    );
    expect(&r, 503, "sink_unavailable");
    assert_eq!(server.admin_get("/readyz").status, 503);
    assert!(server.spooled().is_empty(), "nothing kept");
    assert!(server.log().contains("below min_free"), "{}", server.log());
}

#[test]
fn max_size_and_retention_delete_sealed_segments_only() {
    let sinks = "  spool: { type: spool, dir: spool/, segment_size: 4KiB, max_size: 12KiB }";
    let server = Server::start(&[("github.yaml", GITHUB)], sinks);
    for i in 0..60 {
        assert_eq!(post_padded(&server, &format!("m-{i:02}")), 202);
    }
    let total: u64 = std::fs::read_dir(server.spool_dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 12 * 1024 + 4 * 1024 + 2048, "{total} bytes kept");
    assert!(server.log().contains("spool segment deleted by max_size"));
    // The newest events are the ones kept.
    let ids = server.spooled_ids();
    assert!(ids.contains(&"m-59".to_owned()), "{ids:?}");

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "filters/github.yaml", GITHUB);
    let conf = write(
        dir.path(),
        "portcullis.yaml",
        "listen:\n  - addr: 127.0.0.1:1\nfilters: filters/\nsinks:\n  q: { type: http, url: \"http://127.0.0.1:1/\", fallback: b }\n  b: { type: spool, dir: b/, retention: 1d }\n  s: { type: spool, dir: s/, segment_size: 1MiB, max_size: 64KiB }\n",
    );
    let (code, out, _) = portcullis(&["check", "-c", &conf]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("fallback `b` has retention/max_size"), "{out}");
    assert!(
        out.contains("max_size must be at least segment_size"),
        "{out}"
    );
}

#[test]
fn a_fallback_spool_is_not_for_consumers() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "filters/github.yaml", GITHUB);
    let conf = write(
        dir.path(),
        "portcullis.yaml",
        "listen:\n  - addr: 127.0.0.1:1\nfilters: filters/\nsinks:\n  q: { type: http, url: \"http://127.0.0.1:1/\", fallback: b }\n  b: { type: spool, dir: b/ }\n",
    );
    let (code, _, err) = portcullis(&["spool", "read", "--sink", "b", "-c", &conf]);
    assert_eq!(code, 2);
    assert!(err.contains("spool `b` is a fallback"), "{err}");
    let (code, _, err) = portcullis(&["spool", "ack", "1:0", "-c", &conf]);
    assert_eq!(code, 2);
    assert!(err.contains("has no spool sink"), "{err}");
}
