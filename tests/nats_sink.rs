//! The nats sink against real JetStream: the machine's server on 4222, and a private
//! nats-server this test starts on a free port and kills mid-stream.

mod common;

use std::collections::HashSet;

use async_nats::jetstream;
use common::*;

const SHARED: &str = "127.0.0.1:4222";

fn filter(name: &str) -> String {
    format!("name: {name}\npreset: github\nsecrets: [\"ns\"]\n")
}

fn nats_sink(port: u16, stream: &str, prefix: &str) -> String {
    format!(
        "  queue: {{ type: nats, url: \"nats://127.0.0.1:{port}\", stream: {stream}, subject: \"{prefix}.{{provider}}.{{event_type}}\", create_stream: true, duplicate_window: 2m, timeout: 2s }}"
    )
}

/// Every message of a stream, in order.
fn messages(port: u16, stream: &str) -> Vec<jetstream::message::StreamMessage> {
    runtime().block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        let js = jetstream::new(client);
        let mut s = js.get_stream(stream).await.unwrap();
        let state = s.info().await.unwrap().state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..state.first_sequence + state.messages {
            out.push(s.get_raw_message(seq).await.unwrap());
        }
        out
    })
}

fn delete_stream(port: u16, stream: &str) {
    runtime().block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        let _ = jetstream::new(client).delete_stream(stream).await;
    });
}

fn header(m: &jetstream::message::StreamMessage, name: &str) -> String {
    m.headers
        .get(name)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[test]
fn n_signed_events_become_exactly_n_jetstream_messages_with_the_envelope() {
    if !broker("NATS", SHARED) {
        return;
    }
    let stream = unique("T");
    let prefix = unique("p");
    let f = filter("gh");
    let server = Server::start(&[("f.yaml", &f)], &nats_sink(4222, &stream, &prefix));
    let n = 30;
    post_pull_requests_twice(server.port, &f, n);
    let got = messages(4222, &stream);
    assert_eq!(
        got.len(),
        n,
        "one message per event, none for the duplicates"
    );
    let ids: HashSet<String> = got
        .iter()
        .map(|m| header(m, "Portcullis-Event-Id"))
        .collect();
    assert_eq!(ids.len(), n);
    let m = &got[0];
    let id = header(m, "Portcullis-Event-Id");
    let (t, i) = id.split_once('-').unwrap();
    assert_eq!(
        m.payload.as_ref(),
        format!("{{\"t\":{t},\"i\":{i}}}").as_bytes()
    );
    assert_eq!(
        m.subject.as_str(),
        format!("{prefix}.gh.pull_request"),
        "{{provider}} and {{event_type}} in the subject"
    );
    assert_eq!(header(m, "Portcullis-Event-Type"), "pull_request");
    assert_eq!(header(m, "Nats-Msg-Id"), format!("gh:{id}"));
    assert_eq!(header(m, "Portcullis-Provider"), "gh");
    assert_eq!(header(m, "Portcullis-Verified"), "true");
    assert_eq!(header(m, "content-type"), "application/json");
    assert!(m.headers.get("x-hub-signature-256").is_none());
    assert_eq!(server.admin_get("/readyz").status, 200);
    delete_stream(4222, &stream);
}

#[test]
fn a_nats_outage_mid_stream_loses_no_acknowledged_event_and_heals_without_restart() {
    if !broker("NATS", SHARED) {
        return;
    }
    let mut nats = PrivateBroker::nats();
    let f = filter("fault");
    let server = Server::start(&[("f.yaml", &f)], &nats_sink(nats.port, "FAULT", "fault"));
    let traffic = Traffic::start(server.port, "/webhook/fault", &f);
    traffic.wait_for(202, 20);
    nats.kill();
    traffic.wait_for(503, 3);
    let accepted_before = traffic.count(202);
    nats.spawn();
    traffic.wait_for(202, accepted_before + 20);
    let results = traffic.finish();
    assert!(
        results.iter().all(|(_, s, _)| *s == 202 || *s == 503),
        "only 202 or 503"
    );
    let stored: Vec<String> = messages(nats.port, "FAULT")
        .iter()
        .map(|m| header(m, "Portcullis-Event-Id"))
        .collect();
    let unique_stored: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique_stored.len(), stored.len(), "no event stored twice");
    for (id, status, _) in results.iter() {
        if *status == 202 {
            assert!(
                unique_stored.contains(id),
                "{id} got 202 but is not in the stream"
            );
        }
    }
    assert_eq!(server.admin_get("/readyz").status, 200);
}

