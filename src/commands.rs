//! What each CLI command does; `main.rs` only parses arguments and calls these.
//! Each returns the process exit code.

use std::io::Write;
use std::path::Path;

use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{self, Severity};
use crate::gateway::Gateway;
use crate::loader;
use crate::schemes::Outbound;

pub struct RunOptions {
    pub daemon: bool,
    pub upgrade: bool,
    pub access_log: bool,
}

/// Loads and validates the config, then serves until told to stop.
pub fn run(path: &Path, options: RunOptions) -> i32 {
    // Absolute, so relative paths in the config still hold after a daemon's chdir("/").
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let path = absolute.as_path();
    let loaded = loader::load(path);
    for problem in &loaded.problems {
        match problem.severity {
            Severity::Error => tracing::error!("{problem}"),
            Severity::Warning => tracing::warn!("{problem}"),
        }
    }
    let Some(config) = loaded.config else {
        tracing::error!(
            "not starting: fix the errors above (`portcullis check -c {}` lists them)",
            path.display()
        );
        if options.upgrade {
            tracing::error!("upgrade refused: the running gateway keeps serving with its config");
        }
        return 1;
    };
    // Every address this process listens on.
    let api = config
        .server
        .outbound
        .as_ref()
        .and_then(|o| o.api)
        .map(|a| a.to_string());
    let addrs: Vec<&str> = config
        .server
        .listen
        .iter()
        .map(|l| l.addr.as_str())
        .chain(config.server.admin.iter().map(String::as_str))
        .chain(api.as_deref())
        .collect();
    let sockets_held = crate::lifecycle::SocketsHeld {
        addrs: addrs.iter().filter_map(|a| a.parse().ok()).collect(),
    };
    if !options.upgrade {
        // (With -u the running process holds the sockets and hands them over.)
        if let Err(e) = addresses_free(&addrs) {
            tracing::error!("not starting: {e}");
            return 1;
        }
    }
    crate::metrics::init();
    if settings_need_store(&config) {
        // Before Pingora forks: a ledger that cannot open stops the start here.
        if let Err(e) = crate::store::Store::check(&config.server.store) {
            tracing::error!("not starting: {e}");
            return 1;
        }
    }
    let loader::Config {
        server: mut settings,
        filters,
        endpoints,
        ..
    } = config;
    // One store (and pool) for the dispatcher and the event log.
    let store = settings_need_store_of(&settings)
        .then(|| std::sync::Arc::new(crate::store::Store::new(&settings.store)));
    let mut outbound = settings.outbound.take().map(|o| {
        crate::metrics::register_outbound_series();
        let store = store.clone().expect("a store is opened for outbound");
        let dispatcher = std::sync::Arc::new(crate::outbound::Dispatcher::new(
            store,
            endpoints,
            o.delivery.clone(),
        ));
        (o, dispatcher)
    });
    let event_log = settings.event_log.map(|config| {
        let (log, queue) = crate::event_log::EventLog::new(&config);
        let writer = crate::event_log::writer::Writer {
            store: store.clone().expect("a store is opened for the event log"),
            config,
            queue: std::sync::Mutex::new(Some(queue)),
        };
        (log, writer)
    });
    let (event_log, event_log_writer) = event_log.unzip();
    let built = crate::sinks::Built {
        dispatcher: outbound.as_ref().map(|(_, d)| d.clone()),
    };
    let built = crate::sinks::build_all(&settings.sinks, &settings.fallbacks, &built);
    let (sinks, replayers) = match built {
        Ok(built) => built,
        Err(e) => {
            tracing::error!("not starting: {e}");
            return 1;
        }
    };
    // The dispatcher publishes dead letters to one of them.
    let dead_letter_sinks = sinks.clone();
    let gateway = match Gateway::build(filters, &settings, sinks, options.access_log, event_log) {
        Ok(g) => g,
        Err(e) => {
            tracing::error!("not starting: {e}");
            return 1;
        }
    };
    // Ids accepted before this process started (a restart, an upgrade, a crash) are
    // duplicates still: read back from the spool segments and the journal before serving.
    let catch_up = gateway.recovery().map(|mut recovery| {
        let started = std::time::Instant::now();
        let ids = recovery.catch_up(&gateway.dedup());
        tracing::info!(
            ids,
            ms = started.elapsed().as_millis() as u64,
            "dedup: remembered the ids accepted within their TTL"
        );
        let handover = settings.pingora.grace_period_seconds.unwrap_or(60)
            + settings
                .pingora
                .graceful_shutdown_timeout_seconds
                .unwrap_or(5)
            + 5;
        crate::filters::dedup::CatchUp {
            recovery: std::sync::Mutex::new(recovery),
            dedup: gateway.dedup(),
            handover: std::time::Duration::from_secs(handover),
        }
    });
    let reloader = gateway.reloader(path);
    let routes = gateway.routes();
    let (listeners, admin_addr, drain) = (settings.listen, settings.admin, settings.drain);
    let header_timeout = settings.header_timeout;
    let trusted_proxies = settings.trusted_proxies;
    let mut conf = settings.pingora;
    conf.daemon |= options.daemon;
    // `run -d` waits for the daemon its own way (crate::daemon); Pingora's wait would race it.
    conf.daemon_wait_for_ready = false;
    let opt = Opt {
        upgrade: options.upgrade,
        daemon: options.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    // As a service, so a daemon (`-d`) takes the sockets after forking.
    let bootstrap = server.bootstrap_as_a_service();
    let (sinks, dedup) = (gateway.sinks(), gateway.dedup());
    let mut app = pingora::proxy::HttpProxy::new(gateway, server.configuration.clone());
    app.handle_init_modules();
    let mut http_options = pingora::apps::HttpServerOptions::default();
    http_options.h2_idle_timeout = Some(header_timeout);
    app.server_options = Some(http_options);
    let mut proxy = Service::new(
        "portcullis".into(),
        crate::lifecycle::Lingering {
            inner: std::sync::Arc::new(crate::header_deadline::HeaderDeadline {
                inner: std::sync::Arc::new(app),
                timeout: header_timeout,
            }),
        },
    );
    let mut resolvers = Vec::new();
    let mut floor = crate::tls::Tls13Floor::default();
    let mut proxy_protocol = crate::tls::ProxyProtocol {
        addrs: Vec::new(),
        trusted: trusted_proxies,
    };
    for listener in &listeners {
        match &listener.tls {
            None => proxy.add_tcp(&listener.addr),
            Some(tls) => match crate::tls::settings(&listener.addr, tls) {
                Ok((settings, resolver)) => {
                    proxy.add_tls_with_settings(&listener.addr, None, settings);
                    resolvers.push(resolver);
                    if listener.proxy_protocol {
                        proxy_protocol
                            .addrs
                            .extend(listener.addr.parse::<std::net::SocketAddr>());
                    }
                    if tls.min_version == crate::tls::TlsVersion::Tls13 {
                        floor
                            .addrs
                            .extend(listener.addr.parse::<std::net::SocketAddr>());
                    }
                }
                Err(e) => {
                    tracing::error!("not starting: TLS listener {}: {e}", listener.addr);
                    return 1;
                }
            },
        }
        tracing::info!(
            addr = %listener.addr,
            tls = listener.tls.is_some(),
            proxy_protocol = listener.proxy_protocol,
            "listening"
        );
    }
    // The PROXY header comes first on the wire, then the ClientHello the floor reads.
    // The accept clock first: it bounds the PROXY header and the handshake as well.
    let mut pre_tls: Vec<std::sync::Arc<dyn pingora::listeners::PreTlsProcess>> =
        vec![std::sync::Arc::new(crate::header_deadline::AcceptClock {
            timeout: header_timeout,
        })];
    if !proxy_protocol.addrs.is_empty() {
        pre_tls.push(std::sync::Arc::new(proxy_protocol));
    }
    if !floor.addrs.is_empty() {
        pre_tls.push(std::sync::Arc::new(floor));
    }
    if listeners.iter().any(|l| l.tls.is_some()) {
        proxy
            .endpoints()
            .set_pre_tls_callback(std::sync::Arc::new(crate::tls::PreTlsChain(pre_tls)));
    }
    if !listeners.is_empty() {
        server.add_service(proxy).add_dependency(&bootstrap);
    }
    let mut sources = Vec::new();
    if let Some((o, dispatcher)) = &mut outbound {
        sources = crate::outbound::add_services(
            &mut server,
            &bootstrap,
            o,
            dispatcher,
            &dead_letter_sinks,
            routes,
            event_log_writer.is_some(),
        );
    }
    if let Some(writer) = event_log_writer {
        server.add_service(background_service("event log", writer));
    }
    // Always present: it also keeps SIGHUP from terminating the process.
    server.add_service(background_service(
        "certificate watcher",
        crate::tls::CertWatcher { resolvers },
    ));
    server.add_service(background_service("filter reloader", reloader));
    if let Some(catch_up) = catch_up {
        server.add_service(background_service("dedup catch-up", catch_up));
    }
    for replayer in replayers {
        server.add_service(background_service("fallback replay", replayer));
    }
    let warmer = crate::sinks::Warmer(sinks.clone());
    server.add_service(background_service("sink warm-up", warmer));
    if let Some(addr) = admin_addr {
        let store = outbound.as_ref().map(|(_, d)| d.store.clone());
        let admin = Admin {
            sinks,
            dedup,
            store,
            sources,
        };
        let mut admin = Service::new("admin".into(), HttpServer::new_app(admin));
        admin.add_tcp(&addr);
        server.add_service(admin).add_dependency(&bootstrap);
        tracing::info!(%addr, "admin listening (/healthz /readyz /metrics)");
    }
    server.add_service(background_service("drainer", crate::lifecycle::Drainer));
    server
        .add_service(background_service("sockets held", sockets_held))
        .add_dependency(&bootstrap);
    if server.configuration.daemon {
        let conf = server.configuration.clone();
        crate::daemon::fork_and_wait(crate::daemon::Wait {
            pid_file: &conf.pid_file,
            upgrade_sock: &conf.upgrade_sock,
            upgrade: options.upgrade,
            timeout: std::time::Duration::from_secs(
                conf.daemon_ready_timeout_seconds.map_or(600, |s| s.get()),
            ),
        });
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(crate::lifecycle::Signals { drain }),
    });
    0
}

