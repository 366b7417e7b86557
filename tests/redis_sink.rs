//! The redis sink against a real Redis: the machine's shared one on 6379, and a private
//! instance this test starts on a free port and kills to prove nothing acknowledged is lost.

mod common;

use std::collections::HashSet;

use common::*;

const SHARED: &str = "127.0.0.1:6379";

fn filter(name: &str) -> String {
    format!("name: {name}\npreset: github\nsecrets: [\"rs\"]\nsink: queue\n")
}

fn redis_sink(port: u16, extra: &str) -> String {
    format!("  queue: {{ type: redis, url: \"redis://127.0.0.1:{port}\", stream: \"webhooks:{{provider}}\", timeout: 2s{extra} }}")
}

#[test]
fn n_signed_events_become_exactly_n_stream_entries_with_the_envelope() {
    if !broker("Redis", SHARED) {
        return;
    }
    let provider = unique("rs");
    let f = filter(&provider);
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(6379, ", maxlen: 10000"));
    let n = 30;
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (f, port, provider) = (f.clone(), server.port, provider.clone());
            std::thread::spawn(move || {
                for i in 0..n / 3 {
                    let body = format!("{{\"t\":{t},\"i\":{i},\"bin\":\"\\u00e9\"}}").into_bytes();
                    let headers = sign(&f, &body, now(), &format!("{t}-{i}"));
                    let path = format!("/webhook/{provider}");
                    assert_eq!(post(port, &path, &headers, &body).status, 202);
                    // The provider's retry of the same delivery.
                    assert_eq!(post(port, &path, &headers, &body).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stream = format!("webhooks:{provider}");
    let got = entries(6379, &stream);
    assert_eq!(got.len(), n, "one entry per event, none for the duplicates");
    let ids: HashSet<String> = got
        .iter()
        .map(|e| String::from_utf8(e["event_id"].clone()).unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    let first = &got[0];
    let id = String::from_utf8(first["event_id"].clone()).unwrap();
    let (t, i) = id.split_once('-').unwrap();
    let expected = format!("{{\"t\":{t},\"i\":{i},\"bin\":\"\\u00e9\"}}");
    assert_eq!(
        first["body"],
        expected.as_bytes(),
        "raw body bytes untouched"
    );
    assert_eq!(first["provider"], provider.as_bytes());
    assert_eq!(first["verified"], b"true");
    assert_eq!(first["source_ip"], b"127.0.0.1");
    assert!(!first["received_at"].is_empty());
    let headers: serde_json::Value = serde_json::from_slice(&first["headers"]).unwrap();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(server.admin_get("/readyz").status, 200);
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query(&mut client.get_connection().unwrap())
        .unwrap();
}

#[test]
fn a_redis_outage_mid_stream_loses_no_acknowledged_event_and_heals_without_restart() {
    if !broker("Redis", SHARED) {
        return;
    }
    let mut redis = PrivateBroker::redis();
    let f = filter("fault");
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(redis.port, ""));
    let traffic = Traffic::start(server.port, "/webhook/fault", &f);
    traffic.wait_for(202, 20);
    redis.kill();
    traffic.wait_for(503, 10);
    assert_eq!(
        server.admin_get("/readyz").status,
        503,
        "not ready while Redis is down"
    );
    let accepted_before = traffic.count(202);
    redis.spawn();
    traffic.wait_for(202, accepted_before + 20);
    let results = traffic.finish();
    assert!(
        results.iter().all(|(_, s, _)| *s == 202 || *s == 503),
        "only 202 or 503"
    );
    assert!(
        results
            .iter()
            .filter(|(_, s, _)| *s == 503)
            .all(|(_, _, retry)| retry.is_some()),
        "503 carries Retry-After"
    );
    let stored: HashSet<String> = entries(redis.port, "webhooks:fault")
        .iter()
        .map(|e| String::from_utf8(e["event_id"].clone()).unwrap())
        .collect();
    for (id, status, _) in results.iter() {
        if *status == 202 {
            assert!(stored.contains(id), "{id} got 202 but is not in the stream");
        }
    }
    // A refused event's retry passes now: its reservation was released.
    let (refused, _, _) = results.iter().find(|(_, s, _)| *s == 503).unwrap();
    let i: u32 = refused.trim_start_matches("f-").parse().unwrap();
    let body = format!("{{\"i\":{i}}}").into_bytes();
    assert_eq!(
        server
            .post("/webhook/fault", &sign(&f, &body, now(), refused), &body)
            .status,
        202
    );
    assert_eq!(server.admin_get("/readyz").status, 200);
}

#[test]
fn a_publish_that_timed_out_and_landed_later_is_not_stored_twice_by_the_retry() {
    if !broker("Redis", SHARED) {
        return;
    }
    let redis = PrivateBroker::redis();
    let f = filter("frozen");
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(redis.port, ""));
    assert_eq!(post_id(&server, &f, "warm"), 202);
    redis.signal("STOP");
    // The sink times out (2 s): 503, nothing acknowledged, but the XADD is queued in Redis.
    assert_eq!(post_id(&server, &f, "frozen-1"), 503);
    redis.signal("CONT");
    // The sender's retry: the event is in the stream once, and acknowledged.
    assert_eq!(post_id(&server, &f, "frozen-1"), 202);
    assert_eq!(post_id(&server, &f, "frozen-1"), 200);
    let ids: Vec<String> = entries(redis.port, "webhooks:frozen")
        .iter()
        .map(|e| String::from_utf8(e["event_id"].clone()).unwrap())
        .collect();
    assert_eq!(ids, ["warm", "frozen-1"]);
}

#[test]
fn the_first_request_after_a_redis_restart_is_accepted() {
    if !broker("Redis", SHARED) {
        return;
    }
    let mut redis = PrivateBroker::redis();
    let f = filter("restarted");
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(redis.port, ""));
    assert_eq!(post_id(&server, &f, "before"), 202);
    redis.kill();
    redis.spawn();
    // No request, no /readyz poll in between: the gateway finds its connection broken and
    // publishes on a new one.
    assert_eq!(post_id(&server, &f, "first-after"), 202);
    wait_until("/readyz after the restart", || {
        server.admin_get("/readyz").status == 200
    });
    assert_eq!(entries(redis.port, "webhooks:restarted").len(), 2);
}

#[test]
fn a_redis_that_forgot_the_publish_script_is_given_it_again() {
    if !broker("Redis", SHARED) {
        return;
    }
    let redis = PrivateBroker::redis();
    let f = filter("flushed");
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(redis.port, ""));
    assert_eq!(post_id(&server, &f, "s-1"), 202);
    let mut conn = redis.redis_connection().unwrap();
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query::<()>(&mut conn)
        .unwrap();
    // EVALSHA answers NOSCRIPT: the sink loads the script and publishes on the same request.
    assert_eq!(post_id(&server, &f, "s-2"), 202);
    assert_eq!(post_id(&server, &f, "s-2"), 200);
    let ids: Vec<String> = entries(redis.port, "webhooks:flushed")
        .iter()
        .map(|e| String::from_utf8(e["event_id"].clone()).unwrap())
        .collect();
    assert_eq!(ids, ["s-1", "s-2"]);
}

