//! The management API through the real binary: endpoints created, changed, rotated and
//! deleted at run time on `outbound.api`; their secrets sealed in the store (a dump holds
//! none), shown once; callers scoped by `X-Account-Id` from trusted proxies only; the
//! per-tenant limits; the master key rotated; two nodes on one PostgreSQL.

mod common;

use std::time::Duration;

use common::dispatcher::*;
use common::receiver::Receiver;
use common::*;

/// A fresh master key file in `dir` (64 hex characters, as `openssl rand -hex 32` writes).
fn master_key(dir: &std::path::Path, name: &str) -> String {
    let key: [u8; 32] = rand::random();
    write(dir, name, &format!("{}\n", hex::encode(key)));
    name.to_owned()
}

fn sqlite_store(key: &str) -> String {
    format!("{{ url: \"sqlite://state/ledger.db\", master_key: \"file:{key}\" }}")
}

fn created(r: &Response) -> (String, String) {
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

/// Sends one message and returns the delivery the receiver got for it.
fn deliver(d: &Dispatcher, rx: &Receiver, tenant: &str, id: &str) -> common::receiver::Delivered {
    let message_id = d.queue(tenant, "order.updated", id, r#"{"n":1}"#);
    wait_until("the delivery", || {
        rx.all()
            .iter()
            .any(|r| r.header("webhook-id") == Some(message_id.as_str()))
    });
    rx.all()
        .into_iter()
        .find(|r| r.header("webhook-id") == Some(message_id.as_str()))
        .unwrap()
}

fn verifies(secrets: &[&str], delivery: &common::receiver::Delivered) {
    if let Some(verdict) = standard_webhooks_verify(secrets, r#"{"n":1}"#, delivery) {
        verdict.unwrap();
    }
}

/// Every byte of the store's files.
fn dump(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir.join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("ledger.db") {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn an_endpoint_made_through_the_api_is_delivered_to_signed_and_its_secret_never_kept_in_clear() {
    let rx = Receiver::ok();
    let dir = Server::prepare(&[]);
    let key = master_key(dir.path(), "master.key");
    let mut d = Dispatcher::start_managed(dir, &[], &sqlite_store(&key), LOCAL, "");
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let r = d.call(
        "POST",
        "/v1/endpoints",
        &[],
        &format!(
            r#"{{"tenant":"globex","name":"orders","url":"{url}","headers":{{"X-Env":"test"}}}}"#
        ),
    );
    let (id, secret) = created(&r);
    assert!(secret.starts_with("whsec_"), "{secret}");
    let fingerprint = r.json()["secrets"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    // Shown once: never in a later answer.
    for path in [
        format!("/v1/endpoints/{id}"),
        "/v1/endpoints?tenant=globex".into(),
    ] {
        let r = d.call("GET", &path, &[], "");
        assert_eq!(r.status, 200);
        let text = String::from_utf8_lossy(&r.body).into_owned();
        assert!(!text.contains(&secret), "{text}");
        assert!(text.contains(&fingerprint), "{text}");
    }

    let got = deliver(&d, &rx, "globex", "evt_1");
    assert_eq!(got.header("x-env"), Some("test"));
    verifies(&[&secret], &got);

    // Rotation: the old secret signs beside the new one for the overlap.
    let r = d.call(
        "POST",
        &format!("/v1/endpoints/{id}/rotate"),
        &[],
        r#"{"overlap":"1h"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let new_secret = r.json()["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    assert_eq!(r.json()["secrets"].as_array().unwrap().len(), 2);
    let got = deliver(&d, &rx, "globex", "evt_2");
    assert_eq!(
        got.header("webhook-signature").unwrap().split(' ').count(),
        2,
        "two secrets, two signatures"
    );
    verifies(&[&secret, &new_secret], &got);

    // A restart opens the sealed secrets again.
    d.server.restart();
    let got = deliver(&d, &rx, "globex", "evt_3");
    verifies(&[&new_secret], &got);

    // No secret in clear in the store's files, the log or a listing.
    let bytes = dump(d.server.dir.path());
    assert!(!bytes.is_empty());
    for s in [&secret, &new_secret] {
        let b64 = s.trim_start_matches("whsec_");
        assert!(!holds(&bytes, b64), "a secret is in the store in clear");
        assert!(!d.server.log().contains(b64), "a secret is in the log");
    }

    // A patch changes what it takes; a delete ends it.
    let r = d.call(
        "PATCH",
        &format!("/v1/endpoints/{id}"),
        &[],
        r#"{"event_types":["invoice.*"],"headers":null}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json().get("headers").is_none());
    let r = d.send(r#"{"tenant":"globex","event_type":"order.updated","id":"evt_4","payload":{}}"#);
    assert_eq!(r.status, 202);
    assert_eq!(r.json()["endpoints"], 0, "order.* no longer matches");
    let r = d.call("DELETE", &format!("/v1/endpoints/{id}"), &[], "");
    assert_eq!(r.status, 204);
    assert_eq!(
        d.call("GET", &format!("/v1/endpoints/{id}"), &[], "")
            .status,
        404
    );
    let r = d.send(r#"{"tenant":"globex","event_type":"a","id":"evt_5","payload":{}}"#);
    assert_eq!((r.status, r.reason()), (404, "unknown_tenant".into()));
}

#[test]
fn a_caller_scoped_by_a_trusted_proxy_sees_and_changes_only_its_own_tenant() {
    let rx = Receiver::ok();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let dir = Server::prepare(&[]);
    let key = master_key(dir.path(), "master.key");
    let files = [(
        "acme.yaml",
        tenant("acme", &[endpoint("file-one", &url, "")]),
    )];
    let d = Dispatcher::start_managed(
        dir,
        &files,
        &sqlite_store(&key),
        LOCAL,
        "  trusted_proxies: [127.0.0.1/32]\n",
    );
    let body = |tenant: &str, name: &str| {
        format!(r#"{{"tenant":"{tenant}","name":"{name}","url":"{url}"}}"#)
    };
    let (theirs, _) = created(&d.call("POST", "/v1/endpoints", &[], &body("globex", "g")));
    let acme = [("X-Account-Id", "acme")];

    // Created under the caller's tenant when it names none; never under another.
    let r = d.call(
        "POST",
        "/v1/endpoints",
        &acme,
        &format!(r#"{{"name":"a","url":"{url}"}}"#),
    );
    let (ours, _) = created(&r);
    assert_eq!(r.json()["tenant"], "acme");
    let r = d.call("POST", "/v1/endpoints", &acme, &body("globex", "x"));
    assert_eq!((r.status, r.reason()), (403, "forbidden_tenant".into()));

    let r = d.call("GET", "/v1/endpoints", &acme, "");
    assert_eq!(r.status, 200);
    let listed: Vec<String> = r.json()["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["tenant"].as_str().unwrap(),
                e["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(listed, ["acme/file-one", "acme/a"]);
    let r = d.call("GET", "/v1/endpoints?tenant=globex", &acme, "");
    assert_eq!(r.status, 403);

    // Another tenant's endpoint does not exist for this caller.
    for (method, path, body) in [
        ("GET", format!("/v1/endpoints/{theirs}"), ""),
        (
            "PATCH",
            format!("/v1/endpoints/{theirs}"),
            r#"{"ordered":true}"#,
        ),
        ("DELETE", format!("/v1/endpoints/{theirs}"), ""),
        ("POST", format!("/v1/endpoints/{theirs}/rotate"), ""),
    ] {
        let r = d.call(method, &path, &acme, body);
        assert_eq!(
            (r.status, r.reason()),
            (404, "not_found".into()),
            "{method} {path}"
        );
    }
    assert_eq!(
        d.call("GET", &format!("/v1/endpoints/{theirs}"), &[], "")
            .status,
        200,
        "the admin sees it"
    );
    assert_eq!(
        d.call("GET", &format!("/v1/endpoints/{ours}"), &acme, "")
            .status,
        200
    );

    // A file's endpoint is listed, read-only.
    let r = d.call("DELETE", "/v1/endpoints/file.acme.file-one", &acme, "");
    assert_eq!((r.status, r.reason()), (409, "read_only".into()));
    let r = d.call(
        "GET",
        "/v1/endpoints/file.acme.file-one",
        &[("X-Account-Id", "globex")],
        "",
    );
    assert_eq!(r.status, 404);

    // Messages too are scoped.
    let r = d.call(
        "POST",
        "/outbound",
        &acme,
        r#"{"tenant":"globex","event_type":"a","id":"1","payload":{}}"#,
    );
    assert_eq!((r.status, r.reason()), (403, "forbidden_tenant".into()));
    let r = d.call(
        "POST",
        "/outbound",
        &acme,
        r#"{"tenant":"acme","event_type":"a","id":"1","payload":{}}"#,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["endpoints"], 2);

    // Without the token nothing, whatever the header says; two headers are refused.
    let raw =
        "GET /v1/endpoints HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Account-Id: acme\r\n\r\n";
    let r = request(d.api, raw.as_bytes());
    assert_eq!((r.status, r.reason()), (401, "unauthorized".into()));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let raw = "GET /v1/endpoints HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer wrong\r\n\r\n";
    assert_eq!(request(d.api, raw.as_bytes()).status, 401);
    let r = d.call(
        "GET",
        "/v1/endpoints",
        &[("X-Account-Id", "acme"), ("X-Account-Id", "globex")],
        "",
    );
    assert_eq!((r.status, r.reason()), (400, "invalid_account".into()));

    // A malformed head carrying the token: refused, and the token is not logged.
    let raw = format!(
        "GET /v1/endpoints HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nBad\x01Header: x\r\n\r\n"
    );
    let _ = try_request(d.api, raw.as_bytes());
    assert_eq!(d.call("GET", "/v1/endpoints", &acme, "").status, 200);
    assert!(
        !d.server.log().contains(TOKEN),
        "the API token is in the log"
    );
}

#[test]
fn endpoints_are_checked_like_the_files_and_limited_per_tenant() {
    let dir = Server::prepare(&[]);
    let key = master_key(dir.path(), "master.key");
    // No allow_internal and no trusted proxy here.
    let d = Dispatcher::start_managed(
        dir,
        &[],
        &sqlite_store(&key),
        "{ allow_http: true }",
        "  tenant_limits: { endpoints: 2, calls_per_minute: 12 }\n",
    );
    let create = |tenant: &str, body: &str| {
        let mut v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["tenant"] = tenant.into();
        d.call("POST", "/v1/endpoints", &[], &v.to_string())
    };
    for (url, reason) in [
        ("http://127.0.0.1:9/x", "invalid_endpoint"),
        ("http://2130706433/x", "invalid_endpoint"),
        ("http://[::ffff:127.0.0.1]/x", "invalid_endpoint"),
        (
            "http://169.254.169.254/latest/meta-data",
            "invalid_endpoint",
        ),
        ("http://localhost:9/x", "ssrf_blocked"),
        ("ftp://example.com/x", "invalid_endpoint"),
    ] {
        let r = create("t0", &format!(r#"{{"name":"x","url":"{url}"}}"#));
        assert_eq!(
            (r.status, r.reason()),
            (400, reason.into()),
            "{url}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // Public, and never called: nothing is sent to these endpoints.
    let public = "http://1.1.1.1/hook";
    for (body, says) in [
        (
            format!(r#"{{"name":"x","url":"{public}","evnt_types":["a"]}}"#),
            "did you mean `event_types`",
        ),
        (
            format!(r#"{{"name":"x","url":"{public}","secrets":["env:HOME"]}}"#),
            "not set through the API",
        ),
        (
            format!(r#"{{"name":"x","url":"{public}","secret":"short"}}"#),
            "at least 24",
        ),
        (
            format!(r#"{{"name":"x","url":"{public}","scheme":"url-key"}}"#),
            "does not sign",
        ),
        (
            format!(r#"{{"name":"x","url":"{public}","timeout":"50s"}}"#),
            "at most",
        ),
        (
            format!(r#"{{"name":"bad name","url":"{public}"}}"#),
            "letters, digits",
        ),
        (r#"{"url":"http://1.1.1.1/"}"#.to_string(), "name"),
    ] {
        let r = create("t1", &body);
        assert_eq!(r.status, 400, "{body}");
        let detail = r.json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let r = d.call("POST", "/v1/endpoints", &[], "not json");
    assert_eq!((r.status, r.reason()), (400, "invalid_request".into()));

    // The X-WSS style is accepted with a supplied secret.
    let wss = r#"{"name":"legacy","url":"http://1.1.1.1/l","secret":"a-legacy-secret-of-some-length","scheme":"hmac","signature":{"header":"X-WSS-Signature","algorithm":"sha256","encoding":"hex","signed":"{timestamp}{body}"},"timestamp":{"header":"X-WSS-Timestamp","format":"unix"}}"#;
    let r = create("t2", wss);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["secret"], "a-legacy-secret-of-some-length");
    let r = create("t2", wss);
    assert_eq!((r.status, r.reason()), (409, "name_taken".into()));

    // Two endpoints per tenant here; then 429, and another tenant is not held back.
    let r = create("t2", &format!(r#"{{"name":"second","url":"{public}"}}"#));
    assert_eq!(r.status, 201);
    let r = create("t2", &format!(r#"{{"name":"third","url":"{public}"}}"#));
    assert_eq!((r.status, r.reason()), (429, "endpoint_limit".into()));
    assert_eq!(
        create("t3", &format!(r#"{{"name":"a","url":"{public}"}}"#)).status,
        201
    );

    // Twelve calls a minute per tenant (t2 made 4): the rest are 429 with Retry-After.
    let statuses: Vec<u16> = (0..10)
        .map(|_| d.call("GET", "/v1/endpoints?tenant=t2", &[], "").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        8,
        "{statuses:?}"
    );
    let r = d.call("GET", "/v1/endpoints?tenant=t2", &[], "");
    assert_eq!((r.status, r.reason()), (429, "rate_limited".into()));
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        d.call("GET", "/v1/endpoints?tenant=t3", &[], "").status,
        200
    );

    // No trusted proxy: the header is refused, not ignored.
    let r = d.call("GET", "/v1/endpoints", &[("X-Account-Id", "t3")], "");
    assert_eq!(
        (r.status, r.reason()),
        (403, "account_header_untrusted".into())
    );
}

#[test]
fn without_a_master_key_no_secret_can_be_stored() {
    let d = Dispatcher::start_managed(
        Server::prepare(&[]),
        &[],
        "{ url: \"sqlite://state/ledger.db\" }",
        LOCAL,
        "",
    );
    let r = d.call(
        "POST",
        "/v1/endpoints",
        &[],
        r#"{"tenant":"t","name":"x","url":"http://127.0.0.1:9/x"}"#,
    );
    assert_eq!((r.status, r.reason()), (409, "master_key_required".into()));
}

#[test]
fn rotating_the_master_key_rewraps_the_data_keys_and_deliveries_still_verify() {
    let rx = Receiver::ok();
    let dir = Server::prepare(&[]);
    let old = master_key(dir.path(), "old.key");
    let mut d = Dispatcher::start_managed(dir, &[], &sqlite_store(&old), LOCAL, "");
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let (_, secret) = created(&d.call(
        "POST",
        "/v1/endpoints",
        &[],
        &format!(r#"{{"tenant":"acme","name":"orders","url":"{url}"}}"#),
    ));
    let root = d.server.dir.path().to_path_buf();
    let conf = root.join("portcullis.yaml");
    let text = std::fs::read_to_string(&conf).unwrap();
    let new = master_key(&root, "new.key");
    let set = |store: &str| {
        std::fs::write(&conf, text.replace(&sqlite_store(&old), store)).unwrap();
    };

    // A node holding only the new key cannot open the data keys: it does not start.
    d.server.signal("KILL");
    let _ = d.server.wait_exit(Duration::from_secs(10));
    set(&sqlite_store(&new));
    let (code, _, err) = portcullis(&["run", "-c", conf.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("wrapped by master key"), "{err}");

    // The new key with the old as previous: it runs, and the rotation re-wraps.
    set(&format!(
        "{{ url: \"sqlite://state/ledger.db\", master_key: \"file:{new}\", previous_master_key: \"file:{old}\" }}"
    ));
    d.server.restart();
    verifies(&[&secret], &deliver(&d, &rx, "acme", "evt_1"));
    let (code, out, err) =
        portcullis(&["store", "rotate-master-key", "-c", conf.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("re-wrapped 1 data key"), "{out}");

    // The old key can go.
    set(&sqlite_store(&new));
    std::fs::remove_file(root.join(&old)).unwrap();
    d.server.restart();
    verifies(&[&secret], &deliver(&d, &rx, "acme", "evt_2"));
}

#[test]
fn two_nodes_on_one_postgresql_share_the_endpoints_and_the_tables_hold_no_secret() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let rx = Receiver::ok();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let a_dir = Server::prepare(&[]);
    let key = master_key(a_dir.path(), "master.key");
    let key_text = std::fs::read_to_string(a_dir.path().join(&key)).unwrap();
    let b_dir = Server::prepare(&[]);
    write(b_dir.path(), &key, &key_text);
    let store = format!("{{ url: \"{}\", master_key: \"file:{key}\" }}", db.url());
    let a = Dispatcher::start_managed(a_dir, &[], &store, LOCAL, "");
    let b = Dispatcher::start_managed(b_dir, &[], &store, LOCAL, "");

    // Made on A, used on B at once: B looks the tenant up in the store before saying 404.
    let (id, secret) = created(&a.call(
        "POST",
        "/v1/endpoints",
        &[],
        &format!(r#"{{"tenant":"acme","name":"orders","url":"{url}"}}"#),
    ));
    verifies(&[&secret], &deliver(&b, &rx, "acme", "evt_1"));

    // Rotated on A: within its poll, B signs with both.
    let r = a.call("POST", &format!("/v1/endpoints/{id}/rotate"), &[], "");
    assert_eq!(r.status, 200);
    let new_secret = r.json()["secret"].as_str().unwrap().to_owned();
    let mut n = 1;
    wait_until("node B signing with both secrets", || {
        n += 1;
        let got = deliver(&b, &rx, "acme", &format!("evt_{n}"));
        got.header("webhook-signature").unwrap().split(' ').count() == 2
    });
    verifies(
        &[&secret, &new_secret],
        &deliver(&b, &rx, "acme", "evt_last"),
    );

    // Deleted on A: B refuses its messages once it polled.
    assert_eq!(
        a.call("DELETE", &format!("/v1/endpoints/{id}"), &[], "")
            .status,
        204
    );
    wait_until("node B forgetting the endpoint", || {
        b.send(r#"{"tenant":"acme","event_type":"a","payload":{}}"#)
            .status
            == 404
    });

    let out = std::process::Command::new("pg_dump")
        .args(["-h", "127.0.0.1", "-U", "postgres", "--data-only", &db.name])
        .output()
        .expect("pg_dump (apt-get install postgresql-client)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        holds(&out.stdout, "tenant_keys"),
        "the dump has the data keys' table"
    );
    for s in [&secret, &new_secret] {
        assert!(
            !holds(&out.stdout, s.trim_start_matches("whsec_")),
            "a secret in the dump"
        );
    }
    drop(b);
    drop(a);
}

#[test]
fn the_openapi_document_is_what_the_live_api_answers() {
    let present = std::process::Command::new("st")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_BROKERS").is_none(),
            "no schemathesis (pip install -r tests/sdk/requirements.txt), and PORTCULLIS_REQUIRE_BROKERS=1"
        );
        eprintln!("skipped: no schemathesis (st) on PATH");
        return;
    }
    let rx = Receiver::ok();
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    let dir = Server::prepare(&[]);
    let key = master_key(dir.path(), "master.key");
    write(dir.path(), "filters/inbox.yaml", INBOX);
    let files = [("acme.yaml", tenant("acme", &[endpoint("orders", &url, "")]))];
    let d = Dispatcher::start_managed(
        dir,
        &files,
        &sqlite_store(&key),
        LOCAL,
        "  trusted_proxies: [127.0.0.1/32]\n  tenant_limits: { endpoints: 100000, calls_per_minute: 1000000 }\nevent_log: { retention: 1h }\n",
    );
    // Something for GET /v1/events to list.
    assert_eq!(
        d.server
            .post(
                "/webhook/inbox/wh_0123456789abcdefghijABCDEFGHIJkl",
                &h(&[]),
                b"{}"
            )
            .status,
        401
    );
    let out = std::process::Command::new("st")
        .current_dir(d.server.dir.path())
        .args([
            "run",
            &format!("http://127.0.0.1:{}/v1/openapi.json", d.api),
            "-H",
            &format!("Authorization: Bearer {TOKEN}"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--workers",
            "1",
            "--max-failures",
            "5",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.server.log().contains("panicked"), "{}", d.server.log());
}

#[test]
fn deleting_an_endpoint_dead_letters_what_waits_for_it_and_a_namesake_starts_clean() {
    let failing = Receiver::start(|_| common::receiver::Reply::Status(500));
    let dir = Server::prepare(&[]);
    let key = master_key(dir.path(), "master.key");
    // One retry, an hour away: a failed delivery waits.
    let d = Dispatcher::start_managed(
        dir,
        &[],
        &sqlite_store(&key),
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [1h] }",
        "",
    );
    let make = |port: u16| {
        d.call(
            "POST",
            "/v1/endpoints",
            &[],
            &format!(r#"{{"tenant":"acme","name":"orders","url":"http://127.0.0.1:{port}/x"}}"#),
        )
    };
    let (id, _) = created(&make(failing.port));
    let message = d.queue("acme", "a", "evt_1", r#"{"n":1}"#);
    d.wait_attempts(&message, "orders", 1);
    assert_eq!(
        d.call("DELETE", &format!("/v1/endpoints/{id}"), &[], "")
            .status,
        204
    );
    let dead = d.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["message_id"], message.as_str());
    assert_eq!(dead[0]["reason"], "endpoint_removed");

    // A new endpoint of that name takes new messages only.
    let ok = Receiver::ok();
    created(&make(ok.port));
    let later = d.queue("acme", "a", "evt_2", r#"{"n":2}"#);
    wait_delivered(&ok, std::slice::from_ref(&later));
    assert!(ok
        .all()
        .iter()
        .all(|r| r.header("webhook-id") == Some(later.as_str())));
}

const INBOX: &str = "name: inbox\npreset: url-key\nkeys: store\n";

/// A managed node on SQLite with a master key and these filters, for the keys API.
fn keys_dispatcher(filters: &[(&str, &str)]) -> Dispatcher {
    let dir = Server::prepare(filters);
    let key = master_key(dir.path(), "master.key");
    Dispatcher::start_managed(
        dir,
        &[],
        &sqlite_store(&key),
        LOCAL,
        "  trusted_proxies: [127.0.0.1/32]\n",
    )
}

fn hook(d: &Dispatcher, key: &str, n: usize) -> Response {
    d.server.post(
        &format!("/webhook/inbox/{key}"),
        &h(&[]),
        format!("{{\"n\":{n}}}").as_bytes(),
    )
}

#[test]
fn url_key_keys_in_the_store_are_made_disabled_and_regenerated_at_run_time() {
    let d = keys_dispatcher(&[("inbox.yaml", INBOX)]);
    let r = d.call("POST", "/v1/filters/inbox/keys", &[], "");
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let k1 = r.json()["key"].as_str().unwrap().to_owned();
    assert!(k1.starts_with("wh_") && k1.len() == 35, "{k1}");
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    assert_eq!(hook(&d, &k1, next()).status, 202);
    let r = hook(&d, "wh_0123456789abcdefghijABCDEFGHIJkl", next());
    assert_eq!((r.status, r.reason()), (401, "invalid_signature".into()));

    // Listed masked, never whole.
    let r = d.call("GET", "/v1/filters/inbox/keys", &[], "");
    assert_eq!(r.status, 200);
    let text = String::from_utf8_lossy(&r.body).into_owned();
    assert!(!text.contains(&k1), "{text}");
    assert!(text.contains(&format!("{}…", &k1[..7])), "{text}");

    // Disabled: refused at once; enabled again: accepted.
    let path = |action: &str| format!("/v1/filters/inbox/keys/{id}/{action}");
    assert_eq!(
        d.call("POST", &path("disable"), &[], "").json()["disabled"],
        true
    );
    assert_eq!(hook(&d, &k1, next()).status, 401);
    assert_eq!(d.call("POST", &path("enable"), &[], "").status, 200);
    assert_eq!(hook(&d, &k1, next()).status, 202);

    // Regenerated: the old key stops at once; with a grace it keeps working beside the new.
    let k2 = d.call("POST", &path("regenerate"), &[], "").json()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(hook(&d, &k1, next()).status, 401);
    assert_eq!(hook(&d, &k2, next()).status, 202);
    let r = d.call("POST", &path("regenerate"), &[], r#"{"grace":"1h"}"#);
    assert_eq!(r.status, 200);
    assert!(r.json()["previous_until"].is_string());
    let k3 = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(hook(&d, &k2, next()).status, 202, "inside the grace");
    assert_eq!(hook(&d, &k3, next()).status, 202);
    let r = d.call("POST", &path("regenerate"), &[], r#"{"grace":"30d"}"#);
    assert_eq!(r.status, 400);

    // Its uses are counted (written back each second).
    wait_until("the key's uses recorded", || {
        let r = d.call("GET", "/v1/filters/inbox/keys", &[], "");
        // Five requests were accepted with it (the refused ones count nothing).
        r.json()["keys"][0]["events"] == 5 && r.json()["keys"][0]["last_used_at"].is_string()
    });

    // Filters are the operator's: admin tokens only; other filters are unknown here.
    let r = d.call(
        "GET",
        "/v1/filters/inbox/keys",
        &[("X-Account-Id", "acme")],
        "",
    );
    assert_eq!((r.status, r.reason()), (403, "admin_only".into()));
    let r = d.call("POST", "/v1/filters/other/keys", &[], "");
    assert_eq!((r.status, r.reason()), (404, "unknown_filter".into()));
    let r = d.call("POST", "/v1/filters/inbox/keys/key_nope/disable", &[], "");
    assert_eq!(r.status, 404);

    let log = d.server.log();
    for k in [&k1, &k2, &k3] {
        assert!(!log.contains(k.as_str()), "a key in the log");
    }
    assert!(
        !holds(&dump(d.server.dir.path()), &k3),
        "a key in the store in clear"
    );
}

#[test]
fn a_graceful_stop_writes_the_last_uses_of_a_stored_key() {
    let mut d = keys_dispatcher(&[("inbox.yaml", INBOX)]);
    let r = d.call("POST", "/v1/filters/inbox/keys", &[], "");
    let k = r.json()["key"].as_str().unwrap().to_owned();
    wait_until("the key is in force", || hook(&d, &k, 0).status == 202);
    // Stopped at once: uses are written back each second, this stop must not lose the last.
    d.server.signal("TERM");
    assert!(
        d.server.wait_exit(Duration::from_secs(60)).is_some(),
        "the gateway stops"
    );
    d.server.restart();
    let r = d.call("GET", "/v1/filters/inbox/keys", &[], "");
    assert_eq!(
        r.json()["keys"][0]["events"],
        1,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

#[test]
fn a_keys_store_filter_added_or_removed_by_sighup_is_managed_at_once() {
    let d = keys_dispatcher(&[(
        "github.yaml",
        "name: github\npreset: github\nsecrets: [\"s\"]\n",
    )]);
    let r = d.call("POST", "/v1/filters/inbox/keys", &[], "");
    assert_eq!((r.status, r.reason()), (404, "unknown_filter".into()));

    let filters = d.server.dir.path().join("filters");
    std::fs::write(filters.join("inbox.yaml"), INBOX).unwrap();
    d.server.signal("HUP");
    let mut made = None;
    wait_until("the added filter's keys are managed", || {
        let r = d.call("POST", "/v1/filters/inbox/keys", &[], "");
        made = (r.status == 201).then(|| r.json()["key"].as_str().unwrap().to_owned());
        made.is_some()
    });
    let k = made.unwrap();
    let mut n = 0;
    wait_until("the new key opens the added filter", || {
        n += 1;
        hook(&d, &k, n).status == 202
    });

    std::fs::remove_file(filters.join("inbox.yaml")).unwrap();
    d.server.signal("HUP");
    wait_until("the removed filter is unknown to the API", || {
        d.call("GET", "/v1/filters/inbox/keys", &[], "").status == 404
    });
    let r = d.call("GET", "/v1/filters/inbox/keys", &[], "");
    assert_eq!(r.reason(), "unknown_filter");
}

#[test]
fn a_key_regenerated_on_one_node_is_refused_by_the_other_within_its_poll() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let a_dir = Server::prepare(&[("inbox.yaml", INBOX)]);
    let key = master_key(a_dir.path(), "master.key");
    let key_text = std::fs::read_to_string(a_dir.path().join(&key)).unwrap();
    let b_dir = Server::prepare(&[("inbox.yaml", INBOX)]);
    write(b_dir.path(), &key, &key_text);
    let store = format!("{{ url: \"{}\", master_key: \"file:{key}\" }}", db.url());
    let a = Dispatcher::start_managed(a_dir, &[], &store, LOCAL, "");
    let b = Dispatcher::start_managed(b_dir, &[], &store, LOCAL, "");
    let r = a.call("POST", "/v1/filters/inbox/keys", &[], "");
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let old = r.json()["key"].as_str().unwrap().to_owned();
    let mut n = 0;
    wait_until("node B accepting the new key", || {
        n += 1;
        hook(&b, &old, n).status == 202
    });
    let r = a.call(
        "POST",
        &format!("/v1/filters/inbox/keys/{id}/regenerate"),
        &[],
        "",
    );
    let new = r.json()["key"].as_str().unwrap().to_owned();
    let changed = std::time::Instant::now();
    wait_until("node B refusing the old key", || {
        n += 1;
        hook(&b, &old, n).status == 401
    });
    eprintln!(
        "node B refused the regenerated key {:?} after the change on node A",
        changed.elapsed()
    );
    n += 1;
    assert_eq!(hook(&b, &new, n).status, 202);
    drop(b);
    drop(a);
}

#[test]
fn an_api_endpoint_takes_its_schema_and_transform_inline_and_refuses_at_enqueue() {
    let rx = Receiver::ok();
    let dir = Server::prepare(&[]);
    let key = master_key(dir.path(), "master.key");
    let d = Dispatcher::start_managed(dir, &[], &sqlite_store(&key), LOCAL, "");
    let url = format!("http://127.0.0.1:{}/hook", rx.port);
    // A file name is the files' form: the API cannot make the server read its disk.
    let r = d.call(
        "POST",
        "/v1/endpoints",
        &[],
        &format!(r#"{{"tenant":"t","name":"e","url":"{url}","schema":"/etc/passwd"}}"#),
    );
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "invalid_endpoint");
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("not a file name"));
    let r = d.call(
        "POST",
        "/v1/endpoints",
        &[],
        &format!(
            r#"{{"tenant":"t","name":"e","url":"{url}","schema":{{"type":"object","required":["n"]}},"transform":{{"map":{{"count":"$.n"}}}}}}"#
        ),
    );
    let (_, secret) = created(&r);
    let r = d.send(r#"{"tenant":"t","event_type":"a","id":"bad","payload":{"m":1}}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "schema_violation", "endpoint": "e", "pointer": "", "keyword": "required"})
    );
    d.queue("t", "a", "good", r#"{"n": 3, "noise": true}"#);
    let got = rx.wait_for(1);
    assert_eq!(got[0].body, br#"{"count":3}"#);
    if let Some(verdict) = standard_webhooks_verify(&[&secret], r#"{"count":3}"#, &got[0]) {
        verdict.unwrap();
    }
}