/// Whether this config dispatches or keeps an event log (and so needs its store).
fn settings_need_store(config: &loader::Config) -> bool {
    settings_need_store_of(&config.server)
}

fn settings_need_store_of(server: &loader::Server) -> bool {
    server.outbound.is_some() || server.event_log.is_some()
}

/// Refuses to start when an address is taken, before Pingora binds it: Pingora would retry
/// for half a minute and then panic in its listener thread, leaving a live, "ready" process
/// that serves nothing.
fn addresses_free(addrs: &[&str]) -> Result<(), String> {
    for addr in addrs {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let port = addr.rsplit(':').next().unwrap_or("");
            return Err(match e.kind() {
                std::io::ErrorKind::AddrInUse => format!(
                    "{addr} is already in use: stop what listens there (ss -ltnp 'sport = :{port}' shows it) or change listen:/admin: in the config"
                ),
                std::io::ErrorKind::PermissionDenied => format!(
                    "{addr}: permission denied: ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it)"
                ),
                _ => format!("{addr}: cannot listen there: {e}"),
            });
        }
    }
    Ok(())
}

/// Validates the config and every filter; prints each problem with `file:line`. A closed
/// stdout (`check | head`) ends the listing quietly; the exit code still tells.
pub fn check(path: &Path) -> i32 {
    let loaded = loader::load(path);
    let mut out = std::io::stdout().lock();
    for problem in &loaded.problems {
        let _ = writeln!(out, "{problem}");
    }
    let errors = loaded.errors().count();
    let warnings = loaded.problems.len() - errors;
    match &loaded.config {
        Some(c) => {
            let endpoints = match &c.server.outbound {
                Some(_) => format!(", {}", count(c.endpoints.count(), "outbound endpoint")),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "{}: ok ({}, {}{endpoints}, {})",
                path.display(),
                count(c.filters.len(), "filter"),
                count(c.server.sinks.len(), "sink"),
                count(warnings, "warning")
            );
            0
        }
        None => {
            let _ = writeln!(
                out,
                "{}: {}, {}",
                path.display(),
                count(errors, "error"),
                count(warnings, "warning")
            );
            1
        }
    }
}

