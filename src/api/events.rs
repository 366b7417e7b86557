//! `GET /v1/events`: the inbound event log (see `crate::event_log`), newest first, narrowed
//! by `provider`, `outcome`, `reason` and `since` (a duration back, like `1h`, or an RFC 3339
//! time), at most `limit` (100 unless asked, 1000 at most). Inbound traffic is the
//! operator's, not a tenant's: admin tokens only.

use pingora::protocols::http::ServerSession;
use serde_json::json;

use super::auth::Principal;
use super::{error, json_response, Api, Reply};
use crate::store::events::EventQuery;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1_000;

fn invalid(detail: String) -> Reply {
    json_response(400, json!({"error": "invalid_query", "detail": detail}))
}

/// The query string as an [`EventQuery`], or what is wrong with it.
fn parse(query: &str, now_ms: i64) -> Result<EventQuery, String> {
    let mut q = EventQuery {
        limit: DEFAULT_LIMIT,
        ..EventQuery::default()
    };
    let mut seen = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if seen.contains(&key) {
            return Err(format!("`{key}` is given twice"));
        }
        seen.push(key.clone());
        let value = value.into_owned();
        match &*key {
            "provider" => q.provider = Some(value),
            "reason" => q.reason = Some(value),
            "outcome" => {
                if !crate::event_log::OUTCOMES.contains(&value.as_str()) {
                    return Err(format!(
                        "outcome is one of {}",
                        crate::event_log::OUTCOMES.join(", ")
                    ));
                }
                q.outcome = Some(value);
            }
            "since" => {
                q.since = Some(
                    crate::event_log::parse_since(&value, now_ms)
                        .map_err(|e| format!("since: {e}"))?,
                )
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit is a number from 1 to {MAX_LIMIT}"))?
            }
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (provider, outcome, reason, since, limit)"
                ))
            }
        }
    }
    Ok(q)
}

pub async fn list(api: &Api, who: &Principal, session: &ServerSession) -> Reply {
    if who != &Principal::Admin {
        return error(403, "admin_only");
    }
    if !api.event_log {
        return json_response(
            404,
            json!({"error": "event_log_off", "detail": "the event log is off: add event_log: { retention: 7d } to the server file"}),
        );
    }
    let query = match parse(
        session.req_header().uri.query().unwrap_or(""),
        crate::store::now_ms(),
    ) {
        Ok(q) => q,
        Err(detail) => return invalid(detail),
    };
    match api.dispatcher.store.events(&query).await {
        Ok(events) => {
            let events: Vec<_> = events.iter().map(crate::event_log::json).collect();
            json_response(200, json!({ "events": events }))
        }
        Err(e) => {
            tracing::warn!("GET /v1/events: {e}");
            error(503, "store_unavailable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_checked_before_the_store_is_asked() {
        let q = parse(
            "provider=github&outcome=rejected&since=1h&limit=5",
            7_200_000,
        )
        .unwrap_or_else(|_| panic!("valid"));
        assert_eq!(q.provider.as_deref(), Some("github"));
        assert_eq!(q.since, Some(3_600_000));
        assert_eq!(q.limit, 5);
        for bad in [
            "outcome=ok",
            "limit=0",
            "limit=1001",
            "since=soon",
            "page=2",
            "limit=1&limit=2",
        ] {
            assert!(parse(bad, 0).is_err(), "{bad}");
        }
    }
}