#[test]
fn a_publish_that_timed_out_and_landed_later_is_dropped_by_nats_msg_id() {
    if !broker("NATS", SHARED) {
        return;
    }
    let nats = PrivateBroker::nats();
    let f = filter("frozen");
    let server = Server::start(&[("f.yaml", &f)], &nats_sink(nats.port, "FROZEN", "frozen"));
    assert_eq!(post_id(&server, &f, "warm"), 202);
    nats.signal("STOP");
    assert_eq!(post_id(&server, &f, "frozen-1"), 503);
    nats.signal("CONT");
    // Bounded (a hang detector): the retry is acknowledged once the client is back.
    wait_until("the retry is acknowledged", || {
        post_id(&server, &f, "frozen-1") != 503
    });
    assert_eq!(post_id(&server, &f, "frozen-1"), 200);
    let ids: Vec<String> = messages(nats.port, "FROZEN")
        .iter()
        .map(|m| header(m, "Portcullis-Event-Id"))
        .collect();
    assert_eq!(ids, ["warm", "frozen-1"]);
}

#[test]
fn the_first_request_after_a_nats_restart_is_accepted() {
    if !broker("NATS", SHARED) {
        return;
    }
    let mut nats = PrivateBroker::nats();
    let f = filter("restarted");
    let server = Server::start(
        &[("f.yaml", &f)],
        &nats_sink(nats.port, "RESTARTED", "restarted"),
    );
    assert_eq!(post_id(&server, &f, "before"), 202);
    nats.kill();
    nats.spawn();
    assert_eq!(post_id(&server, &f, "first-after"), 202);
    wait_until("/readyz after the restart", || {
        server.admin_get("/readyz").status == 200
    });
    assert_eq!(messages(nats.port, "RESTARTED").len(), 2);
}

#[test]
fn a_nats_server_with_mtls_and_nkeys_takes_events_and_refuses_a_wrong_ca_or_key_clearly() {
    let ca = common::certs::Ca::new("nats test ca");
    let user = nkeys::KeyPair::new_user();
    let nats = SecureNats::start(&ca, &user, "nats-pw-2207");
    let (client_cert, client_key, _) = ca.leaf(&["portcullis"], true);
    let f = filter("secure");
    let sink = format!(
        "  queue: {{ type: nats, url: \"nats://127.0.0.1:{}\", stream: SECURE, subject: \"secure.{{provider}}\", create_stream: true, timeout: 2s, nkey: \"env:NATS_NKEY\", tls: {{ ca: ca.pem, cert: client.pem, key: client.key }} }}",
        nats.port
    );
    let seed = user.seed().unwrap();
    let files = |ca_pem: &str| {
        vec![
            ("ca.pem", ca_pem.to_owned()),
            ("client.pem", client_cert.clone()),
            ("client.key", client_key.clone()),
        ]
    };
    let start = |env: &[(&str, &str)], files: Vec<(&str, String)>| {
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        Server::start_env(&[("f.yaml", &f)], &sink, env, &files)
    };
    let good = start(&[("NATS_NKEY", &seed)], files(&ca.pem));
    assert_eq!(post_id(&good, &f, "over-mtls"), 202);
    assert_eq!(good.admin_get("/readyz").status, 200);

    let other_ca = common::certs::Ca::new("another ca");
    let wrong_ca = start(&[("NATS_NKEY", &seed)], files(&other_ca.pem));
    assert_eq!(post_id(&wrong_ca, &f, "wrong-ca"), 503);
    assert_eq!(wrong_ca.admin_get("/readyz").status, 503);
    assert!(
        wrong_ca.log().contains("nats connect")
            && wrong_ca.log().to_lowercase().contains("certificate"),
        "{}",
        wrong_ca.log()
    );

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let wrong_key = start(&[("NATS_NKEY", &stranger)], files(&ca.pem));
    assert_eq!(post_id(&wrong_key, &f, "wrong-key"), 503);
    assert_eq!(wrong_key.admin_get("/readyz").status, 503);
    assert!(
        wrong_key.log().to_lowercase().contains("authorization"),
        "{}",
        wrong_key.log()
    );
    // The same server's password user, the password from env:.
    let by_password = {
        let sink = sink.replace(
            "nkey: \"env:NATS_NKEY\"",
            "username: portcullis, password: \"env:NATS_PASSWORD\"",
        );
        let files = files(&ca.pem);
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        Server::start_env(
            &[("f.yaml", &f)],
            &sink,
            &[("NATS_PASSWORD", "nats-pw-2207")],
            &files,
        )
    };
    assert_eq!(post_id(&by_password, &f, "by-password"), 202);
    assert_eq!(by_password.admin_get("/readyz").status, 200);
    for server in [&good, &wrong_ca, &wrong_key, &by_password] {
        let log = server.log();
        assert!(
            !log.contains(&seed) && !log.contains(&stranger) && !log.contains("nats-pw-2207"),
            "no seed or password in the log"
        );
    }

    // Read the stream back as the nkey user: exactly the two accepted events.
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::with_nkey(seed.clone())
            .require_tls(true)
            .add_root_certificates(nats.dir.path().join("ca.pem"))
            .add_client_certificate(write_temp(&client_cert), write_temp(&client_key))
            .connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .unwrap();
        let js = jetstream::new(client);
        let mut stream = js.get_stream("SECURE").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 2);
    });
}

