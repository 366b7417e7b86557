//! The Prometheus metrics of the contract, registered in the default registry that
//! pingora-prometheus serves on the admin listener. Labels carry provider, outcome, reason
//! and sink names only: never an event id, address or anything a sender controls.

use once_cell::sync::Lazy;
use pingora_prometheus::prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};

pub static REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_requests_total",
        "Requests by provider and outcome (accepted, duplicate, rejected, error).",
        &["provider", "outcome"]
    )
    .expect("register portcullis_requests_total")
});

pub static REJECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_rejections_total",
        "Rejections (and shadow-mode verdicts) by provider and reason.",
        &["provider", "reason"]
    )
    .expect("register portcullis_rejections_total")
});

pub static REQUEST_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "portcullis_request_duration_seconds",
        "Time from request head to response, by provider.",
        &["provider"],
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("register portcullis_request_duration_seconds")
});

pub static SINK_PUBLISH_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "portcullis_sink_publish_duration_seconds",
        "Time a sink took to acknowledge (or fail) a publish.",
        &["sink"],
        vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]
    )
    .expect("register portcullis_sink_publish_duration_seconds")
});

pub static SINK_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_sink_errors_total",
        "Publishes a sink failed or refused.",
        &["sink"]
    )
    .expect("register portcullis_sink_errors_total")
});

/// Every series of the contract for these providers and sinks, at zero: a dashboard or an
/// alert on `rate(...)` sees them from the start, not after the first failure.
pub fn register_series(providers: &[&str], sinks: &[&str]) {
    for provider in providers.iter().copied().chain(["unknown"]) {
        for outcome in OUTCOMES {
            REQUESTS.with_label_values(&[provider, outcome]);
        }
        for reason in crate::reason::Reason::ALL {
            REJECTIONS.with_label_values(&[provider, reason.as_str()]);
        }
        REQUEST_DURATION.with_label_values(&[provider]);
    }
    for sink in sinks {
        SINK_PUBLISH_DURATION.with_label_values(&[sink]);
        SINK_ERRORS.with_label_values(&[sink]);
    }
}

/// One provider's series, looked up once when its filter is built: a request then counts
/// with a few atomics, without hashing labels or taking the vectors' locks.
pub struct ProviderSeries {
    /// accepted, duplicate, rejected, error.
    outcomes: [IntCounter; 4],
    /// By [`Reason::ALL`](crate::reason::Reason::ALL)'s order.
    rejections: Vec<IntCounter>,
    pub duration: Histogram,
    /// Its sink's publish time.
    pub publish: Histogram,
}

const OUTCOMES: [&str; 4] = ["accepted", "duplicate", "rejected", "error"];

impl ProviderSeries {
    pub fn new(provider: &str, sink: &str) -> ProviderSeries {
        ProviderSeries {
            outcomes: OUTCOMES.map(|o| REQUESTS.with_label_values(&[provider, o])),
            rejections: crate::reason::Reason::ALL
                .iter()
                .map(|r| REJECTIONS.with_label_values(&[provider, r.as_str()]))
                .collect(),
            duration: REQUEST_DURATION.with_label_values(&[provider]),
            publish: SINK_PUBLISH_DURATION.with_label_values(&[sink]),
        }
    }

    pub fn request(&self, outcome: &str) -> Option<&IntCounter> {
        let i = OUTCOMES.iter().position(|o| *o == outcome)?;
        Some(&self.outcomes[i])
    }

    pub fn rejection(&self, reason: crate::reason::Reason) -> Option<&IntCounter> {
        let i = crate::reason::Reason::ALL
            .iter()
            .position(|r| *r == reason)?;
        self.rejections.get(i)
    }
}

pub static DEDUP_ENTRIES: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "portcullis_dedup_entries",
        "Event ids currently remembered (in flight or accepted)."
    )
    .expect("register portcullis_dedup_entries")
});

pub static DEDUP_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_dedup_errors_total",
        "Calls to the shared dedup store (Redis) that failed or timed out."
    )
    .expect("register portcullis_dedup_errors_total")
});

pub static DEDUP_JOURNAL_ERRORS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_dedup_journal_errors_total",
        "Accepted events whose id could not be written to the dedup journal (a restart would forget it)."
    )
    .expect("register portcullis_dedup_journal_errors_total")
});

pub static DEDUP_LOCAL_FALLBACKS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_dedup_local_fallbacks_total",
        "Events this node's own cache deduplicated because the shared store was unavailable (on_error: local)."
    )
    .expect("register portcullis_dedup_local_fallbacks_total")
});

pub static BUILD_INFO: Lazy<IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!(
        "portcullis_build_info",
        "Always 1; the version label says which build.",
        &["version"]
    )
    .expect("register portcullis_build_info")
});

/// Registers every metric up front, so `/metrics` lists them before the first request.
pub static HEADER_TIMEOUTS: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_header_timeouts_total",
        "Connections closed because no complete request head arrived within header_timeout (slow or idle clients)."
    )
    .expect("register portcullis_header_timeouts_total")
});

