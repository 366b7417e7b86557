//! The redis sink against a real Redis: the machine's shared one on 6379, and a private
//! instance this test starts on a free port and kills to prove nothing acknowledged is lost.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const SHARED: &str = "127.0.0.1:6379";

fn filter(name: &str) -> String {
    format!("name: {name}\npreset: github\nsecrets: [\"rs\"]\nsink: queue\n")
}

fn redis_sink(port: u16, extra: &str) -> String {
    format!("  queue: {{ type: redis, url: \"redis://127.0.0.1:{port}\", stream: \"webhooks:{{provider}}\", timeout: 2s{extra} }}")
}

/// Every entry of a stream as (field → bytes) maps.
fn entries(port: u16, stream: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect()
        })
        .collect()
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

/// One request of the stream: event id, status, Retry-After.
type Sent = (String, u16, Option<String>);

struct PrivateRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn();
        r
    }

    /// AOF with fsync on every write: what the server acknowledged survives a kill.
    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", self.port)) {
                if let Ok(mut c) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("private redis-server did not start");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_redis_outage_mid_stream_loses_no_acknowledged_event_and_heals_without_restart() {
    if !broker("Redis", SHARED) {
        return;
    }
    let mut redis = PrivateRedis::start();
    let f = filter("fault");
    let server = Server::start(&[("f.yaml", &f)], &redis_sink(redis.port, ""));
    let results: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (results, stop, f, port) = (results.clone(), stop.clone(), f.clone(), server.port);
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                let id = format!("f-{i}");
                let body = format!("{{\"i\":{i}}}").into_bytes();
                let r = post(port, "/webhook/fault", &sign(&f, &body, now(), &id), &body);
                results.lock().unwrap().push((
                    id,
                    r.status,
                    r.header("retry-after").map(str::to_owned),
                ));
                i += 1;
            }
        })
    };
    let count = |status: u16| {
        results
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == status)
            .count()
    };
    let wait_until = |what: &str, cond: &dyn Fn() -> bool| {
        for _ in 0..3000 {
            if cond() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("gave up waiting for {what}");
    };
    wait_until("20 accepted", &|| count(202) >= 20);
    redis.kill();
    wait_until("10 refused while Redis is down", &|| count(503) >= 10);
    assert_eq!(
        server.admin_get("/readyz").status,
        503,
        "not ready while Redis is down"
    );
    let accepted_before = count(202);
    redis.spawn();
    wait_until("20 more accepted after Redis is back", &|| {
        count(202) >= accepted_before + 20
    });
    stop.store(true, Ordering::SeqCst);
    sender.join().unwrap();

    let results = results.lock().unwrap();
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
