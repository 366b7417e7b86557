//! `portcullis outbound …`: the ledger as an operator reads it.

use std::io::Write;
use std::path::Path;

use crate::config::Severity;
use crate::store::Store;

/// Every attempt of a message: time, endpoint, outcome, status, latency, preview.
pub fn attempts(conf: &Path, message_id: &str, json: bool) -> i32 {
    let result = (|| -> Result<Vec<crate::store::Attempt>, String> {
        let store = open(conf)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async { store.attempts(message_id).await.map_err(|e| e.to_string()) })
    })();
    let attempts = match result {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(&attempts).unwrap_or_default()
        );
    } else {
        for a in &attempts {
            let at = chrono::DateTime::from_timestamp_millis(a.at)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_default();
            let status = a
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into());
            let preview: String = a
                .preview
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(80)
                .collect();
            let _ = writeln!(
                out,
                "{at}\t{}\t#{}\t{}\t{status}\t{}ms\t{preview:?}",
                a.endpoint, a.attempt, a.outcome, a.latency_ms
            );
        }
    }
    if attempts.is_empty() {
        eprintln!("no attempts of {message_id} (yet)");
        return 1;
    }
    0
}

/// The store a config names.
fn open(conf: &Path) -> Result<Store, String> {
    server(conf).map(|s| Store::new(&s.store))
}

/// The server file `conf`, checked (its errors as the message).
pub(crate) fn server(conf: &Path) -> Result<crate::loader::Server, String> {
    let mut problems = Vec::new();
    let Some(text) = crate::config::diagnostics::read(conf, &mut problems) else {
        return Err(problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n"));
    };
    let (server, problems) = crate::loader::load_server_text(conf, &text);
    let errors: Vec<String> = problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.to_string())
        .collect();
    match server {
        Some(s) if errors.is_empty() => Ok(s),
        _ => Err(errors.join("\n")),
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Which dead letters a `dlq` command means.
pub struct DlqFilter<'a> {
    pub tenant: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    /// Only those dead within this long.
    pub since: Option<std::time::Duration>,
}

impl DlqFilter<'_> {
    fn since_ms(&self) -> i64 {
        self.since
            .map(|d| crate::store::now_ms() - d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// `outbound dlq list`: every dead delivery: when, message, tenant/endpoint, reason.
pub fn dlq_list(conf: &Path, filter: &DlqFilter<'_>, json: bool) -> i32 {
    let result = (|| -> Result<Vec<crate::store::DeadLetter>, String> {
        let store = open(conf)?;
        runtime()?.block_on(async {
            store
                .dead_letters(filter.tenant, filter.endpoint, filter.since_ms())
                .await
                .map_err(|e| e.to_string())
        })
    })();
    let dead = match result {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(&dead).unwrap_or_default());
        return 0;
    }
    for d in &dead {
        let at = chrono::DateTime::from_timestamp_millis(d.at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{at}\t{}\t{}/{}\t{}\t{} attempts, last {}",
            d.message_id,
            d.tenant,
            d.endpoint,
            d.reason,
            d.attempts,
            d.last_outcome.as_deref().unwrap_or("-")
        );
    }
    0
}

/// `outbound dlq replay`: puts dead deliveries (of `ids`, or all the filter matches) back in
/// the queue with a fresh retry budget, at most `rate` per second.
pub fn dlq_replay(conf: &Path, filter: &DlqFilter<'_>, ids: &[String], rate: f64) -> i32 {
    let result = (|| -> Result<usize, String> {
        let store = open(conf)?;
        runtime()?.block_on(async {
            let dead = store
                .dead_letters(filter.tenant, filter.endpoint, filter.since_ms())
                .await
                .map_err(|e| e.to_string())?;
            let chosen: Vec<_> = dead
                .iter()
                .filter(|d| ids.is_empty() || ids.contains(&d.message_id))
                .collect();
            if let Some(missing) = ids
                .iter()
                .find(|id| !chosen.iter().any(|d| &d.message_id == *id))
            {
                return Err(format!(
                    "{missing} has no dead delivery (matching the filters)"
                ));
            }
            let pause = std::time::Duration::from_secs_f64(1.0 / rate);
            let mut replayed = 0;
            for (i, d) in chosen.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                if store
                    .replay(&d.message_id, &d.endpoint)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    replayed += 1;
                }
            }
            Ok(replayed)
        })
    })();
    match result {
        Ok(n) => {
            println!(
                "{n} dead deliver{} queued again",
                if n == 1 { "y" } else { "ies" }
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `10/s`, `2.5/s` or a bare number: replays per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches("/s");
    match number.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("rate `{text}` is not like 10/s")),
    }
}

/// The full config (endpoints included) and its store, for commands that route messages.
fn open_full(conf: &Path) -> Result<(crate::loader::Config, Store), String> {
    let loaded = crate::loader::load(conf);
    let errors: Vec<String> = loaded
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .map(|p| p.to_string())
        .collect();
    let config = loaded.config.ok_or_else(|| errors.join("\n"))?;
    if config.server.outbound.is_none() {
        return Err(format!("{}: no outbound: block", conf.display()));
    }
    let store = Store::new(&config.server.store);
    Ok((config, store))
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "-".into())
}