/// "1 filter", "2 filters".
fn count(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

fn load_filter_or_report(path: &Path) -> Option<crate::filters::config::Filter> {
    let (filter, problems) = loader::load_filter(path);
    for p in problems.iter().filter(|p| p.severity == Severity::Error) {
        eprintln!("{p}");
    }
    filter
}

pub struct SignOptions<'a> {
    pub filter: &'a Path,
    pub body: Vec<u8>,
    pub body_file: Option<&'a Path>,
    pub timestamp: Option<i64>,
    pub id: Option<String>,
    pub curl: Option<String>,
}

/// Prints the headers (or a whole curl command) of a request the filter accepts.
pub fn sign(opts: SignOptions<'_>) -> i32 {
    let Some(filter) = load_filter_or_report(opts.filter) else {
        return 2;
    };
    let timestamp = opts
        .timestamp
        .unwrap_or_else(|| chrono::Utc::now().timestamp());
    let id = opts.id.unwrap_or_else(|| {
        format!(
            "evt_{}",
            crate::schemes::url_key_generate().trim_start_matches("wh_")
        )
    });
    let content_type = filter
        .content_types
        .first()
        .cloned()
        .unwrap_or_else(|| "application/json".into());
    let msg = Outbound {
        body: &opts.body,
        timestamp,
        id: &id,
        url: filter.public_url.as_deref(),
        content_type: Some(&content_type),
    };
    let mut headers = filter.scheme.sign(&msg);
    if let crate::filters::dedup::EventIdSource::Header { name, .. } = &filter.event_id {
        if !headers.iter().any(|(k, _)| k == name) {
            headers.push((name.clone(), id.clone()));
        }
    }
    let mut target = filter.route.clone();
    if let Some(suffix) = filter.scheme.path_suffix() {
        target = format!("{target}/{suffix}");
    }
    if let Some(query) = filter.scheme.sign_query(&msg) {
        target = format!("{target}?{query}");
    }
    let mut out = std::io::stdout().lock();
    match opts.curl {
        None => {
            let _ = writeln!(out, "content-type: {content_type}");
            for (k, v) in &headers {
                let _ = writeln!(out, "{k}: {v}");
            }
            if target != filter.route {
                let _ = writeln!(out, "path: {target}");
            }
        }
        Some(base) => {
            let url = format!("{}{target}", base.trim_end_matches('/'));
            let mut cmd = format!("curl -sS -X POST {}", shell_quote(&url));
            cmd += &format!(
                " -H {}",
                shell_quote(&format!("content-type: {content_type}"))
            );
            for (k, v) in &headers {
                cmd += &format!(" -H {}", shell_quote(&format!("{k}: {v}")));
            }
            match opts.body_file {
                Some(f) => cmd += &format!(" --data-binary @{}", shell_quote(&f.to_string_lossy())),
                None => {
                    cmd += &format!(
                        " --data-binary {}",
                        shell_quote(&String::from_utf8_lossy(&opts.body))
                    )
                }
            }
            let _ = writeln!(out, "{cmd}");
        }
    }
    0
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs signature and timestamp checks on a captured raw HTTP/1.1 request.
pub fn verify(filter: &Path, request: &Path, now: Option<i64>) -> i32 {
    let Some(filter) = load_filter_or_report(filter) else {
        return 2;
    };
    let raw = match std::fs::read(request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: {e}", request.display());
            return 2;
        }
    };
    let parsed = match crate::rawhttp::parse(&raw) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({"accepted": false, "reason": "malformed_request", "detail": e})
            );
            return 1;
        }
    };
    let now = now.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let req = parsed.inbound();
    let verdict = filter.scheme.verify(&req, now);
    let (accepted, reason) = match verdict {
        Ok(()) => (true, None),
        Err(r) => (false, Some(r.as_str())),
    };
    println!(
        "{}",
        serde_json::json!({"accepted": accepted, "reason": reason, "provider": filter.name, "preset": filter.preset})
    );
    if accepted {
        0
    } else {
        1
    }
}

