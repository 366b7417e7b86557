//! The endpoints a node delivers to: the files' (fixed at load) and the management API's
//! (in the store, changing at run time), as one [`Endpoints`] swapped whole on a change; and,
//! with the same version, the stored keys of `url-key` filters (`keys: store`).
//!
//! A node reloads the stored ones when the store's catalog version moves (polled each
//! second by [`Refresher`], at once after its own API's change) or when a rotated-out secret
//! expires. A lookup that misses (a tenant or endpoint another node just created) checks the
//! version before it answers "unknown": a delivery is never dead-lettered, nor a message
//! refused, because this node had not polled yet.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::endpoints::{self, Endpoint, Endpoints, Rules};
use crate::schemes::url_key::StoredKey;
use crate::store::{now_ms, Store};

/// How often a node checks the store for changes made elsewhere.
pub const POLL: Duration = Duration::from_secs(1);

pub struct Catalog {
    files: Endpoints,
    current: ArcSwap<Endpoints>,
    /// The store version `current` was built from (-1: not yet).
    version: AtomicI64,
    /// When the earliest rotated-out secret of `current` stops signing.
    expiry: AtomicI64,
    reloading: tokio::sync::Mutex<()>,
    allow_http: bool,
    allow_internal: Vec<IpNet>,
}

impl Catalog {
    pub fn new(files: Endpoints, allow_http: bool, allow_internal: Vec<IpNet>) -> Catalog {
        Catalog {
            current: ArcSwap::from_pointee(files.clone()),
            files,
            version: AtomicI64::new(-1),
            expiry: AtomicI64::new(i64::MAX),
            reloading: tokio::sync::Mutex::new(()),
            allow_http,
            allow_internal,
        }
    }

    /// The endpoints as last loaded.
    pub fn current(&self) -> Arc<Endpoints> {
        self.current.load_full()
    }

    /// The endpoints files' own (the API's are not among them).
    pub fn files(&self) -> &Endpoints {
        &self.files
    }

    pub fn rules(&self) -> Rules<'_> {
        Rules {
            allow_http: self.allow_http,
            allow_internal: &self.allow_internal,
        }
    }

    /// Reloads the stored endpoints if the store changed since (or a secret expired);
    /// whether it did.
    pub async fn refresh(&self, store: &Store) -> Result<bool, String> {
        let _one = self.reloading.lock().await;
        let version = store.catalog_version().await.map_err(|e| e.to_string())?;
        if version == self.version.load(Ordering::Acquire)
            && now_ms() < self.expiry.load(Ordering::Acquire)
        {
            return Ok(false);
        }
        let stored = store
            .unsealed_endpoints()
            .await
            .map_err(|e| e.to_string())?;
        let rules = self.rules();
        let mut more = Vec::with_capacity(stored.len());
        let mut expiry = i64::MAX;
        for (e, secrets) in stored {
            if let Some(at) = e.secrets.iter().filter_map(|s| s.expires_at).min() {
                expiry = expiry.min(at);
            }
            // A file gained an endpoint of that name after the API made this one: deliveries
            // are kept by name, so the file's wins and this one is left out, loudly.
            if self.files.get(&e.tenant, &e.name).is_some() {
                tracing::error!(
                    endpoint = %e.id,
                    tenant = %e.tenant,
                    name = %e.name,
                    "stored endpoint has the name of an endpoints file's entry, not delivered to: rename one of them"
                );
                continue;
            }
            let spec = match serde_json::from_str::<serde_json::Value>(&e.spec) {
                Ok(v) => v,
                Err(err) => {
                    tracing::error!(endpoint = %e.id, "stored endpoint spec is not JSON: {err}");
                    continue;
                }
            };
            match endpoints::from_api(&e.tenant, &e.id, &spec, &secrets, &rules) {
                Ok(built) => more.push(Arc::new(built)),
                // The rules it passed at creation changed (this node's allow_internal, say).
                Err(problems) => tracing::error!(
                    endpoint = %e.id,
                    tenant = %e.tenant,
                    name = %e.name,
                    "stored endpoint no longer passes this node's rules, not delivered to: {}",
                    problems.join("; ")
                ),
            }
        }
        // The url-key filters' stored keys reload with the endpoints (one version for both).
        let keys = store.active_keys().await.map_err(|e| e.to_string())?;
        let mut installed: std::collections::HashMap<String, Vec<StoredKey>> = Default::default();
        for k in keys {
            if let Some(at) = k.previous_until {
                expiry = expiry.min(at);
            }
            let hashes = k
                .hashes
                .iter()
                .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
                .collect();
            installed
                .entry(k.filter)
                .or_default()
                .push(StoredKey { id: k.id, hashes });
        }
        crate::schemes::url_key::install(installed);
        self.current.store(Arc::new(self.files.with(more)));
        self.expiry.store(expiry, Ordering::Release);
        self.version.store(version, Ordering::Release);
        Ok(true)
    }

    /// The endpoint, after a reload if this node does not know it yet; an error when the
    /// reload failed (so "unknown" is not certain).
    pub async fn get(
        &self,
        store: &Store,
        tenant: &str,
        name: &str,
    ) -> Result<Option<Arc<Endpoint>>, String> {
        if let Some(e) = self.current().get(tenant, name) {
            return Ok(Some(e.clone()));
        }
        self.refresh(store).await?;
        Ok(self.current().get(tenant, name).cloned())
    }

    /// The tenant's endpoints, after a reload if this node does not know the tenant yet.
    pub async fn tenant(&self, store: &Store, tenant: &str) -> Option<Arc<Endpoints>> {
        let now = self.current();
        if now.tenant(tenant).is_some() {
            return Some(now);
        }
        if let Err(e) = self.refresh(store).await {
            tracing::warn!("outbound: endpoints not reloaded: {e}");
        }
        let now = self.current();
        now.tenant(tenant).is_some().then_some(now)
    }
}

/// Polls the store for endpoint changes made through any node's API.
pub struct Refresher {
    pub dispatcher: Arc<super::Dispatcher>,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let d = &self.dispatcher;
        let mut failing = false;
        let write_uses = || async {
            let uses = crate::schemes::url_key::take_uses();
            if uses.is_empty() {
                return;
            }
            if let Err(e) = d.store.add_key_uses(&uses).await {
                // Statistics only: kept for the next write (lost if the process ends first).
                tracing::debug!("inbound key uses not recorded: {e}");
                crate::schemes::url_key::give_back(uses);
            }
        };
        loop {
            write_uses().await;
            match d.catalog.refresh(&d.store).await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(
                            endpoints = d.catalog.current().count(),
                            "outbound: endpoints reloaded"
                        );
                    }
                    failing = false;
                }
                // Once per outage, not once a second.
                Err(e) => {
                    if !failing {
                        tracing::warn!("outbound: endpoints not reloaded: {e}");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {
                    // A graceful stop writes the last second's uses too.
                    write_uses().await;
                    return;
                }
            }
        }
    }
}
