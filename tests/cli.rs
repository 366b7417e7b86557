//! The CLI as a user meets it: `check`, `sign`, `verify`, `keygen`, and the README quick start.

mod common;

use std::process::Command;

use common::*;

#[test]
fn check_accepts_the_shipped_config() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/portcullis.yaml");
    let (code, out, _) = portcullis(&["check", "-c", conf]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (5 filters"), "{out}");
    assert!(
        out.contains("written literally"),
        "demo secrets are flagged: {out}"
    );
}

#[test]
fn check_reports_every_problem_with_file_line_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(dir.path(), "portcullis.yaml", "listen:\n  - addr: 127.0.0.1:8080\nfilters: filters/\nsinks:\n  spool: { type: spool, dir: spool/ }\nlisten_backlog: 5\nheader_timeout: 0s\n");
    write(dir.path(), "filters/a.yaml", "name: a\npreset: github\nsecrets: [env:PORTCULLIS_SURELY_UNSET_VAR]\ntolerence: 5m\nallow: [\"10.0.0.0/33\"]\n");
    write(
        dir.path(),
        "filters/b.yaml",
        "name: b\npath: /webhook/c\npreset: githb\n",
    );
    write(
        dir.path(),
        "filters/c.yaml",
        "name: c\npreset: none\nallow: [\"127.0.0.1\"]\n",
    );
    write(
        dir.path(),
        "filters/d.yaml",
        "name: d\npath: /webhook/c\npreset: none\nallow: [\"127.0.0.1\"]\n",
    );
    let (code, out, _) = portcullis(&["check", "-c", &conf]);
    assert_eq!(code, 1, "{out}");
    let expect = [
        ("portcullis.yaml:6:", "unknown key `listen_backlog`"),
        (
            "portcullis.yaml:7:",
            "header_timeout must be more than zero",
        ),
        ("a.yaml:3:", "PORTCULLIS_SURELY_UNSET_VAR is not set"),
        ("a.yaml:4:", "did you mean `tolerance`?"),
        ("a.yaml:5:", "10.0.0.0/33"),
        (
            "b.yaml:3:",
            "unknown preset `githb`: did you mean `github`?",
        ),
        (
            "d.yaml:2:",
            "route /webhook/c is already served by filter `c`",
        ),
    ];
    for (location, message) in expect {
        assert!(
            out.lines()
                .any(|l| l.contains(location) && l.contains(message)),
            "missing `{location} … {message}` in:\n{out}"
        );
    }
}

#[test]
fn run_refuses_an_invalid_config_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let conf = write(
        dir.path(),
        "portcullis.yaml",
        "listen:\n  - addr: nonsense\nfilters: filters/\nsinks: {}\n",
    );
    std::fs::create_dir_all(dir.path().join("filters")).unwrap();
    let (code, _, err) = portcullis(&["run", "-c", &conf]);
    assert_eq!(code, 1);
    assert!(
        err.contains("not IP:PORT") && err.contains("no sinks"),
        "{err}"
    );
}

#[test]
fn keygen_prints_a_fresh_url_key() {
    let (code, a, _) = portcullis(&["keygen"]);
    let (_, b, _) = portcullis(&["keygen"]);
    assert_eq!(code, 0);
    let a = a.trim();
    assert!(
        a.starts_with("wh_") && a.len() == 35 && a[3..].chars().all(|c| c.is_ascii_alphanumeric()),
        "{a}"
    );
    assert_ne!(a, b.trim());
}

