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
        Some(s) if errors.is_empty() => Ok(Store::new(&s.store)),
        _ => Err(errors.join("\n")),
    }
}
