//! `map:` through the real binary: JSONPath fields of the verified body carried beside the
//! raw body by the spool (an object in the line), the redis sink (a `map` field), the http
//! sink (`X-Portcullis-Map`), the nats sink (`Portcullis-Map`) and the amqp sink
//! (`portcullis-map`; kafka's record header is checked in tests/kafka_sink.rs); a required
//! field that matches nothing is `400 missing_field` naming it; in shadow mode the event goes
//! on with the verdict.

mod common;

use common::*;

const SIGNER: &str = "name: push\npreset: github\nsecrets: [\"m4p\"]\n";

fn filter(extra: &str) -> String {
    format!("{SIGNER}map:\n  sha: $.head_commit.id\n  branch: {{ path: $.ref, required: true }}\n  authors: $.commits[*].author.name\n{extra}")
}

const BODY: &str = r#"{"ref":"refs/heads/main","head_commit":{"id":"4f1d"},"commits":[{"author":{"name":"Zoë"}},{"author":{"name":"Bo"}}]}"#;

fn expected() -> serde_json::Value {
    serde_json::json!({"sha": "4f1d", "branch": "refs/heads/main", "authors": ["Zoë", "Bo"]})
}

fn push(server: &Server, id: &str, body: &str) -> Response {
    let headers = sign(SIGNER, body.as_bytes(), now(), id);
    server.post("/webhook/push", &headers, body.as_bytes())
}

#[test]
fn the_mapped_fields_ride_beside_the_raw_body_and_a_required_one_missing_is_400() {
    let f = filter("");
    let server = Server::start(&[("push.yaml", &f)], spool_sink());
    assert_eq!(push(&server, "m-1", BODY).status, 202);
    let r = push(&server, "m-2", r#"{"head_commit":{"id":"x"}}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "missing_field", "field": "branch"})
    );
    let r = push(&server, "m-3", "not json");
    assert_eq!((r.status, r.reason()), (400, "invalid_json".into()));
    // A field that matches nothing, not required: null.
    assert_eq!(
        push(&server, "m-4", r#"{"ref":"refs/tags/v1"}"#).status,
        202
    );

    let lines = server.spooled();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["map"], expected());
    assert_eq!(lines[0]["body"], BODY, "the raw body, untouched");
    assert_eq!(
        lines[1]["map"],
        serde_json::json!({"sha": null, "branch": "refs/tags/v1", "authors": null})
    );
}

#[test]
fn in_shadow_mode_a_missing_required_field_is_recorded_and_the_event_forwarded() {
    let f = filter("mode: shadow\n");
    let server = Server::start(&[("push.yaml", &f)], spool_sink());
    assert_eq!(push(&server, "s-1", r#"{"head_commit":{}}"#).status, 202);
    let lines = server.spooled();
    assert_eq!(lines[0]["verified"], false);
    assert_eq!(lines[0]["reason"], "missing_field");
    assert!(lines[0].get("map").is_none());
}

#[test]
fn the_http_sink_sends_the_map_as_an_ascii_header() {
    let upstream = Upstream::start(200);
    let f = filter("");
    let server = Server::start(&[("push.yaml", &f)], &http_sink(upstream.port));
    assert_eq!(push(&server, "h-1", BODY).status, 202);
    let got = upstream.received.lock().unwrap();
    let header = got[0]
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-portcullis-map"))
        .map(|(_, v)| v.clone())
        .expect("X-Portcullis-Map");
    assert!(header.is_ascii(), "{header}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&header).unwrap(),
        expected()
    );
    assert_eq!(got[0].body, BODY.as_bytes());
}

#[test]
fn the_redis_sink_adds_a_map_field() {
    if !broker("Redis", "127.0.0.1:6379") {
        return;
    }
    let provider = unique("map");
    let f = filter("sink: queue\n").replace("name: push", &format!("name: {provider}"));
    let sink = "  queue: { type: redis, url: \"redis://127.0.0.1:6379\", stream: \"webhooks:{provider}\", timeout: 2s }";
    let server = Server::start(&[("f.yaml", &f)], sink);
    let headers = sign(SIGNER, BODY.as_bytes(), now(), "r-1");
    let r = server.post(&format!("/webhook/{provider}"), &headers, BODY.as_bytes());
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let got = entries(6379, &format!("webhooks:{provider}"));
    assert_eq!(got.len(), 1);
    let map: serde_json::Value = serde_json::from_slice(&got[0]["map"]).unwrap();
    assert_eq!(map, expected());
    assert_eq!(got[0]["body"], BODY.as_bytes());
}

#[test]
fn the_nats_sink_sends_the_map_as_a_header() {
    if !broker("NATS", "127.0.0.1:4222") {
        return;
    }
    let stream = unique("MAP");
    let prefix = unique("map");
    let f = filter("sink: queue\n");
    let sink = format!("  queue: {{ type: nats, url: \"nats://127.0.0.1:4222\", stream: {stream}, subject: \"{prefix}.{{provider}}\", create_stream: true, timeout: 2s }}");
    let server = Server::start(&[("push.yaml", &f)], &sink);
    assert_eq!(push(&server, "n-1", BODY).status, 202);
    runtime().block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect("127.0.0.1:4222").await.unwrap());
        let s = js.get_stream(&stream).await.unwrap();
        let m = s.get_raw_message(1).await.unwrap();
        let map = m.headers.get("Portcullis-Map").unwrap().as_str();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(map).unwrap(),
            expected()
        );
        assert_eq!(m.payload.as_ref(), BODY.as_bytes());
        js.delete_stream(&stream).await.unwrap();
    });
}

#[test]
fn the_amqp_sink_sends_the_map_as_a_header() {
    use lapin::options::*;
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
    if !broker("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let exchange = unique("map");
    let f = filter("sink: queue\n");
    let sink = format!("  queue: {{ type: amqp, url: \"{URL}\", exchange: {exchange}, routing_key: \"{{provider}}\", timeout: 3s }}");
    runtime().block_on(async {
        let conn = lapin::Connection::connect(URL, lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let (ex, q) = (
            ShortString::from(exchange.clone()),
            ShortString::from(exchange.clone()),
        );
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            ex.clone(),
            lapin::ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await
        .unwrap();
        let durable_queue = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q.clone(), durable_queue, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            q.clone(),
            ex.clone(),
            ShortString::from("#".to_owned()),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let server = Server::start(&[("push.yaml", &f)], &sink);
        assert_eq!(push(&server, "a-1", BODY).status, 202);
        let m = ch
            .basic_get(q.clone(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("the event is in the queue");
        let headers = m.delivery.properties.headers().clone().unwrap();
        let Some(AMQPValue::LongString(map)) = headers.inner().get("portcullis-map").cloned()
        else {
            panic!("no portcullis-map header: {headers:?}");
        };
        let map: serde_json::Value = serde_json::from_slice(map.as_bytes()).unwrap();
        assert_eq!(map, expected());
        assert_eq!(m.delivery.data, BODY.as_bytes());
        ch.queue_delete(q, QueueDeleteOptions::default())
            .await
            .unwrap();
        ch.exchange_delete(ex, ExchangeDeleteOptions::default())
            .await
            .unwrap();
    });
}