pub fn keygen() -> i32 {
    println!("{}", crate::schemes::url_key_generate());
    0
}

/// The spool sink `name` of a config (or its only one): its directory.
fn spool_dir(conf: &Path, name: Option<&str>) -> Result<std::path::PathBuf, String> {
    let mut problems = Vec::new();
    let Some(text) = config::diagnostics::read(conf, &mut problems) else {
        return Err(problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n"));
    };
    let (server, problems) = loader::load_server_text(conf, &text);
    let Some(server) = server.filter(|_| !problems.iter().any(|p| p.severity == Severity::Error))
    else {
        let listed: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(listed.join("\n"));
    };
    let spools: Vec<(&String, &std::path::PathBuf)> = server
        .sinks
        .iter()
        // A fallback spool belongs to its replayer: a consumer acking there would delete
        // events not yet replayed to the primary.
        .filter(|(n, _)| !server.fallbacks.iter().any(|(_, spool)| spool == n))
        .filter_map(|(n, c)| Some((n, &c.as_spool()?.dir)))
        .collect();
    match (name, spools.as_slice()) {
        (Some(name), _) => spools
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, d)| (*d).clone())
            .ok_or_else(|| {
                if server.fallbacks.iter().any(|(_, spool)| spool == name) {
                    format!("spool `{name}` is a fallback: its replayer consumes it")
                } else {
                    format!("no spool sink `{name}` in {}", conf.display())
                }
            }),
        (None, [(_, dir)]) => Ok((*dir).clone()),
        (None, []) => Err(format!("{} has no spool sink", conf.display())),
        (None, _) => {
            let names: Vec<&str> = spools.iter().map(|(n, _)| n.as_str()).collect();
            Err(format!(
                "several spool sinks ({}): name one with --sink",
                names.join(", ")
            ))
        }
    }
}