pub static EVENT_LOG_DROPPED: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_event_log_dropped_total",
        "Inbound event log records dropped: the queue was full or the store refused the batch (requests are never slowed for the log)."
    )
    .expect("register portcullis_event_log_dropped_total")
});

pub static EVENT_LOG_WRITTEN: Lazy<IntCounter> = Lazy::new(|| {
    register_int_counter!(
        "portcullis_event_log_written_total",
        "Inbound event log records written to the store."
    )
    .expect("register portcullis_event_log_written_total")
});

/// With the event log on: its counters, listed before the first request.
pub fn register_event_log_series() {
    Lazy::force(&EVENT_LOG_DROPPED);
    Lazy::force(&EVENT_LOG_WRITTEN);
}

pub fn init() {
    Lazy::force(&REQUESTS);
    Lazy::force(&REJECTIONS);
    Lazy::force(&REQUEST_DURATION);
    Lazy::force(&SINK_PUBLISH_DURATION);
    Lazy::force(&SINK_ERRORS);
    Lazy::force(&DEDUP_ENTRIES);
    Lazy::force(&DEDUP_ERRORS);
    Lazy::force(&DEDUP_LOCAL_FALLBACKS);
    Lazy::force(&DEDUP_JOURNAL_ERRORS);
    Lazy::force(&HEADER_TIMEOUTS);
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
}

pub static OUTBOUND_MESSAGES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_outbound_messages_total",
        "Outbound messages by source and outcome (queued, duplicate, rejected).",
        &["source", "outcome"]
    )
    .expect("register portcullis_outbound_messages_total")
});

pub static OUTBOUND_ATTEMPTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_outbound_attempts_total",
        "Delivery attempts by outcome.",
        &["outcome"]
    )
    .expect("register portcullis_outbound_attempts_total")
});

pub static OUTBOUND_ATTEMPT_DURATION: Lazy<pingora_prometheus::prometheus::Histogram> =
    Lazy::new(|| {
        pingora_prometheus::prometheus::register_histogram!(
            "portcullis_outbound_attempt_duration_seconds",
            "Time of one delivery attempt, connect to response head.",
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
        )
        .expect("register portcullis_outbound_attempt_duration_seconds")
    });

pub static OUTBOUND_DELIVERY_LAG: Lazy<pingora_prometheus::prometheus::Histogram> =
    Lazy::new(|| {
        pingora_prometheus::prometheus::register_histogram!(
            "portcullis_outbound_delivery_lag_seconds",
            "Time from enqueue to delivered.",
            vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0, 86400.0]
        )
        .expect("register portcullis_outbound_delivery_lag_seconds")
    });

pub static OUTBOUND_IN_FLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "portcullis_outbound_in_flight",
        "Delivery attempts in flight on this node."
    )
    .expect("register portcullis_outbound_in_flight")
});

pub static OUTBOUND_STARTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_outbound_starts_total",
        "Attempts started on this node, by how the delivery reached the worker: handoff (leased by its enqueue, a slot being free) or claim (from the ledger).",
        &["via"]
    )
    .expect("register portcullis_outbound_starts_total")
});

pub static OUTBOUND_DEAD_LETTERS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "portcullis_outbound_dead_letters_total",
        "Deliveries given up, by reason.",
        &["reason"]
    )
    .expect("register portcullis_outbound_dead_letters_total")
});

pub static OUTBOUND_PENDING: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "portcullis_outbound_pending",
        "Deliveries waiting in the ledger (the whole fleet's, read every few seconds)."
    )
    .expect("register portcullis_outbound_pending")
});

pub static OUTBOUND_BREAKERS_OPEN: Lazy<IntGauge> = Lazy::new(|| {
    register_int_gauge!(
        "portcullis_outbound_breakers_open",
        "Endpoints whose circuit breaker is open (fleet-wide, read every few seconds)."
    )
    .expect("register portcullis_outbound_breakers_open")
});

/// The outbound series at zero, for a node that dispatches.
pub fn register_outbound_series() {
    for source in ["api", "redis", "nats", "amqp", "inbound", "cli"] {
        for outcome in ["queued", "duplicate", "rejected"] {
            OUTBOUND_MESSAGES.with_label_values(&[source, outcome]);
        }
    }
    for outcome in [
        "delivered",
        "http_status",
        "throttled",
        "gone",
        "redirect",
        "timeout",
        "connect_error",
        "dns_error",
        "tls_error",
        "ssrf_blocked",
    ] {
        OUTBOUND_ATTEMPTS.with_label_values(&[outcome]);
    }
    for reason in [
        "retries_exhausted",
        "endpoint_gone",
        "endpoint_removed",
        "invalid_message",
        "unknown_tenant",
    ] {
        OUTBOUND_DEAD_LETTERS.with_label_values(&[reason]);
    }
    for via in ["handoff", "claim"] {
        OUTBOUND_STARTS.with_label_values(&[via]);
    }
    Lazy::force(&OUTBOUND_ATTEMPT_DURATION);
    Lazy::force(&OUTBOUND_DELIVERY_LAG);
    Lazy::force(&OUTBOUND_IN_FLIGHT);
    Lazy::force(&OUTBOUND_PENDING);
    Lazy::force(&OUTBOUND_BREAKERS_OPEN);
}
