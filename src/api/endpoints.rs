//! `/v1/endpoints…`: outbound endpoints managed at run time, stored beside the files' ones.
//!
//! A body holds the keys of an endpoints file's entry (`name`, `url`, `event_types`,
//! `scheme`, …) plus `tenant` and, optionally, `secret`; it is checked by the same code as a
//! file (and its URL's host is resolved and refused if internal). The secret is generated
//! (`whsec_` + 32 random bytes) unless given, sealed in the store, and shown once: in the 201
//! and in a rotation's answer; afterwards only its fingerprint. A file's endpoint is listed
//! (`source: file`) but read-only here. Another tenant's endpoint is a 404 to a scoped caller.

// A handler's early answer is its `Err`: rare, and not worth a box.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use base64::Engine;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value};

use super::auth::Principal;
use super::{error, json_response, Api, Reply};
use crate::outbound::endpoints::{self, Endpoint};
use crate::outbound::ssrf;
use crate::store::catalog::{CatalogError, StoredEndpoint};

/// How long a rotated-out secret keeps signing unless the call says otherwise.
const DEFAULT_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// The longest overlap a rotation may ask for.
const MAX_OVERLAP: Duration = Duration::from_secs(30 * 24 * 3600);
/// A supplied secret's shortest length (a generated one is 32 random bytes).
const MIN_SECRET: usize = 24;

pub async fn route(api: &Api, who: &Principal, session: &mut ServerSession) -> Reply {
    let method = session.req_header().method.as_str().to_owned();
    let path = session.req_header().uri.path().to_owned();
    let rest = path.trim_start_matches("/v1/endpoints");
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", [""]) => list(api, who, session).await,
        ("POST", [""]) => create(api, who, session).await,
        (_, [""]) => error(405, "method_not_allowed"),
        ("GET", [id]) => show(api, who, id).await,
        ("PATCH", [id]) => update(api, who, id, session).await,
        ("DELETE", [id]) => delete(api, who, id).await,
        (_, [_]) => error(405, "method_not_allowed"),
        ("POST", [id, "rotate"]) => rotate(api, who, id, session).await,
        (_, [_, "rotate"]) => error(405, "method_not_allowed"),
        _ => error(404, "not_found"),
    }
}

fn invalid(detail: impl Into<String>) -> Reply {
    json_response(
        400,
        json!({"error": "invalid_endpoint", "detail": detail.into()}),
    )
}

fn millis(ms: i64) -> Value {
    super::time(Some(ms))
}

fn stored_view(e: &StoredEndpoint) -> Value {
    let mut v = serde_json::from_str::<Value>(&e.spec).unwrap_or_else(|_| json!({}));
    let secrets: Vec<Value> = e
        .secrets
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "fingerprint": s.fingerprint,
                "created_at": millis(s.created_at),
                "expires_at": s.expires_at.map(millis),
            })
        })
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("id".into(), e.id.clone().into());
        o.insert("tenant".into(), e.tenant.clone().into());
        o.insert("source".into(), "api".into());
        o.insert("read_only".into(), false.into());
        o.insert("secrets".into(), secrets.into());
        o.insert("created_at".into(), millis(e.created_at));
        o.insert("updated_at".into(), millis(e.updated_at));
    }
    v
}

/// A file endpoint's id in the API: `file.TENANT.NAME` (names hold no dots).
fn file_id(e: &Endpoint) -> String {
    format!("file.{}.{}", e.tenant, e.name)
}

fn file_view(e: &Endpoint) -> Value {
    json!({
        "id": file_id(e),
        "tenant": e.tenant,
        "name": e.name,
        "url": e.url,
        "event_types": e.event_types,
        "ordered": e.ordered,
        "max_in_flight": e.limits.max_in_flight,
        "timeout": e.timeout.map(|t| humantime::format_duration(t).to_string()),
        "source": "file",
        "read_only": true,
    })
}

fn read_only(e: &Endpoint) -> Reply {
    json_response(
        409,
        json!({"error": "read_only", "detail": format!(
            "endpoint `{}` of tenant `{}` is defined in its endpoints file: change it there",
            e.name, e.tenant
        )}),
    )
}

