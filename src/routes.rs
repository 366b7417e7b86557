//! The filters in force: which path belongs to which provider, and each provider's chain,
//! sink and limits. Built from the filter files at start and rebuilt on SIGHUP.
//!
//! A reload swaps the whole table at once ([`ArcSwap`]): a request in flight finishes with the
//! table it started with, the next one sees the new one, and nothing else is touched: the
//! sinks, their connections and the dedup cache stay as they are, so a retry of an event
//! accepted before the reload is still a duplicate. A filter set with any error (or one that
//! names a sink the running server lacks) is refused, each problem logged with its
//! `file:line`, and the old table keeps serving. Listeners, sinks and dedup settings are the
//! server file's and change with a graceful upgrade.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::Severity;
use crate::filters::config::Filter as FilterConfig;
use crate::filters::dedup::Dedup;
use crate::filters::rate_limit::FleetLimit;
use crate::filters::{self, Chain};
use crate::loader;
use crate::sinks::{Sink, Sinks};

pub struct Provider {
    pub name: Arc<str>,
    pub config: FilterConfig,
    pub chain: Chain,
    pub sink: Arc<dyn Sink>,
    /// `rate_limit: { scope: fleet }`: counted in Redis once the local limit passed.
    pub fleet_limit: Option<FleetLimit>,
    /// Its accepted ids go to the dedup journal (its sink keeps no record of its own).
    pub journaled: bool,
    pub series: crate::metrics::ProviderSeries,
}

/// One generation of the filters.
pub struct Routes {
    providers: Vec<Arc<Provider>>,
    by_path: HashMap<String, usize>,
}

/// What a table is built against: the running server's sinks and dedup store.
#[derive(Clone)]
pub struct Builder {
    pub sinks: Sinks,
    pub dedup: Arc<Dedup>,
    pub journal: bool,
}

impl Builder {
    pub fn build(&self, filters: Vec<FilterConfig>) -> Result<Routes, String> {
        let mut providers = Vec::new();
        let mut by_path = HashMap::new();
        for filter in filters {
            let sink = self.sinks.get(&filter.sink).cloned().ok_or_else(|| {
                format!(
                    "filter `{}`: no sink `{}` in the running server (new sinks come with a graceful upgrade)",
                    filter.name, filter.sink
                )
            })?;
            let fleet_limit = match (filter.rate_limit, self.dedup.store()) {
                (Some(limit), Some(store)) if limit.fleet => {
                    Some(FleetLimit::new(store, &filter.name, limit))
                }
                (Some(limit), None) if limit.fleet => {
                    return Err(format!(
                        "filter `{}`: rate_limit scope fleet needs dedup backend redis",
                        filter.name
                    ))
                }
                _ => None,
            };
            by_path.insert(filter.route.clone(), providers.len());
            providers.push(Arc::new(Provider {
                name: Arc::from(filter.name.as_str()),
                chain: filters::chain(&filter),
                journaled: self.journal && sink.recorded_in().is_none() && !sink.idempotent(),
                series: crate::metrics::ProviderSeries::new(&filter.name, sink.name()),
                config: filter,
                sink,
                fleet_limit,
            }));
        }
        let names: Vec<&str> = providers.iter().map(|p| &*p.name).collect();
        let sinks: Vec<&str> = self.sinks.values().map(|s| s.name()).collect();
        crate::metrics::register_series(&names, &sinks);
        Ok(Routes { providers, by_path })
    }
}

impl Routes {
    /// The provider owning a path: an exact route, or for `url-key` filters, route + `/KEY`.
    pub fn route(&self, path: &str) -> Option<&Arc<Provider>> {
        if let Some(&i) = self.by_path.get(path) {
            return Some(&self.providers[i]);
        }
        let (parent, _key) = path.rsplit_once('/')?;
        let &i = self.by_path.get(parent)?;
        let provider = &self.providers[i];
        provider.config.url_key.then_some(provider)
    }

    /// Whether a filter of this generation is named `name` and takes its keys from the store.
    pub fn has_stored_keys(&self, name: &str) -> bool {
        self.providers
            .iter()
            .any(|p| &*p.name == name && p.config.stored_keys)
    }

    pub fn providers(&self) -> &[Arc<Provider>] {
        &self.providers
    }
}

/// Rebuilds the table from the config on SIGHUP.
pub struct Reloader {
    pub config: PathBuf,
    pub routes: Arc<ArcSwap<Routes>>,
    pub builder: Builder,
}

impl Reloader {
    /// Loads and validates the filters; swaps them in only when every one of them is fine.
    pub fn reload(&self) -> Result<usize, String> {
        let loaded = loader::load(&self.config);
        for problem in &loaded.problems {
            match problem.severity {
                Severity::Error => tracing::error!("{problem}"),
                Severity::Warning => tracing::warn!("{problem}"),
            }
        }
        let Some(config) = loaded.config else {
            return Err(format!("{} errors (listed above)", loaded.errors().count()));
        };
        let routes = self.builder.build(config.filters)?;
        let n = routes.providers.len();
        self.routes.store(Arc::new(routes));
        Ok(n)
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP, filters reload only by upgrade: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = hangup.recv() => {}
            }
            match self.reload() {
                Ok(n) => tracing::info!(
                    filters = n,
                    "SIGHUP: filters reloaded (listeners, sinks and dedup settings change with a graceful upgrade)"
                ),
                Err(e) => tracing::error!(
                    "SIGHUP: filters not reloaded, the previous ones keep serving: {e}"
                ),
            }
        }
    }
}
