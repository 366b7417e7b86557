//! The whole configuration: `conf/portcullis.yaml` (the server) plus one YAML file per
//! provider filter, composed from each component's own loader.
//!
//! Loading validates everything a running gateway would trip over later (secrets that resolve
//! to nothing, routes claimed twice, unknown keys, bad CIDRs, sizes and durations) and reports
//! all of it at once with `file:line`. The gateway only ever starts from a config with no errors.

pub mod server;

use std::path::{Path, PathBuf};

use crate::config::diagnostics::{self, Report};
use crate::config::{Problem, Severity};
use crate::filters::config::{self as filter, Filter};
pub use server::Server;

/// A loaded, valid configuration.
pub struct Config {
    pub path: PathBuf,
    pub server: Server,
    pub filters: Vec<Filter>,
    /// The outbound endpoints (`outbound.endpoints`), by tenant.
    pub endpoints: crate::outbound::endpoints::Endpoints,
}

/// Everything `load` found: the config when it has no errors, and every problem either way.
pub struct Loaded {
    pub config: Option<Config>,
    pub problems: Vec<Problem>,
}

impl Loaded {
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
}

/// Loads one filter file on its own (for `sign` and `verify`), without a server config.
pub fn load_filter(path: &Path) -> (Option<Filter>, Vec<Problem>) {
    let mut problems = Vec::new();
    let Some(text) = diagnostics::read(path, &mut problems) else {
        return (None, problems);
    };
    let (filter, mut more) = load_filter_text(path, &text);
    problems.append(&mut more);
    (filter, problems)
}

/// [`load_filter`] of text already read (`path` names it and anchors relative paths).
pub fn load_filter_text(path: &Path, text: &str) -> (Option<Filter>, Vec<Problem>) {
    let mut problems = Vec::new();
    let filter = filter::load(path, None, &mut Report::new(path, text, &mut problems));
    (filter, problems)
}

/// The server file alone, from text already read: what `load` checks before the filters.
pub fn load_server_text(path: &Path, text: &str) -> (Option<Server>, Vec<Problem>) {
    let mut problems = Vec::new();
    let server = server::load(path, &mut Report::new(path, text, &mut problems));
    (server, problems)
}

pub fn load(path: &Path) -> Loaded {
    let mut problems = Vec::new();
    let Some(text) = diagnostics::read(path, &mut problems) else {
        if !path.exists() {
            if let Some(p) = problems.last_mut() {
                p.message += " (a relative path counts from the current directory: run from the checkout, or pass -c /path/to/portcullis.yaml)";
            }
        }
        return Loaded {
            config: None,
            problems,
        };
    };
    let server = server::load(path, &mut Report::new(path, &text, &mut problems));
    let Some(server) = server else {
        return Loaded {
            config: None,
            problems,
        };
    };
    let filters = if server.listen.is_empty() && server.outbound.is_some() {
        Vec::new()
    } else {
        load_filters(&server, path, &mut problems)
    };
    let endpoints = load_endpoints(&server, &mut problems);
    let api = server.outbound.as_ref().and_then(|o| o.api);
    for f in filters.iter().filter(|f| f.stored_keys && api.is_none()) {
        problems.push(Problem {
            file: path.to_path_buf(),
            line: 1,
            severity: Severity::Error,
            message: format!(
                "filter `{}` takes its keys from the store (keys: store): it needs an outbound: block with api: (keys are managed at /v1/filters/{}/keys)",
                f.name, f.name
            ),
        });
    }
    check_bridges(
        &server,
        &endpoints,
        &mut Report::new(path, &text, &mut problems),
    );
    let has_errors = problems.iter().any(|p| p.severity == Severity::Error);
    Loaded {
        config: (!has_errors).then(|| Config {
            path: path.to_path_buf(),
            server,
            filters,
            endpoints,
        }),
        problems,
    }
}

fn load_endpoints(
    server: &Server,
    problems: &mut Vec<Problem>,
) -> crate::outbound::endpoints::Endpoints {
    use crate::outbound::endpoints;
    let Some(outbound) = &server.outbound else {
        return endpoints::Endpoints::default();
    };
    let Some(dir) = &outbound.endpoints_dir else {
        return endpoints::Endpoints::default();
    };
    let rules = endpoints::Rules {
        allow_http: outbound.delivery.allow_http,
        allow_internal: &outbound.delivery.allow_internal,
    };
    endpoints::load_dir(dir, &rules, problems)
}