fn store_failed(e: CatalogError) -> Reply {
    match e {
        CatalogError::NoMasterKey => json_response(
            409,
            json!({"error": "master_key_required", "detail": "set store.master_key (file:PATH with 32 bytes as hex) so endpoint secrets can be stored encrypted"}),
        ),
        CatalogError::Limit(tenant, max) => json_response(
            429,
            json!({"error": "endpoint_limit", "detail": format!("tenant `{tenant}` has {max} endpoints, the most it may have: delete one first")}),
        ),
        CatalogError::Taken(tenant, name) => json_response(
            409,
            json!({"error": "name_taken", "detail": format!("tenant `{tenant}` already has an endpoint named `{name}`")}),
        ),
        CatalogError::Keys(detail) => {
            tracing::error!("management API: {detail}");
            json_response(503, json!({"error": "keys_unavailable", "detail": detail}))
        }
        CatalogError::Store(e) => {
            tracing::warn!("management API: {e}");
            error(503, "store_unavailable")
        }
    }
}

/// Counts the call against the tenant's per-minute limit.
fn count_call(api: &Api, tenant: &str) -> Result<(), Reply> {
    api.per_minute
        .admit(tenant)
        .map_err(|wait| super::with_retry_after(error(429, "rate_limited"), wait))
}

/// The body as a JSON object.
async fn object(api: &Api, session: &mut ServerSession) -> Result<Map<String, Value>, Reply> {
    let body = api.body(session).await.map_err(|(s, r)| error(s, r))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(json_response(
            400,
            json!({"error": "invalid_request", "detail": "the body must be a JSON object"}),
        )),
    }
}

/// Takes a string field out of the body.
fn take_string(body: &mut Map<String, Value>, key: &str) -> Result<Option<String>, Reply> {
    match body.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(format!("`{key}` must be a string"))),
    }
}

/// The checks a stored endpoint's URL passes beyond the file rules: its host resolves to
/// no internal address (unless allowed), and its timeout fits this node's lease.
async fn vet(api: &Api, e: &Endpoint) -> Result<(), Reply> {
    let longest = api.dispatcher.longest_attempt();
    if e.timeout.is_some_and(|t| t > longest) {
        return Err(invalid(format!(
            "endpoint `{}`: timeout may be at most {} here (outbound.delivery.timeout)",
            e.name,
            humantime::format_duration(longest)
        )));
    }
    let allow = &api.dispatcher.delivery.allow_internal;
    if let Err(ssrf::Refusal::Blocked(host, ip)) = ssrf::vet(&e.target, allow).await {
        return Err(json_response(
            400,
            json!({"error": "ssrf_blocked", "detail": format!(
                "endpoint `{}`: host `{host}` resolves to {ip}, an internal address: deliveries would be refused (outbound.delivery.allow_internal lists the exceptions)",
                e.name
            )}),
        ));
    }
    Ok(())
}

fn generated_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// A supplied secret, or a fresh one.
fn secret_of(given: Option<String>) -> Result<String, Reply> {
    match given {
        None => Ok(generated_secret()),
        Some(s) if s.len() < MIN_SECRET => Err(invalid(format!(
            "a supplied secret must be at least {MIN_SECRET} characters (leave `secret` out to have one generated)"
        ))),
        Some(s) => Ok(s),
    }
}

fn build(
    api: &Api,
    tenant: &str,
    id: &str,
    spec: &Map<String, Value>,
    secrets: &[crate::config::secrets::Secret],
) -> Result<Endpoint, Reply> {
    let rules = api.dispatcher.catalog.rules();
    endpoints::from_api(tenant, id, &Value::Object(spec.clone()), secrets, &rules)
        .map_err(|problems| invalid(problems.join("; ")))
}

