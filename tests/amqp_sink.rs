//! The amqp sink against the machine's RabbitMQ: publisher confirms, persistent delivery,
//! `mandatory` routing, and an outage (`rabbitmqctl stop_app` / `start_app`) mid-stream.
//! The tests in this file share the broker's state, so they run one at a time.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Mutex;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, ShortString};
use lapin::{Connection, ConnectionProperties};

const BROKER: &str = "127.0.0.1:5672";
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
static SERIAL: Mutex<()> = Mutex::new(());

fn filter(name: &str) -> String {
    format!("name: {name}\npreset: github\nsecrets: [\"am\"]\n")
}

fn amqp_sink(exchange: &str) -> String {
    format!("  queue: {{ type: amqp, url: \"{URL}\", exchange: {exchange}, routing_key: \"{{provider}}\", timeout: 3s }}")
}

/// A durable queue bound to `exchange` for `key`, declared before the gateway publishes.
fn bind_queue(exchange: &str, queue: &str, key: &str) {
    runtime().block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        amqp_bound_queue(&conn, exchange, queue, key).await;
        let _ = conn.close(200, ShortString::from("done".to_owned())).await;
    });
}

/// Takes every message from a queue: (body, message id, delivery mode, provider header).
fn drain(queue: &str) -> Vec<(Vec<u8>, String, u8, String)> {
    runtime().block_on(async {
        let conn = Connection::connect(URL, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                ShortString::from(queue.to_owned()),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let props = &m.delivery.properties;
            let provider = props
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("portcullis-provider").cloned())
                .and_then(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            out.push((
                m.delivery.data.clone(),
                props
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                props.delivery_mode().unwrap_or(0),
                provider,
            ));
        }
        let _ = ch
            .queue_delete(
                ShortString::from(queue.to_owned()),
                QueueDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, ShortString::from("done".to_owned())).await;
        out
    })
}

#[test]
fn n_signed_events_become_exactly_n_confirmed_persistent_messages() {
    if !broker("RabbitMQ", BROKER) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exchange = unique("x");
    let queue = unique("q");
    bind_queue(&exchange, &queue, "am");
    let f = filter("am");
    let sink = amqp_sink(&exchange).replace(" }", ", channels: 3 }");
    let server = Server::start(&[("f.yaml", &f)], &sink);
    let n = 30;
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (f, port) = (f.clone(), server.port);
            std::thread::spawn(move || {
                for i in 0..n / 3 {
                    let body = format!("{{\"t\":{t},\"i\":{i}}}").into_bytes();
                    let headers = sign(&f, &body, now(), &format!("{t}-{i}"));
                    assert_eq!(post(port, "/webhook/am", &headers, &body).status, 202);
                    assert_eq!(post(port, "/webhook/am", &headers, &body).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.admin_get("/readyz").status, 200);
    // The publishes went over a pool: one connection with the three channels asked for.
    let channels = String::from_utf8(
        Command::new("rabbitmqctl")
            .args(["list_channels", "-q", "--no-table-headers", "name"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut per_connection = std::collections::HashMap::<&str, usize>::new();
    for line in channels.lines() {
        *per_connection
            .entry(line.rsplit_once(" (").map_or(line, |(c, _)| c))
            .or_default() += 1;
    }
    assert!(
        per_connection.values().any(|n| *n == 3),
        "rabbitmqctl list_channels:\n{channels}"
    );
    let got = drain(&queue);
    assert_eq!(
        got.len(),
        n,
        "one message per event, none for the duplicates"
    );
    let ids: HashSet<&String> = got.iter().map(|m| &m.1).collect();
    assert_eq!(ids.len(), n);
    let (body, id, mode, provider) = &got[0];
    let (t, i) = id.split_once('-').unwrap();
    assert_eq!(
        body.as_slice(),
        format!("{{\"t\":{t},\"i\":{i}}}").as_bytes()
    );
    assert_eq!(*mode, 2, "persistent delivery");
    assert_eq!(provider, "am");
}

#[test]
fn an_unroutable_event_is_503_not_a_silent_drop() {
    if !broker("RabbitMQ", BROKER) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exchange = unique("x");
    let f = filter("nobody");
    let server = Server::start(&[("f.yaml", &f)], &amqp_sink(&exchange));
    let body = b"{}";
    let r = server.post("/webhook/nobody", &sign(&f, body, now(), "u1"), body);
    assert_eq!((r.status, r.reason().as_str()), (503, "sink_unavailable"));
    // The channel stays usable: once a queue is bound, the retry passes.
    bind_queue(&exchange, &unique("q"), "nobody");
    assert_eq!(
        server
            .post("/webhook/nobody", &sign(&f, body, now(), "u1"), body)
            .status,
        202
    );
}

fn rabbitmqctl(command: &str) {
    let out = Command::new("rabbitmqctl")
        .arg(command)
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        out.status.success(),
        "rabbitmqctl {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Restarts the broker app even if the test fails while it is stopped.
struct Restart;

impl Drop for Restart {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

#[test]
fn a_rabbitmq_outage_mid_stream_loses_no_confirmed_event_and_heals_without_restart() {
    if !broker("RabbitMQ", BROKER) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exchange = unique("x");
    let queue = unique("q");
    bind_queue(&exchange, &queue, "fault");
    let f = filter("fault");
    let server = Server::start(&[("f.yaml", &f)], &amqp_sink(&exchange));
    let traffic = Traffic::start(server.port, "/webhook/fault", &f);
    traffic.wait_for(202, 20);
    let restart = Restart;
    rabbitmqctl("stop_app");
    traffic.wait_for(503, 3);
    let accepted_before = traffic.count(202);
    rabbitmqctl("start_app");
    drop(restart);
    traffic.wait_for(202, accepted_before + 20);
    let results = traffic.finish();
    assert!(
        results.iter().all(|(_, s, _)| *s == 202 || *s == 503),
        "only 202 or 503"
    );
    let stored: HashSet<String> = drain(&queue).into_iter().map(|m| m.1).collect();
    for (id, status, _) in results.iter() {
        if *status == 202 {
            assert!(stored.contains(id), "{id} got 202 but is not in the queue");
        }
    }
    assert_eq!(server.admin_get("/readyz").status, 200);
}

#[test]
fn the_first_request_after_a_rabbitmq_restart_is_accepted() {
    if !broker("RabbitMQ", BROKER) {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let exchange = unique("x");
    let queue = unique("q");
    bind_queue(&exchange, &queue, "restarted");
    let f = filter("restarted");
    let server = Server::start(&[("f.yaml", &f)], &amqp_sink(&exchange));
    let post = |id: &str| {
        let body = format!("{{\"id\":\"{id}\"}}");
        server
            .post(
                "/webhook/restarted",
                &sign(&f, body.as_bytes(), now(), id),
                body.as_bytes(),
            )
            .status
    };
    assert_eq!(post("before"), 202);
    let restart = Restart;
    rabbitmqctl("stop_app");
    rabbitmqctl("start_app");
    drop(restart);
    // No request in between: the broken connection is replaced by the first publish.
    assert_eq!(post("first-after"), 202);
    let stored: Vec<String> = drain(&queue).into_iter().map(|m| m.1).collect();
    assert_eq!(stored, ["before", "first-after"]);
    assert_eq!(server.admin_get("/readyz").status, 200);
}