/// `text` in a file of its own that lives as long as the test process.
fn write_temp(text: &str) -> std::path::PathBuf {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file.into_temp_path().keep().unwrap()
}

/// A NATS JWT (v2): `claims` with the common fields added, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let header = b64(&serde_json::json!({"typ": "JWT", "alg": "ed25519-nkey"}));
    let claims = b64(&serde_json::json!({
        "jti": unique("jti"),
        "iat": now(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    }));
    let signed = format!("{header}.{claims}");
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!(
        "{signed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A `.creds` file as `nsc` writes it: the user's JWT and seed.
fn creds(user_jwt: &str, user: &nkeys::KeyPair) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\n\n-----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n*************************************************************\n",
        user.seed().unwrap()
    )
}

#[test]
fn a_creds_file_signs_in_to_an_operator_mode_server_and_a_foreign_one_is_refused() {
    // An operator, an account with JetStream, and a user of it: decentralized auth, the way
    // a NATS deployment issues credentials (nsc), built here with the same ed25519 keys.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = jwt(
        &operator,
        &account.public_key(),
        "test-account",
        serde_json::json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    // JetStream needs the server's system account.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = jwt(
        &operator,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_claims = serde_json::json!({"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1});
    let user_jwt = jwt(&account, &user.public_key(), "gateway", user_claims.clone());
    // A user signed by an account this server does not know.
    let stranger = nkeys::KeyPair::new_user();
    let foreign_jwt = jwt(
        &nkeys::KeyPair::new_account(),
        &stranger.public_key(),
        "stranger",
        user_claims,
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = format!(
        "port: {port}\nhost: 127.0.0.1\njetstream {{ store_dir: \"{}\" }}\noperator: {operator_jwt}\nresolver: MEMORY\nsystem_account: {}\nresolver_preload: {{ {}: {account_jwt}, {}: {system_jwt} }}\n",
        dir.path().join("js").display(),
        system.public_key(),
        account.public_key(),
        system.public_key()
    );
    std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
    let mut child = Killed(
        std::process::Command::new("nats-server")
            .args(["-c", &dir.path().join("nats.conf").to_string_lossy()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("nats.log")).unwrap())
            .spawn()
            .expect("nats-server runs"),
    );
    wait_until("the operator-mode nats-server listens", || {
        if let Ok(Some(_)) = child.0.try_wait() {
            panic!(
                "nats-server exited: {}",
                std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default()
            );
        }
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let f = filter("creds");
    let sink = format!(
        "  queue: {{ type: nats, url: \"nats://127.0.0.1:{port}\", stream: CREDS, subject: \"creds.{{provider}}\", create_stream: true, timeout: 2s, creds: user.creds }}"
    );
    let start =
        |text: String| Server::start_env(&[("f.yaml", &f)], &sink, &[], &[("user.creds", &text)]);
    let good = start(creds(&user_jwt, &user));
    assert_eq!(post_id(&good, &f, "with-creds"), 202, "{}", good.log());
    assert_eq!(good.admin_get("/readyz").status, 200);
    let foreign = start(creds(&foreign_jwt, &stranger));
    assert_eq!(post_id(&foreign, &f, "foreign"), 503);
    assert_eq!(foreign.admin_get("/readyz").status, 503);
    let log = foreign.log();
    assert!(
        log.contains("nats connect") && log.to_lowercase().contains("authorization"),
        "{log}"
    );
    for server in [&good, &foreign] {
        let log = server.log();
        assert!(
            !log.contains(&user.seed().unwrap()) && !log.contains(&stranger.seed().unwrap()),
            "no seed in the log"
        );
    }
    runtime().block_on(async {
        let client = async_nats::ConnectOptions::with_credentials(&creds(&user_jwt, &user))
            .unwrap()
            .connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        let js = jetstream::new(client);
        let mut stream = js.get_stream("CREDS").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
    });
}

/// A child process killed when it goes out of scope, a failed assertion included.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