async fn list(api: &Api, who: &Principal, session: &ServerSession) -> Reply {
    let query = session.req_header().uri.query().unwrap_or("");
    let asked = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "tenant")
        .map(|(_, v)| v.into_owned());
    let tenant = match (who.tenant(), asked) {
        (Some(own), Some(asked)) if own != asked => return error(403, "forbidden_tenant"),
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked,
    };
    if let Some(t) = &tenant {
        if let Err(r) = count_call(api, t) {
            return r;
        }
    }
    let stored = match api
        .dispatcher
        .store
        .stored_endpoints(tenant.as_deref())
        .await
    {
        Ok(s) => s,
        Err(e) => return store_failed(e.into()),
    };
    let files = api.dispatcher.catalog.files();
    let mut all: Vec<Value> = files
        .all()
        .filter(|e| tenant.as_deref().is_none_or(|t| t == e.tenant))
        .map(|e| file_view(e))
        .collect();
    all.extend(stored.iter().map(stored_view));
    json_response(200, json!({ "endpoints": all }))
}

/// The endpoint `id` names, as the caller may see it.
enum Found {
    File(std::sync::Arc<Endpoint>),
    Stored(StoredEndpoint),
}

async fn find(api: &Api, who: &Principal, id: &str) -> Result<Found, Reply> {
    if let Some(rest) = id.strip_prefix("file.") {
        let (tenant, name) = rest.split_once('.').unwrap_or((rest, ""));
        return match api.dispatcher.catalog.files().get(tenant, name) {
            Some(e) if who.may(tenant) => Ok(Found::File(e.clone())),
            _ => Err(error(404, "not_found")),
        };
    }
    match api.dispatcher.store.stored_endpoint(id).await {
        Ok(Some(e)) if who.may(&e.tenant) => Ok(Found::Stored(e)),
        Ok(_) => Err(error(404, "not_found")),
        Err(e) => Err(store_failed(e.into())),
    }
}

/// A stored endpoint the caller may change (a file's is read-only), its call counted.
async fn writable(api: &Api, who: &Principal, id: &str) -> Result<StoredEndpoint, Reply> {
    let stored = match find(api, who, id).await? {
        Found::Stored(e) => e,
        Found::File(e) => return Err(read_only(&e)),
    };
    count_call(api, &stored.tenant)?;
    Ok(stored)
}

async fn show(api: &Api, who: &Principal, id: &str) -> Reply {
    let found = match find(api, who, id).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let tenant = match &found {
        Found::File(e) => e.tenant.clone(),
        Found::Stored(e) => e.tenant.clone(),
    };
    if let Err(r) = count_call(api, &tenant) {
        return r;
    }
    match found {
        Found::File(e) => json_response(200, file_view(&e)),
        Found::Stored(e) => json_response(200, stored_view(&e)),
    }
}

async fn create(api: &Api, who: &Principal, session: &mut ServerSession) -> Reply {
    let mut body = match object(api, session).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let tenant = match take_string(&mut body, "tenant") {
        Ok(t) => t,
        Err(r) => return r,
    };
    let tenant = match (tenant, who.tenant()) {
        (Some(t), Some(own)) if t != own => return error(403, "forbidden_tenant"),
        (Some(t), _) => t,
        (None, Some(own)) => own.to_owned(),
        (None, None) => return invalid("`tenant` is required"),
    };
    if !crate::config::is_name(&tenant) {
        return invalid("`tenant` must be letters, digits, `-` or `_`");
    }
    if let Err(r) = count_call(api, &tenant) {
        return r;
    }
    let secret = match take_string(&mut body, "secret").and_then(secret_of) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let secrets = [crate::config::secrets::Secret(secret.clone().into_bytes())];
    let endpoint = match build(api, &tenant, "new", &body, &secrets) {
        Ok(e) => e,
        Err(r) => return r,
    };
    if api
        .dispatcher
        .catalog
        .files()
        .get(&tenant, &endpoint.name)
        .is_some()
    {
        return json_response(
            409,
            json!({"error": "name_taken", "detail": format!("tenant `{tenant}` has an endpoint `{}` in its endpoints file", endpoint.name)}),
        );
    }
    if let Err(r) = vet(api, &endpoint).await {
        return r;
    }
    let spec = Value::Object(body).to_string();
    let stored = api
        .dispatcher
        .store
        .create_endpoint(
            &tenant,
            &endpoint.name,
            &spec,
            secret.as_bytes(),
            api.tenant_limits.endpoints,
        )
        .await;
    match stored {
        Ok(e) => {
            super::reload(api).await;
            tracing::info!(endpoint = %e.id, tenant = %e.tenant, name = %e.name, "management API: endpoint created");
            let mut view = stored_view(&e);
            view["secret"] = secret.into();
            json_response(201, view)
        }
        Err(e) => store_failed(e),
    }
}