#[test]
fn verify_judges_a_captured_raw_request() {
    let dir = tempfile::tempdir().unwrap();
    let filter = write(
        dir.path(),
        "stripe.yaml",
        "name: stripe\npreset: stripe\nsecrets: [whsec_test_secret]\n",
    );
    // printf '%s' '1700000000.{"id":"evt_1"}' | openssl dgst -sha256 -hmac whsec_test_secret
    let sig = "248a374f50f943a28b0f6ab50faf9a7e7e29b710fa26df9fb1618b9bf8ea9c9a";
    let raw = format!("POST /webhook/stripe HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1700000000,v1={sig}\r\nContent-Length: 14\r\n\r\n{{\"id\":\"evt_1\"}}");
    let good = write(dir.path(), "good.http", &raw);
    let (code, out, _) = portcullis(&[
        "verify",
        "--filter",
        &filter,
        "--request",
        &good,
        "--now",
        "1700000010",
    ]);
    assert_eq!(code, 0, "{out}");
    let verdict: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(verdict["accepted"], true);

    let (code, out, _) = portcullis(&[
        "verify",
        "--filter",
        &filter,
        "--request",
        &good,
        "--now",
        "1800000000",
    ]);
    assert_eq!(code, 1);
    assert!(out.contains("stale_timestamp"));
    assert!(!out.contains(sig), "the verdict never echoes a signature");

    let tampered = write(dir.path(), "bad.http", &raw.replace("evt_1", "evt_2"));
    let (code, out, _) = portcullis(&[
        "verify",
        "--filter",
        &filter,
        "--request",
        &tampered,
        "--now",
        "1700000010",
    ]);
    assert_eq!(
        (code, out.contains("invalid_signature")),
        (1, true),
        "{out}"
    );

    let garbage = write(dir.path(), "garbage.http", "\u{0}\u{1}not http");
    let (code, _, _) = portcullis(&["verify", "--filter", &filter, "--request", &garbage]);
    assert_eq!(code, 1);
    let (code, _, _) = portcullis(&[
        "verify",
        "--filter",
        "/nonexistent.yaml",
        "--request",
        &good,
    ]);
    assert_eq!(code, 2);
}

#[test]
fn the_readme_quick_start_curl_gets_a_202_and_lands_in_the_spool() {
    let filter_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/filters/github.yaml"))
            .unwrap();
    let server = Server::start(&[("github.yaml", &filter_text)], spool_sink());
    let dir = tempfile::tempdir().unwrap();
    let filter = write(dir.path(), "github.yaml", &filter_text);
    let base = format!("http://127.0.0.1:{}", server.port);
    let (code, curl, err) = portcullis(&[
        "sign",
        "--filter",
        &filter,
        "--body",
        r#"{"action":"opened"}"#,
        "--curl",
        &base,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(curl.starts_with("curl "), "{curl}");
    let out = Command::new("sh")
        .arg("-c")
        .arg(curl.trim())
        .output()
        .expect("curl is installed");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("\"status\":\"accepted\""),
        "{answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = server.spooled();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["body"], r#"{"action":"opened"}"#);

    let (code, headers, _) = portcullis(&[
        "sign",
        "--filter",
        &filter,
        "--body",
        "{}",
        "--timestamp",
        "1700000000",
        "--id",
        "fixed",
    ]);
    assert_eq!(code, 0);
    assert!(
        headers.contains("x-hub-signature-256: sha256=")
            && headers.contains("x-github-delivery: fixed"),
        "{headers}"
    );
}

#[test]
fn every_command_has_an_example_and_every_option_a_description() {
    let (code, top, _) = portcullis(&["--help"]);
    assert_eq!(code, 0);
    assert!(top.contains("RUST_LOG=info,pingora_core=warn"), "{top}");
    for command in [
        "run",
        "check",
        "sign",
        "keygen",
        "verify",
        "completions",
        "man",
    ] {
        let (code, help, _) = portcullis(&[command, "--help"]);
        assert_eq!(code, 0, "{command}");
        assert!(
            help.contains("Example"),
            "{command} has no example:\n{help}"
        );
        let options = help.split("Example").next().unwrap_or_default();
        for line in options.lines().filter(|l| l.trim_start().starts_with('-')) {
            // "  -c, --conf <CONF>  The server config …": the option, then its description.
            let described = line
                .trim_start()
                .split("  ")
                .filter(|part| !part.trim().is_empty())
                .count()
                >= 2;
            assert!(
                described,
                "{command}: an option without a description: {line:?}"
            );
        }
    }
    let (code, bash, _) = portcullis(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(bash.contains("_portcullis()"), "{bash}");
    let (code, man, _) = portcullis(&["man"]);
    assert_eq!(code, 0);
    assert!(man.contains(".TH portcullis 1"), "{man}");
}
