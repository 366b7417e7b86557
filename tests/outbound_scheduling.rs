//! How the dispatcher schedules deliveries, through the real binary and its SQLite ledger:
//! the circuit breaker (deferred attempts spend no retries; a probe closes it), fairness
//! between a dead endpoint and a healthy one, `max_in_flight`, `ordered` FIFOs and the
//! per-endpoint rate limit.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dispatcher::*;
use common::receiver::{Receiver, Reply};

fn url(rx: &Receiver) -> String {
    format!("http://127.0.0.1:{}/", rx.port)
}

/// Waits until the server log contains `text`.
fn wait_log(d: &Dispatcher, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.server.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no `{text}` in:\n{}",
            d.server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A receiver answering 500 until the flag is cleared, then 200.
fn failing_until_mended() -> (Receiver, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(true));
    let state = down.clone();
    let rx = Receiver::start(move |_| {
        Reply::Status(if state.load(Ordering::SeqCst) {
            500
        } else {
            200
        })
    });
    (rx, down)
}

#[test]
fn an_open_breaker_defers_attempts_without_spending_retries_and_a_probe_closes_it() {
    let (rx, down) = failing_until_mended();
    // Three attempts per delivery, 50 ms apart: without the breaker every message would be
    // a dead letter long before the 2 s cooldown ends.
    let d = Dispatcher::start(
        &[("acme.yaml", tenant("acme", &[endpoint("flaky", &url(&rx), "")]))],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [50ms, 50ms], breaker: { failures: 3, cooldown: 2s } }",
    );
    let ids: Vec<String> = (0..5)
        .map(|i| d.queue("acme", "a", &format!("e{i}"), &format!("{{\"n\":{i}}}")))
        .collect();
    wait_log(&d, "circuit breaker open");
    d.wait_metric("portcullis_outbound_breakers_open 1");
    // The next request is the probe after the cooldown; it fails, the breaker re-opens, and
    // the one after that (a second probe) finds the endpoint mended.
    let seen = rx.count();
    rx.wait_for(seen + 1);
    down.store(false, Ordering::SeqCst);
    wait_log(&d, "circuit breaker closed");
    wait_delivered(&rx, &ids);
    d.wait_metric("portcullis_outbound_breakers_open 0");
    assert!(
        d.metrics()
            .contains(r#"portcullis_outbound_dead_letters_total{reason="retries_exhausted"} 0"#),
        "deferred attempts spent no retries:\n{}",
        d.server.log()
    );
    for id in &ids {
        let attempts = d.wait_attempts(id, "flaky", 1);
        assert!(attempts.len() <= 3, "{id}: {attempts:?}");
        assert_eq!(
            attempts.last().unwrap()["outcome"],
            "delivered",
            "{attempts:?}"
        );
    }
    // Without the breaker each message would have failed three times (15) and died.
    let failures = rx.all().len() - ids.len();
    assert!(
        failures < 15,
        "while open only probes went out: {failures} failed requests"
    );
}

/// `portcullis_outbound_starts_total{via}` now.
fn starts(d: &Dispatcher, via: &str) -> u64 {
    let prefix = format!("portcullis_outbound_starts_total{{via=\"{via}\"}} ");
    d.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix}in:\n{}", d.metrics()))
}

#[test]
fn an_enqueue_hands_deliveries_to_free_slots_but_not_past_an_ordered_queue_or_an_open_breaker() {
    let ok = Receiver::ok();
    let (flaky, down) = failing_until_mended();
    let d = Dispatcher::start(
        &[
            (
                "acme.yaml",
                tenant(
                    "acme",
                    &[
                        endpoint("plain", &url(&ok), "    event_types: [\"a\"]\n"),
                        endpoint("fifo", &url(&ok), "    event_types: [\"a\"]\n    ordered: true\n"),
                        endpoint("flaky", &url(&flaky), "    event_types: [\"b\"]\n"),
                    ],
                ),
            ),
        ],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [1h], breaker: { failures: 1, cooldown: 1s } }",
    );
    // Once a delivery arrived, the worker is running (and takes hand-offs).
    d.queue("acme", "a", "warm", "{}");
    ok.wait_for(2);
    let (handed, claimed) = (starts(&d, "handoff"), starts(&d, "claim"));
    d.queue("acme", "a", "a1", "{}");
    ok.wait_for(4);
    assert_eq!(
        (starts(&d, "handoff"), starts(&d, "claim")),
        (handed + 1, claimed + 1),
        "plain handed off, fifo claimed"
    );
    let (handed, claimed) = (handed + 1, claimed + 1);

    // The first message to the failing endpoint is handed off, fails and opens its breaker.
    let first = d.queue("acme", "b", "b1", "{}");
    wait_log(&d, "circuit breaker open");
    assert_eq!(starts(&d, "handoff"), handed + 1);
    // While it is open, an enqueue leases nothing to it: the delivery waits for the probe.
    down.store(false, Ordering::SeqCst);
    let second = d.queue("acme", "b", "b2", "{}");
    assert_eq!(
        starts(&d, "handoff"),
        handed + 1,
        "nothing handed to an open breaker"
    );
    wait_log(&d, "circuit breaker closed");
    wait_delivered(&flaky, std::slice::from_ref(&second));
    assert_eq!(starts(&d, "claim"), claimed + 1, "the probe was a claim");
    // The first one's retry is an hour away: it was attempted once, not lost.
    assert_eq!(d.attempts(&first).len(), 1);
}