/// `outbound status`: per endpoint, what waits, what is in flight, the breaker, the last
/// success and failure, and whether it is disabled (configured endpoints first, then any
/// the ledger still holds deliveries of).
pub fn status(conf: &Path, json: bool) -> i32 {
    let result = (|| {
        let (config, store) = open_full(conf)?;
        let mut all = runtime()?
            .block_on(store.endpoint_status())
            .map_err(|e| e.to_string())?;
        let mut list = Vec::new();
        for e in config.endpoints.all() {
            let key = (e.tenant.clone(), e.name.clone());
            list.push(
                all.remove(&key)
                    .unwrap_or_else(|| crate::store::EndpointStatus {
                        tenant: e.tenant.clone(),
                        endpoint: e.name.clone(),
                        breaker: "closed".into(),
                        ..Default::default()
                    }),
            );
        }
        list.extend(all.into_values());
        Ok::<_, String>(list)
    })();
    let list = match result {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(&list).unwrap_or_default());
        return 0;
    }
    let _ = writeln!(
        out,
        "ENDPOINT\tPENDING\tIN_FLIGHT\tDEAD\tBREAKER\tLAST_SUCCESS\tLAST_FAILURE\tDISABLED"
    );
    for s in &list {
        let breaker = match s.breaker_until {
            Some(until) => format!("open until {}", time(Some(until))),
            None if s.failures > 0 => format!("closed ({} failures)", s.failures),
            None => "closed".into(),
        };
        let _ = writeln!(
            out,
            "{}/{}\t{}\t{}\t{}\t{breaker}\t{}\t{}\t{}",
            s.tenant,
            s.endpoint,
            s.pending,
            s.in_flight,
            s.dead,
            time(s.last_success),
            time(s.last_failure),
            s.disabled.as_deref().unwrap_or("-")
        );
    }
    0
}

/// `outbound send`: one message into the ledger, as `POST /outbound` would (exit 0 when
/// queued or a duplicate).
pub fn send(conf: &Path, tenant: &str, event_type: &str, id: Option<&str>, data: &str) -> i32 {
    let result = (|| {
        let (config, store) = open_full(conf)?;
        let payload: Box<serde_json::value::RawValue> =
            serde_json::from_str(data).map_err(|e| format!("--data is not JSON: {e}"))?;
        // The payload's own text goes in as it is (json! would re-serialise it).
        let text = |s: &str| serde_json::Value::from(s).to_string();
        let wire = format!(
            r#"{{"tenant":{},"event_type":{},"id":{},"payload":{}}}"#,
            text(tenant),
            text(event_type),
            id.map(text).unwrap_or_else(|| "null".into()),
            payload.get()
        );
        let message = super::message::parse(wire.as_bytes())
            .map_err(|i| format!("invalid message: {}", i.detail))?;
        let outbound = config.server.outbound.as_ref().expect("checked");
        let dispatcher = super::Dispatcher::new(
            std::sync::Arc::new(store),
            config.endpoints,
            outbound.delivery.clone(),
        );
        runtime()?.block_on(async {
            match dispatcher.enqueue(message, "cli").await {
                Ok(e) => Ok(super::enqueued_json(&e)),
                Err(super::Refused::UnknownTenant) => Err(format!(
                    "unknown tenant `{tenant}`: no endpoints file names it"
                )),
                Err(super::Refused::Invalid(i)) => Err(format!("invalid message: {}", i.detail)),
                Err(super::Refused::Schema {
                    endpoint,
                    violation,
                }) => Err(format!(
                    "schema violation: {}",
                    super::Refused::schema_detail(&endpoint, &violation)
                )),
                Err(super::Refused::Store(e)) => Err(e.to_string()),
            }
        })
    })();
    match result {
        Ok(answer) => {
            println!("{answer}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `outbound endpoint enable|disable TENANT/NAME`.
pub fn endpoint(conf: &Path, target: &str, enable: bool) -> i32 {
    let Some((tenant, name)) = target.split_once('/') else {
        eprintln!("name the endpoint as TENANT/NAME, like acme/orders");
        return 2;
    };
    let result = (|| {
        let (config, store) = open_full(conf)?;
        runtime()?.block_on(async {
            let stored = store
                .stored_endpoints(Some(tenant))
                .await
                .map_err(|e| e.to_string())?;
            if config.endpoints.get(tenant, name).is_none()
                && !stored.iter().any(|e| e.name == name)
            {
                return Err(format!(
                    "no endpoint {tenant}/{name} in the endpoints files or the store"
                ));
            }
            if enable {
                store.enable_endpoint(tenant, name).await
            } else {
                store.disable_endpoint(tenant, name, "disabled").await
            }
            .map_err(|e| e.to_string())
        })
    })();
    match result {
        Ok(changed) => {
            let state = if enable { "enabled" } else { "disabled" };
            if changed {
                println!("{tenant}/{name} {state}");
            } else {
                println!("{tenant}/{name} was already {state}");
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// `store rotate-master-key`: re-wraps every tenant's data key under `store.master_key`
/// (those still under `previous_master_key` are unwrapped with it). Secrets are untouched.
pub fn rotate_master_key(conf: &Path) -> i32 {
    let result = open(conf).and_then(|store| {
        if !store.can_seal() {
            return Err(format!(
                "{}: store.master_key is not set: name the new key there and the old one in previous_master_key",
                conf.display()
            ));
        }
        runtime()?.block_on(async { store.rewrap_data_keys().await.map_err(|e| e.to_string()) })
    });
    match result {
        Ok((rewrapped, kept)) => {
            println!(
                "re-wrapped {rewrapped} data key{} under the current master key ({kept} already were); previous_master_key can now be removed",
                if rewrapped == 1 { "" } else { "s" }
            );
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