/// A sink of `type: outbound` needs the dispatcher and a tenant with endpoints; the
/// dead-letter sink must be a sink of this file, and not a bridge (dead letters would loop).
fn check_bridges(
    server: &Server,
    endpoints: &crate::outbound::endpoints::Endpoints,
    report: &mut Report<'_>,
) {
    if let Some(name) = server
        .outbound
        .as_ref()
        .and_then(|o| o.dead_letters.as_ref())
    {
        match server.sinks.iter().find(|(n, _)| n == name) {
            None => report.error(
                &["outbound", "dead_letters", "sink"],
                format!("dead_letters sink `{name}` is not a sink defined here"),
            ),
            Some((_, s)) if s.bridges_to().is_some() => report.error(
                &["outbound", "dead_letters", "sink"],
                format!("dead_letters sink `{name}` is an outbound bridge: dead letters would be sent back into the dispatcher"),
            ),
            Some(_) => {}
        }
    }
    for (name, sink) in &server.sinks {
        let Some(tenant) = sink.bridges_to() else {
            continue;
        };
        if server.outbound.is_none() {
            report.error(
                &["sinks", name, "type"],
                format!("sink `{name}` (type outbound) needs an outbound: block (its ledger and endpoints)"),
            );
        } else if endpoints.tenant(tenant).is_none() {
            report.error(
                &["sinks", name, "tenant"],
                format!(
                    "sink `{name}`: tenant `{tenant}` has no endpoints file in outbound.endpoints"
                ),
            );
        }
    }
}

/// Every filter file of the server's directory, with what spans files: routes and names
/// claimed twice, sinks the server does not offer to filters.
fn load_filters(server: &Server, conf: &Path, problems: &mut Vec<Problem>) -> Vec<Filter> {
    let sink_names: Vec<String> = server.sinks.iter().map(|(n, _)| n.clone()).collect();
    let mut filters: Vec<Filter> = Vec::new();
    for file in filter_files(&server.filters_dir, conf, problems) {
        let Some(text) = diagnostics::read(&file, problems) else {
            continue;
        };
        let mut report = Report::new(&file, &text, problems);
        let Some(f) = filter::load(&file, Some(&sink_names), &mut report) else {
            continue;
        };
        if let Some((primary, _)) = server.fallbacks.iter().find(|(_, spool)| *spool == f.sink) {
            report.error(
                &["sink"],
                format!("sink `{}` is the fallback spool of `{primary}`: its events are replayed there, so a filter cannot use it directly", f.sink),
            );
        } else if f.rate_limit.is_some_and(|r| r.fleet) && server.dedup_shared.is_none() {
            report.error(
                &["rate_limit", "scope"],
                "rate_limit scope: fleet counts in the fleet's Redis: set dedup: { backend: redis, url: … } in the server config",
            );
        } else if let Some(other) = filters.iter().find(|o| o.route == f.route) {
            report.error(
                &["path"],
                format!(
                    "route {} is already served by filter `{}`: give one of them another `path:`",
                    f.route, other.name
                ),
            );
        } else if let Some(other) = filters.iter().find(|o| o.name == f.name) {
            report.error(
                &["name"],
                format!(
                    "filter name `{}` is used twice (also by the filter on {})",
                    f.name, other.route
                ),
            );
        } else {
            let bridged = server
                .sinks
                .iter()
                .find(|(n, _)| *n == f.sink)
                .and_then(|(_, s)| s.bridges_to());
            if f.map.is_some() && bridged.is_some() {
                report.warn(
                    &["map"],
                    format!("sink `{}` (type outbound) makes the raw body the message payload and carries no map: shape what an endpoint receives with its transform: {{ map: … }}", f.sink),
                );
            }
            filters.push(f);
        }
    }
    if filters.is_empty() && !problems.iter().any(|p| p.severity == Severity::Error) {
        problems.push(Problem {
            file: server.filters_dir.clone(),
            line: 1,
            severity: Severity::Warning,
            message: "no filters: every request will get 404 unknown_provider".into(),
        });
    }
    filters
}

fn filter_files(dir: &Path, conf: &Path, problems: &mut Vec<Problem>) -> Vec<PathBuf> {
    crate::config::yaml_files(dir).unwrap_or_else(|e| {
        problems.push(Problem {
            file: conf.to_path_buf(),
            line: diagnostics::line_of(
                &std::fs::read_to_string(conf).unwrap_or_default(),
                &["filters"],
            ),
            severity: Severity::Error,
            message: format!("filters directory {} cannot be read: {e}", dir.display()),
        });
        Vec::new()
    })
}