#[test]
fn a_publish_redis_refuses_leaves_no_marker_so_the_retry_is_stored() {
    if !broker("Redis", SHARED) {
        return;
    }
    let redis = PrivateBroker::redis();
    let f = filter("wrongtype");
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(redis.port, ""));
    let mut conn = redis.redis_connection().unwrap();
    // The stream's key holds a string: XADD fails with WRONGTYPE inside the script.
    redis::cmd("SET")
        .arg("webhooks:wrongtype")
        .arg("x")
        .query::<()>(&mut conn)
        .unwrap();
    assert_eq!(post_id(&server, &f, "w-1"), 503);
    redis::cmd("DEL")
        .arg("webhooks:wrongtype")
        .query::<()>(&mut conn)
        .unwrap();
    assert_eq!(post_id(&server, &f, "w-1"), 202);
    assert_eq!(entries(redis.port, "webhooks:wrongtype").len(), 1);
}

#[test]
fn a_tls_redis_with_an_acl_user_takes_events_and_refuses_a_wrong_ca_or_password_clearly() {
    let ca = common::certs::Ca::new("redis test ca");
    let redis = TlsRedis::start(&ca, "s3cret-redis-pw");
    let provider = unique("tls");
    let f = filter(&provider);
    let sink = |extra: &str| {
        format!(
            "  queue: {{ type: redis, url: \"rediss://portcullis@127.0.0.1:{}\", stream: \"webhooks:{{provider}}\", timeout: 2s, password: \"env:REDIS_PASSWORD\"{extra} }}",
            redis.port
        )
    };
    let good = Server::start_env(
        &[("f.yaml", &f)],
        &sink(", tls: { ca: ca.pem }"),
        &[("REDIS_PASSWORD", "s3cret-redis-pw")],
        &[("ca.pem", &ca.pem)],
    );
    assert_eq!(post_id(&good, &f, "over-tls"), 202);
    assert_eq!(good.admin_get("/readyz").status, 200);
    let stream = format!("webhooks:{provider}");
    assert_eq!(redis.cli("s3cret-redis-pw", &["XLEN", &stream]), "1");

    // A CA that did not sign the server: refused, never sent in the clear.
    let other = common::certs::Ca::new("another ca");
    let wrong_ca = Server::start_env(
        &[("f.yaml", &f)],
        &sink(", tls: { ca: ca.pem }"),
        &[("REDIS_PASSWORD", "s3cret-redis-pw")],
        &[("ca.pem", &other.pem)],
    );
    assert_eq!(post_id(&wrong_ca, &f, "wrong-ca"), 503);
    assert_eq!(wrong_ca.admin_get("/readyz").status, 503);
    assert!(
        wrong_ca.log().to_lowercase().contains("certificate"),
        "the log names the certificate:\n{}",
        wrong_ca.log()
    );

    let wrong_password = Server::start_env(
        &[("f.yaml", &f)],
        &sink(", tls: { ca: ca.pem }"),
        &[("REDIS_PASSWORD", "not-the-pw")],
        &[("ca.pem", &ca.pem)],
    );
    assert_eq!(post_id(&wrong_password, &f, "wrong-pw"), 503);
    assert_eq!(wrong_password.admin_get("/readyz").status, 503);
    let log = wrong_password.log();
    assert!(
        log.contains("WRONGPASS") || log.contains("AuthenticationFailed"),
        "{log}"
    );

    // No TLS settings against the TLS port: redis:// is plaintext, and it is refused.
    let plain = Server::start(
        &[("f.yaml", &f)],
        &redis_sink(redis.port, ", password: \"s3cret-redis-pw\""),
    );
    assert_eq!(post_id(&plain, &f, "plain"), 503);

    for server in [&good, &wrong_ca, &wrong_password] {
        let log = server.log();
        assert!(
            !log.contains("s3cret-redis-pw") && !log.contains("not-the-pw"),
            "no password in the log:\n{log}"
        );
    }
    assert_eq!(
        redis.cli("s3cret-redis-pw", &["XLEN", &stream]),
        "1",
        "only the good sink's event"
    );
}