#[test]
fn a_hanging_endpoints_backlog_does_not_delay_a_healthy_endpoint() {
    // The dead endpoint never answers (each attempt ends at its 1 s timeout); the breaker is
    // out of the way, so this is the claim's fairness alone.
    let dead = Receiver::start(|_| Reply::Hang(Duration::from_secs(30)));
    let healthy = Receiver::ok();
    let d = Dispatcher::start(
        &[
            (
                "slow.yaml",
                tenant("slow", &[endpoint("dead", &url(&dead), "    timeout: 1s\n")]),
            ),
            (
                "fast.yaml",
                tenant("fast", &[endpoint("healthy", &url(&healthy), "")]),
            ),
        ],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], concurrency: 4, retry: [1h], breaker: { failures: 10000 } }",
    );
    for i in 0..20 {
        d.queue("slow", "a", &format!("s{i}"), "{}");
    }
    let ids: Vec<String> = (0..20)
        .map(|i| d.queue("fast", "a", &format!("f{i}"), "{}"))
        .collect();
    wait_delivered(&healthy, &ids);
    // Oldest-first claiming would have made all 20 dead attempts (five rounds of four
    // timeouts) before the first healthy delivery.
    let dead_attempts = dead.count();
    assert!(
        dead_attempts < 20,
        "the healthy endpoint waited behind {dead_attempts} dead attempts"
    );
}

#[test]
fn max_in_flight_caps_concurrent_attempts_to_an_endpoint() {
    // Slow answers, so attempts overlap however slowly the messages are queued.
    let capped = Receiver::start(|_| Reply::After(Duration::from_millis(400), 200));
    let free = Receiver::start(|_| Reply::After(Duration::from_millis(400), 200));
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[
                    endpoint("capped", &url(&capped), "    max_in_flight: 2\n"),
                    endpoint("free", &url(&free), ""),
                ],
            ),
        )],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], concurrency: 20 }",
    );
    let ids: Vec<String> = (0..16)
        .map(|i| d.queue("acme", "a", &format!("e{i}"), "{}"))
        .collect();
    wait_delivered(&capped, &ids);
    wait_delivered(&free, &ids);
    let peak = |rx: &Receiver| rx.load.peak.load(Ordering::SeqCst);
    assert!(peak(&capped) <= 2, "capped endpoint saw {}", peak(&capped));
    assert!(
        peak(&free) > 2,
        "the uncapped endpoint ran in parallel ({}), so the cap is what held the other",
        peak(&free)
    );
}

#[test]
fn an_ordered_endpoint_delivers_each_ordering_key_in_order_even_through_retries() {
    // The first message of key `a` fails twice; `a`'s later messages wait for it, `b`'s do not.
    let failures = Arc::new(std::sync::Mutex::new(0));
    let f = failures.clone();
    let rx = Receiver::start_with(move |req, _| {
        if req.body == b"{\"k\":\"a1\"}" {
            let mut n = f.lock().unwrap();
            *n += 1;
            if *n <= 2 {
                return Reply::Status(500);
            }
        }
        Reply::After(Duration::from_millis(20), 200)
    });
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[endpoint("fifo", &url(&rx), "    ordered: true\n")],
            ),
        )],
        "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [200ms, 200ms, 200ms] }",
    );
    let mut ids = Vec::new();
    for n in 1..=3 {
        for key in ["a", "b"] {
            let r = d.send(&format!(
                r#"{{"tenant":"acme","event_type":"t","id":"{key}{n}","ordering_key":"{key}","payload":{{"k":"{key}{n}"}}}}"#
            ));
            assert_eq!(r.status, 202);
            ids.push(r.json()["message_id"].as_str().unwrap().to_owned());
        }
    }
    wait_delivered(&rx, &ids);
    let order = |key: &str| -> Vec<String> {
        rx.all()
            .iter()
            .map(|r| String::from_utf8(r.body.clone()).unwrap())
            .filter(|b| b.contains(&format!("\"{key}")))
            .collect()
    };
    let a: Vec<String> = (1..=3).map(|n| format!("{{\"k\":\"a{n}\"}}")).collect();
    assert_eq!(
        order("a"),
        [a[0].as_str(), &a[0], &a[0], &a[1], &a[2]],
        "a2 waits until a1 is delivered"
    );
    let b: Vec<String> = (1..=3).map(|n| format!("{{\"k\":\"b{n}\"}}")).collect();
    assert_eq!(order("b"), [b[0].as_str(), &b[1], &b[2]]);
    let peak = rx.load.peak.load(Ordering::SeqCst);
    assert!(
        peak <= 2,
        "one attempt in flight per ordering key, saw {peak}"
    );
}

#[test]
fn a_rate_limited_endpoint_is_paced() {
    let limited = Receiver::ok();
    let d = Dispatcher::start(
        &[(
            "acme.yaml",
            tenant(
                "acme",
                &[endpoint(
                    "paced",
                    &url(&limited),
                    "    rate_limit: { per_second: 4, burst: 1 }\n",
                )],
            ),
        )],
        LOCAL,
    );
    let ids: Vec<String> = (0..5)
        .map(|i| d.queue("acme", "a", &format!("e{i}"), "{}"))
        .collect();
    let got = {
        wait_delivered(&limited, &ids);
        limited.all()
    };
    // Five attempts at 4/s with no burst: four intervals of 250 ms between the first and the
    // last (the bound the limiter guarantees, less network jitter).
    let span = got.last().unwrap().at - got[0].at;
    assert!(span >= Duration::from_millis(800), "{span:?}");
}
