//! `portcullis events`: the inbound event log as an operator reads it, straight from the
//! store (no API token needed, as with `portcullis outbound …`).

use std::io::Write;
use std::path::Path;

use crate::store::events::{EventQuery, InboundEvent};
use crate::store::Store;

/// Prints the events `query` selects, newest first: a table, or one JSON array.
pub fn events(conf: &Path, query: &EventQuery, json: bool) -> i32 {
    let result = (|| -> Result<Vec<InboundEvent>, String> {
        let server = crate::outbound::cli::server(conf)?;
        if server.event_log.is_none() {
            return Err(format!(
                "{}: the event log is off: add `event_log: {{ retention: 7d }}` to the server file",
                conf.display()
            ));
        }
        let store = Store::new(&server.store);
        crate::outbound::cli::runtime()?
            .block_on(async { store.events(query).await.map_err(|e| e.to_string()) })
    })();
    let events = match result {
        Ok(e) => e,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let all: Vec<serde_json::Value> = events.iter().map(super::json).collect();
        let _ = writeln!(out, "{}", serde_json::Value::from(all));
        return 0;
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for e in &events {
        let at = chrono::DateTime::from_timestamp_millis(e.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{at}\t{}\t{}\t{}\t{}\t{}\t{}\t{}B\t{:.2}ms\t{}\t{}",
            e.provider,
            e.status,
            e.outcome,
            dash(&e.reason.clone().or(e.shadow_verdict.clone())),
            dash(&e.event_id),
            dash(&e.client_ip),
            e.bytes,
            e.latency_us as f64 / 1000.0,
            dash(&e.key_id),
            e.request_id,
        );
    }
    0
}
