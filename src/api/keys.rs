//! `/v1/filters/{name}/keys…`: the keys of a `url-key` filter with `keys: store`, managed at
//! run time. A key (`wh_` + 32 random characters, as `portcullis keygen` makes) is shown once,
//! when created or regenerated; the store keeps its SHA-256 and its first characters. Every
//! node applies a change within its catalog poll (a second). Filters are the operator's, not
//! a tenant's: these calls are for admin tokens only.

use std::time::Duration;

use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};

use super::auth::Principal;
use super::{error, json_response, Api, Reply};
use crate::schemes::url_key;
use crate::store::inbound_keys::KeyInfo;

/// The longest grace a regeneration may give the old key.
const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// How much of a key a list shows.
const HINT: usize = url_key::KEY_PREFIX.len() + 4;

fn view(k: &KeyInfo) -> Value {
    json!({
        "id": k.id,
        "filter": k.filter,
        "key": format!("{}…", k.hint),
        "created_at": super::time(Some(k.created_at)),
        "disabled": k.disabled_at.is_some(),
        "events": k.events,
        "last_used_at": super::time(k.last_used_at),
        "previous_until": super::time(k.previous_until),
    })
}

fn store_failed(e: crate::store::StoreError) -> Reply {
    tracing::warn!("management API: {e}");
    error(503, "store_unavailable")
}

pub async fn route(api: &Api, who: &Principal, session: &mut ServerSession) -> Reply {
    if who != &Principal::Admin {
        return error(403, "admin_only");
    }
    let method = session.req_header().method.as_str().to_owned();
    let path = session.req_header().uri.path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches("/v1/filters/").split('/').collect();
    let Some((filter, rest)) = parts.split_first() else {
        return error(404, "not_found");
    };
    if rest.first() != Some(&"keys") {
        return error(404, "not_found");
    }
    // The filters in force now: one added by SIGHUP is managed at once.
    if !api.routes.load().has_stored_keys(filter) {
        return json_response(
            404,
            json!({"error": "unknown_filter", "detail": format!("no url-key filter `{filter}` with keys: store")}),
        );
    }
    let store = &api.dispatcher.store;
    match (method.as_str(), &rest[1..]) {
        ("GET", []) => match store.keys(filter).await {
            Ok(keys) => json_response(
                200,
                json!({"keys": keys.iter().map(view).collect::<Vec<_>>()}),
            ),
            Err(e) => store_failed(e),
        },
        ("POST", []) => {
            let key = url_key::generate();
            let hash = hex::encode(url_key::key_hash(&key));
            match store.create_key(filter, &hash, &key[..HINT]).await {
                Ok(k) => {
                    super::reload(api).await;
                    tracing::info!(filter = %filter, key = %k.id, "management API: key created");
                    let mut v = view(&k);
                    v["key"] = key.into();
                    json_response(201, v)
                }
                Err(e) => store_failed(e),
            }
        }
        (_, []) => error(405, "method_not_allowed"),
        ("POST", [id, action @ ("disable" | "enable")]) => {
            match store
                .set_key_disabled(filter, id, *action == "disable")
                .await
            {
                Ok(true) => {
                    super::reload(api).await;
                    tracing::info!(filter = %filter, key = %id, "management API: key {action}d");
                    match store.key(filter, id).await {
                        Ok(Some(k)) => json_response(200, view(&k)),
                        Ok(None) => error(404, "not_found"),
                        Err(e) => store_failed(e),
                    }
                }
                Ok(false) => error(404, "not_found"),
                Err(e) => store_failed(e),
            }
        }
        ("POST", [id, "regenerate"]) => regenerate(api, filter, id, session).await,
        (_, [_, "disable" | "enable" | "regenerate"]) => error(405, "method_not_allowed"),
        _ => error(404, "not_found"),
    }
}

async fn regenerate(api: &Api, filter: &str, id: &str, session: &mut ServerSession) -> Reply {
    let body = match api.body(session).await {
        Ok(b) => b,
        Err((s, r)) => return error(s, r),
    };
    let grace = if body.iter().all(u8::is_ascii_whitespace) {
        Duration::ZERO
    } else {
        let parsed: Result<serde_json::Map<String, Value>, _> = serde_json::from_slice(&body);
        let detail = match parsed {
            Ok(o) if o.keys().all(|k| k == "grace") => match o.get("grace") {
                None => Ok(Duration::ZERO),
                Some(Value::String(t)) => match crate::config::parse_duration(t) {
                    Ok(d) if d <= MAX_GRACE => Ok(d),
                    Ok(_) => Err("`grace` may be at most 7d".to_string()),
                    Err(e) => Err(format!("`grace`: {e}")),
                },
                Some(_) => Err("`grace` is a duration such as 10m".into()),
            },
            Ok(_) => Err("a regeneration takes `grace` only".into()),
            Err(_) => Err("the body must be a JSON object".into()),
        };
        match detail {
            Ok(d) => d,
            Err(detail) => {
                return json_response(400, json!({"error": "invalid_request", "detail": detail}))
            }
        }
    };
    let key = url_key::generate();
    let hash = hex::encode(url_key::key_hash(&key));
    let store = &api.dispatcher.store;
    match store
        .regenerate_key(filter, id, &hash, &key[..HINT], grace.as_millis() as i64)
        .await
    {
        Ok(true) => {
            super::reload(api).await;
            tracing::info!(filter = %filter, key = %id, grace_ms = grace.as_millis() as u64, "management API: key regenerated");
            match store.key(filter, id).await {
                Ok(Some(k)) => {
                    let mut v = view(&k);
                    v["key"] = key.into();
                    json_response(200, v)
                }
                Ok(None) => error(404, "not_found"),
                Err(e) => store_failed(e),
            }
        }
        Ok(false) => error(404, "not_found"),
        Err(e) => store_failed(e),
    }
}