async fn update(api: &Api, who: &Principal, id: &str, session: &mut ServerSession) -> Reply {
    let stored = match writable(api, who, id).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let body = match object(api, session).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    for fixed in ["tenant", "secret", "id"] {
        if body.contains_key(fixed) {
            let why = match fixed {
                "secret" => "a secret is replaced with POST /v1/endpoints/{id}/rotate",
                _ => "it cannot change: create another endpoint",
            };
            return invalid(format!("`{fixed}` is not patched: {why}"));
        }
    }
    if body
        .get("name")
        .is_some_and(|n| n.as_str() != Some(stored.name.as_str()))
    {
        return invalid(
            "`name` cannot change (deliveries are kept under it): create another endpoint",
        );
    }
    let mut spec = match serde_json::from_str::<Value>(&stored.spec) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    for (k, v) in body {
        if v.is_null() {
            spec.remove(&k);
        } else {
            spec.insert(k, v);
        }
    }
    let secrets = match api.dispatcher.store.unsealed_endpoints().await {
        Ok(all) => all
            .into_iter()
            .find(|(e, _)| e.id == stored.id)
            .map(|(_, s)| s)
            .unwrap_or_default(),
        Err(e) => return store_failed(e),
    };
    let endpoint = match build(api, &stored.tenant, &stored.id, &spec, &secrets) {
        Ok(e) => e,
        Err(r) => return r,
    };
    if let Err(r) = vet(api, &endpoint).await {
        return r;
    }
    let spec = Value::Object(spec).to_string();
    match api
        .dispatcher
        .store
        .update_endpoint(&stored.id, &spec)
        .await
    {
        Ok(Some(e)) => {
            super::reload(api).await;
            json_response(200, stored_view(&e))
        }
        Ok(None) => error(404, "not_found"),
        Err(e) => store_failed(e),
    }
}

async fn delete(api: &Api, who: &Principal, id: &str) -> Reply {
    let stored = match writable(api, who, id).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    match api.dispatcher.store.delete_endpoint(&stored.id).await {
        Ok(true) => {
            super::reload(api).await;
            tracing::info!(endpoint = %stored.id, tenant = %stored.tenant, name = %stored.name, "management API: endpoint deleted");
            super::empty(204)
        }
        Ok(false) => error(404, "not_found"),
        Err(e) => store_failed(e),
    }
}

async fn rotate(api: &Api, who: &Principal, id: &str, session: &mut ServerSession) -> Reply {
    let stored = match writable(api, who, id).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let mut body = match object(api, session).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let secret = match take_string(&mut body, "secret").and_then(secret_of) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let overlap = match take_string(&mut body, "overlap") {
        Ok(None) => DEFAULT_OVERLAP,
        Ok(Some(text)) => match crate::config::parse_duration(&text) {
            Ok(d) if d <= MAX_OVERLAP => d,
            Ok(_) => return invalid("`overlap` may be at most 30d"),
            Err(e) => return invalid(format!("`overlap`: {e}")),
        },
        Err(r) => return r,
    };
    if let Some(k) = body.keys().next() {
        return invalid(format!(
            "unknown key `{k}`: a rotation takes `secret` and `overlap`"
        ));
    }
    // The new secret must suit the endpoint's scheme.
    let spec = match serde_json::from_str::<Value>(&stored.spec) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    let secrets = [crate::config::secrets::Secret(secret.clone().into_bytes())];
    if let Err(r) = build(api, &stored.tenant, &stored.id, &spec, &secrets) {
        return r;
    }
    let rotated = api
        .dispatcher
        .store
        .rotate_secret(&stored.id, secret.as_bytes(), overlap.as_millis() as i64)
        .await;
    match rotated {
        Ok(Some(e)) => {
            super::reload(api).await;
            tracing::info!(endpoint = %e.id, tenant = %e.tenant, "management API: endpoint secret rotated");
            let mut view = stored_view(&e);
            view["secret"] = secret.into();
            json_response(200, view)
        }
        Ok(None) => error(404, "not_found"),
        Err(e) => store_failed(e),
    }
}