fn consumer_checkpoint(consumer: &str) -> Result<String, String> {
    if consumer.is_empty()
        || !consumer
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "consumer `{consumer}`: letters, digits, - and _ only"
        ));
    }
    Ok(format!("consumer-{consumer}.checkpoint"))
}

pub enum SpoolCommand {
    /// Each segment: number, size, open or sealed; and the consumer's position.
    Status,
    /// Up to `max` events after the consumer's checkpoint, on stdout; the position after the
    /// last one on stderr (`next: SEQ:OFFSET`), for `Ack`.
    Read { max: usize },
    /// Moves the consumer's checkpoint to a position and deletes the sealed segments wholly
    /// before it.
    Ack { position: String },
}

/// `portcullis spool …`: the consumer side of the default sink.
pub fn spool(conf: &Path, sink: Option<&str>, consumer: &str, command: SpoolCommand) -> i32 {
    let result = (|| -> Result<(), String> {
        let dir = spool_dir(conf, sink)?;
        let checkpoint = consumer_checkpoint(consumer)?;
        let position = crate::sinks::spool::Position::load(&dir, &checkpoint);
        let mut out = std::io::stdout().lock();
        match command {
            SpoolCommand::Status => {
                let _ = writeln!(
                    out,
                    "spool {} (consumer {consumer} at {position})",
                    dir.display()
                );
                for seq in crate::sinks::spool::segments(&dir) {
                    let path = crate::sinks::spool::segment_path(&dir, seq);
                    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let state = if crate::sinks::spool::in_use(&path) {
                        "open"
                    } else {
                        "sealed"
                    };
                    let read =
                        if seq < position.seq || (seq == position.seq && position.offset >= len) {
                            "consumed"
                        } else {
                            "unread"
                        };
                    let _ = writeln!(out, "{seq}\t{len} bytes\t{state}\t{read}");
                }
            }
            SpoolCommand::Read { max } => {
                let (lines, next) = crate::sinks::spool::read_after(&dir, position, max)
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
                for line in &lines {
                    let _ = out.write_all(line);
                }
                eprintln!("next: {next}");
            }
            SpoolCommand::Ack { position: text } => {
                let to = crate::sinks::spool::Position::parse(&text, ':').ok_or_else(|| {
                    format!("position `{text}`: write SEQ:OFFSET as `spool read` printed it")
                })?;
                if to.seq < position.seq || (to.seq == position.seq && to.offset < position.offset)
                {
                    return Err(format!(
                        "position {to} is before the checkpoint {position}: nothing to acknowledge"
                    ));
                }
                to.save(&dir, &checkpoint)
                    .map_err(|e| format!("{}: cannot save the checkpoint: {e}", dir.display()))?;
                let deleted = crate::sinks::spool::delete_before(&dir, to);
                let _ = writeln!(
                    out,
                    "consumer {consumer} at {to}; {deleted} consumed segment(s) deleted"
                );
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
