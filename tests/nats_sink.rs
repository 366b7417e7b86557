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
