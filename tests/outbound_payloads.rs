//! Payload contracts on outbound endpoints through the real binary: an endpoint's JSON Schema
//! refuses a message at enqueue (`400 schema_violation` naming the endpoint, pointer and
//! keyword, nothing stored or delivered), and its `transform: { map }` shapes the delivered
//! body, which is what is signed (the standardwebhooks package verifies it).

mod common;

use common::dispatcher::*;
use common::receiver::Receiver;
use common::*;

const SCHEMA: &str = r#"{
  "type": "object",
  "required": ["order"],
  "properties": {
    "order": { "type": "object", "required": ["id"], "properties": { "id": { "type": "integer" } } }
  }
}"#;

fn endpoints(rx: &Receiver) -> Vec<(&'static str, String)> {
    let base = format!("http://127.0.0.1:{}", rx.port);
    let shaped = endpoint(
        "shaped",
        &format!("{base}/shaped"),
        "    event_types: [\"order.*\"]\n    schema: schemas/order.json\n    transform:\n      map:\n        order: $.order.id\n        skus: $.items[*].sku\n        who: { path: $.customer.email, required: true }\n",
    );
    let raw = endpoint("raw", &format!("{base}/raw"), "");
    vec![("acme.yaml", tenant("acme", &[shaped, raw]))]
}

#[test]
fn a_schema_refuses_at_enqueue_and_a_transform_shapes_and_signs_what_is_delivered() {
    let rx = Receiver::ok();
    let dir = Server::prepare(&[]);
    std::fs::create_dir_all(dir.path().join("endpoints/schemas")).unwrap();
    std::fs::write(dir.path().join("endpoints/schemas/order.json"), SCHEMA).unwrap();
    let d = Dispatcher::start_in(dir, &endpoints(&rx), LOCAL, "sqlite://state/ledger.db");

    let payload = r#"{"order": {"id": 42}, "items": [{"sku": "a-1"}, {"sku": "b-2"}], "customer": {"email": "zoë@example.com"}}"#;
    let id = d.queue("acme", "order.created", "evt_ok", payload);
    let got = rx.wait_for(2);
    let raw = got.iter().find(|r| r.path == "/raw").unwrap();
    assert_eq!(
        raw.body,
        payload.as_bytes(),
        "no transform: the exact bytes"
    );
    let shaped = got.iter().find(|r| r.path == "/shaped").unwrap();
    let body: serde_json::Value = serde_json::from_slice(&shaped.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"order": 42, "skus": ["a-1", "b-2"], "who": "zoë@example.com"})
    );
    assert!(shaped.body.is_ascii(), "the mapped body is ASCII JSON");
    assert_eq!(shaped.header("webhook-id"), Some(id.as_str()));
    assert_eq!(shaped.header("content-type"), Some("application/json"));
    let text = String::from_utf8(shaped.body.clone()).unwrap();
    if let Some(verdict) = standard_webhooks_verify(&[SECRET], &text, shaped) {
        verdict.expect("the signature covers the transformed body");
    }

    // A payload the schema refuses: 400 naming where and why, never the value; nothing kept.
    let bad = r#"{"tenant":"acme","event_type":"order.created","id":"evt_bad","payload":{"order":{"id":"forty-two"},"customer":{"email":"x@y"}}}"#;
    let r = d.send(bad);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "schema_violation", "endpoint": "shaped", "pointer": "/order/id", "keyword": "type"})
    );
    assert!(!String::from_utf8_lossy(&r.body).contains("forty-two"));
    // A required transform field that matches nothing: refused too.
    let r = d.send(r#"{"tenant":"acme","event_type":"order.created","id":"evt_nowho","payload":{"order":{"id":7}}}"#);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_message");
    assert_eq!(r.json()["field"], "payload");
    assert!(
        r.json()["detail"].as_str().unwrap().contains("`who`"),
        "{}",
        r.json()
    );
    // The endpoint takes order.* only: another type is not held to its schema.
    d.queue("acme", "user.created", "evt_user", r#"{"not":"an order"}"#);
    let after = rx.wait_for(3);
    assert_eq!(
        after.iter().filter(|r| r.path == "/shaped").count(),
        1,
        "nothing refused reached the shaped endpoint"
    );
    assert_eq!(
        after
            .iter()
            .filter(|r| r.path == "/raw")
            .map(|r| r.body.clone())
            .collect::<Vec<_>>(),
        [
            payload.as_bytes().to_vec(),
            br#"{"not":"an order"}"#.to_vec()
        ],
        "a refused message is delivered to no endpoint"
    );
    let dead = d.dead_letters();
    assert!(
        dead.is_empty(),
        "refusals are answers, not dead letters: {dead:?}"
    );
}

#[test]
fn check_reports_an_endpoint_schema_that_does_not_compile_and_a_bad_transform() {
    let dir = Server::prepare(&[]);
    std::fs::create_dir_all(dir.path().join("endpoints/schemas")).unwrap();
    std::fs::write(
        dir.path().join("endpoints/schemas/order.json"),
        "{\n  \"type\": \"object\",\n  \"properties\": { \"id\": { \"type\": \"integr\" } }\n}",
    )
    .unwrap();
    let e = endpoint(
        "shaped",
        "https://example.com/hook",
        "    schema: schemas/order.json\n    transform: { map: { id: \"$.[\" } }\n",
    );
    let missing = endpoint(
        "other",
        "https://example.com/other",
        "    schema: schemas/none.json\n",
    );
    std::fs::create_dir_all(dir.path().join("endpoints")).unwrap();
    std::fs::write(
        dir.path().join("endpoints/acme.yaml"),
        tenant("acme", &[e, missing]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("portcullis.yaml"),
        format!("listen: [{{ addr: \"127.0.0.1:{}\" }}]\nadmin: 127.0.0.1:{}\nfilters: filters/\nsinks:\n{}\nstore: {{ url: \"sqlite://state/ledger.db\" }}\noutbound:\n  api: 127.0.0.1:{}\n  tokens: [\"{TOKEN}\"]\n  endpoints: endpoints/\n", free_port(), free_port(), spool_sink(), free_port()),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(dir.path().join("portcullis.yaml"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("endpoint `shaped`: schema schemas/order.json"),
        "{text}"
    );
    assert!(
        text.contains("not a valid JSON Schema at /properties/id/type"),
        "{text}"
    );
    assert!(
        text.contains("endpoint `shaped`: transform: map field `id`"),
        "{text}"
    );
    assert!(
        text.contains("endpoint `other`: schema schemas/none.json"),
        "{text}"
    );
}
