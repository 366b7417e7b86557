//! The `portcullis` command line: parse, set up logging, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use portcullis::commands;

/// glibc's malloc showed up at ~12% of a loaded gateway's profile (arena growth, consolidation
/// between Pingora's threads); mimalloc's thread-local pages avoid that (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Webhook edge gateway: verify, deduplicate and durably queue inbound webhooks",
    after_help = "Logs go to stderr; RUST_LOG sets the level (default info). To quiet Pingora \
alone: RUST_LOG=info,pingora_core=warn.\n\nFirst steps:\n  portcullis check -c conf/portcullis.yaml\n  \
portcullis run -c conf/portcullis.yaml\n  portcullis sign --filter filters/github.yaml --curl http://127.0.0.1:8080 | sh"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve webhooks with the given config.
    #[command(
        after_help = "Examples:\n  portcullis run -c /etc/portcullis/portcullis.yaml --json-logs\n  \
portcullis run -u -d -c /etc/portcullis/portcullis.yaml   # take over a running instance"
    )]
    Run {
        /// The server config (relative paths in it count from its directory).
        #[arg(short, long, default_value = "conf/portcullis.yaml")]
        conf: PathBuf,
        /// One JSON object per log line.
        #[arg(long)]
        json_logs: bool,
        /// Do not log a line per request.
        #[arg(long)]
        no_access_log: bool,
        /// Run in the background (Pingora's daemon mode).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listening sockets of a running instance (Pingora's graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate the config and every filter; print each problem with file:line.
    #[command(
        after_help = "Example:\n  portcullis check -c /etc/portcullis/portcullis.yaml   # exit 0 when it would start"
    )]
    Check {
        /// The server config to check, with every filter it names.
        #[arg(short, long, default_value = "conf/portcullis.yaml")]
        conf: PathBuf,
    },
    /// Print the headers (or a curl command) of a request the filter accepts.
    #[command(
        after_help = "Example:\n  portcullis sign --filter filters/github.yaml --id evt_1 --body '{\"action\":\"opened\"}' \\\n    \
--curl http://127.0.0.1:8080 | sh"
    )]
    Sign {
        /// The filter file whose scheme and secret sign the request.
        #[arg(long)]
        filter: PathBuf,
        /// Read the body to sign from this file.
        #[arg(long, conflicts_with = "body")]
        body_file: Option<PathBuf>,
        /// The body to sign (default: {}).
        #[arg(long)]
        body: Option<String>,
        /// Unix seconds (default: now).
        #[arg(long)]
        timestamp: Option<i64>,
        /// Event id for schemes that sign or send one (default: random).
        #[arg(long)]
        id: Option<String>,
        /// Print a curl command against this base URL, e.g. http://127.0.0.1:8080
        #[arg(long)]
        curl: Option<String>,
    },
    /// Print a fresh key for a `url-key` filter.
    #[command(after_help = "Example:\n  portcullis keygen   # wh_ + 32 random characters")]
    Keygen,
    /// Check the signature and timestamp of a captured raw HTTP/1.1 request.
    #[command(
        after_help = "Example:\n  portcullis verify --filter filters/stripe.yaml --request captured.http --now 1733011200"
    )]
    Verify {
        /// The filter file to judge the request with.
        #[arg(long)]
        filter: PathBuf,
        /// The raw request: request line, headers, a blank line, the body.
        #[arg(long)]
        request: PathBuf,
        /// Unix seconds to judge freshness against (default: now).
        #[arg(long)]
        now: Option<i64>,
    },
    /// Read and acknowledge the events of a spool sink (the consumer side of the default sink).
    #[command(
        after_help = "Examples:\n  portcullis spool status -c conf/portcullis.yaml\n  \
portcullis spool read -c conf/portcullis.yaml --max 100 > batch.jsonl   # prints next: SEQ:OFFSET on stderr\n  \
portcullis spool ack -c conf/portcullis.yaml 3:40960   # after batch.jsonl is processed"
    )]
    Spool {
        /// The server config naming the spool sink.
        #[arg(short, long, default_value = "conf/portcullis.yaml", global = true)]
        conf: PathBuf,
        /// The spool sink (default: the config's only one).
        #[arg(long, global = true)]
        sink: Option<String>,
        /// The consumer whose checkpoint is read and moved (one file per consumer).
        #[arg(long, default_value = "default", global = true)]
        consumer: String,
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// The outbound dispatcher's ledger.
    #[command(
        after_help = "Example:\n  portcullis outbound attempts -c conf/portcullis.yaml msg_Yj8qUF1tJs84auSj8vZHV3Fh"
    )]
    Outbound {
        /// The server config naming the store.
        #[arg(short, long, default_value = "conf/portcullis.yaml", global = true)]
        conf: PathBuf,
        #[command(subcommand)]
        action: OutboundAction,
    },
    /// The inbound event log: every request answered, newest first (with `event_log:` on).
    #[command(
        after_help = "Example:\n  portcullis events -c conf/portcullis.yaml --provider github --outcome rejected --since 1h"
    )]
    Events {
        /// The server config naming the store.
        #[arg(short, long, default_value = "conf/portcullis.yaml")]
        conf: PathBuf,
        /// Only this provider's (the filter's name).
        #[arg(long)]
        provider: Option<String>,
        /// Only this outcome: accepted, duplicate, rejected or error.
        #[arg(long)]
        outcome: Option<String>,
        /// Only this reason (like invalid_signature).
        #[arg(long)]
        reason: Option<String>,
        /// Only those within this long (like 1h), or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The store: keys of the secrets at rest.
    #[command(
        after_help = "Example:\n  portcullis store rotate-master-key -c conf/portcullis.yaml"
    )]
    Store {
        /// The server config naming the store and its master keys.
        #[arg(short, long, default_value = "conf/portcullis.yaml", global = true)]
        conf: PathBuf,
        #[command(subcommand)]
        action: StoreAction,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  portcullis completions bash > /etc/bash_completion.d/portcullis"
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(after_help = "Example:\n  portcullis man > /usr/local/share/man/man1/portcullis.1")]
    Man,
}

#[derive(Subcommand)]
enum OutboundAction {
    /// Dead letters: deliveries given up, and putting them back in the queue.
    Dlq {
        /// Only this tenant's.
        #[arg(long, global = true)]
        tenant: Option<String>,
        /// Only this endpoint's.
        #[arg(long, global = true)]
        endpoint: Option<String>,
        /// Only those dead within this long (like 1h, 2d).
        #[arg(long, global = true)]
        since: Option<String>,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Every attempt of a message: time, endpoint, attempt, outcome, status, latency, the
    /// first bytes of the answer.
    Attempts {
        message_id: String,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Per endpoint: pending, in flight, dead, breaker, last success and failure, disabled.
    #[command(after_help = "Example:\n  portcullis outbound status -c conf/portcullis.yaml")]
    Status {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Enqueue one message, as POST /outbound does (the running dispatcher delivers it).
    #[command(
        after_help = "Example:\n  portcullis outbound send --tenant acme --type order.updated --id evt_1 --data '{\"order\":42}'"
    )]
    Send {
        /// The tenant (its endpoints file).
        #[arg(long)]
        tenant: String,
        /// The event type (endpoints' event_types patterns match it).
        #[arg(long = "type")]
        event_type: String,
        /// The idempotency key (the same tenant + id within 24 h is a duplicate).
        #[arg(long)]
        id: Option<String>,
        /// The payload: JSON, delivered byte for byte.
        #[arg(long)]
        data: String,
    },
    /// Stop or resume deliveries to one endpoint (TENANT/NAME).
    #[command(
        after_help = "Example:\n  portcullis outbound endpoint disable acme/orders\n  portcullis outbound endpoint enable acme/orders"
    )]
    Endpoint {
        #[command(subcommand)]
        action: EndpointAction,
    },
}

#[derive(Subcommand)]
enum EndpointAction {
    /// New messages skip it; its pending deliveries wait (they go out after enable).
    Disable {
        /// TENANT/NAME.
        endpoint: String,
    },
    /// Deliveries to it resume, the waiting ones first; also after a 410 disabled it.
    Enable {
        /// TENANT/NAME.
        endpoint: String,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Every dead delivery: when, message id, tenant/endpoint, reason, attempts.
    List {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead deliveries again with a fresh retry budget (same message id, so the same
    /// webhook-id), paced.
    Replay {
        /// Message ids; or --all for every dead letter the filters match.
        ids: Vec<String>,
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// At most this many per second.
        #[arg(long, default_value = "10/s")]
        rate: String,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Re-wrap every tenant's data key under store.master_key (set the old key as
    /// previous_master_key on every node first; remove it after).
    RotateMasterKey,
}

#[derive(Subcommand)]
enum SpoolAction {
    /// Each segment: number, size, open (being written) or sealed, consumed or unread.
    Status,
    /// Print up to --max events after the consumer's checkpoint (spool lines, verbatim); the
    /// position after the last goes to stderr as `next: SEQ:OFFSET`. Moves nothing.
    Read {
        /// Most events printed.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Move the consumer's checkpoint to SEQ:OFFSET and delete the sealed segments wholly
    /// before it.
    Ack {
        /// The position `spool read` printed.
        position: String,
    },
}

fn init_logs(json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Pingora targets that log raw heads: its HTTP apps (the API and admin listeners) a
    // malformed request's, bearer token included; its HTTP/1 client, at trace, every request
    // head the http sink and the dispatcher write (signatures, `Authorization`). Capped unless
    // RUST_LOG names the target itself.
    let asked = std::env::var("RUST_LOG").unwrap_or_default();
    for (target, cap) in [
        ("pingora_core::apps::http_app", "off"),
        ("pingora_core::protocols::http::v1::client", "debug"),
    ] {
        if !asked.contains(target) {
            if let Ok(directive) = format!("{target}={cap}").parse() {
                filter = filter.add_directive(directive);
            }
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run {
            conf,
            json_logs,
            no_access_log,
            daemon,
            upgrade,
        } => {
            init_logs(json_logs);
            commands::run(
                &conf,
                commands::RunOptions {
                    daemon,
                    upgrade,
                    access_log: !no_access_log,
                },
            )
        }
        Command::Check { conf } => commands::check(&conf),
        Command::Sign {
            filter,
            body_file,
            body,
            timestamp,
            id,
            curl,
        } => {
            let body = match (&body_file, body) {
                (Some(f), _) => match std::fs::read(f) {
                    Ok(b) => b,
                    Err(e) => {
                        eprintln!("{}: {e}", f.display());
                        return ExitCode::from(2);
                    }
                },
                (None, Some(b)) => b.into_bytes(),
                (None, None) => b"{}".to_vec(),
            };
            commands::sign(commands::SignOptions {
                filter: &filter,
                body,
                body_file: body_file.as_deref(),
                timestamp,
                id,
                curl,
            })
        }
        Command::Keygen => commands::keygen(),
        Command::Outbound { conf, action } => match action {
            OutboundAction::Dlq {
                tenant,
                endpoint,
                since,
                action,
            } => {
                let since = match since.as_deref().map(portcullis::config::parse_duration) {
                    None => None,
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        eprintln!("--since: {e}");
                        return ExitCode::from(2);
                    }
                };
                let filter = portcullis::outbound::cli::DlqFilter {
                    tenant: tenant.as_deref(),
                    endpoint: endpoint.as_deref(),
                    since,
                };
                match action {
                    DlqAction::List { json } => {
                        portcullis::outbound::cli::dlq_list(&conf, &filter, json)
                    }
                    DlqAction::Replay { ids, all, rate } => {
                        if ids.is_empty() && !all {
                            eprintln!("name message ids to replay, or --all");
                            return ExitCode::from(2);
                        }
                        match portcullis::outbound::cli::parse_rate(&rate) {
                            Ok(rate) => {
                                portcullis::outbound::cli::dlq_replay(&conf, &filter, &ids, rate)
                            }
                            Err(e) => {
                                eprintln!("{e}");
                                return ExitCode::from(2);
                            }
                        }
                    }
                }
            }
            OutboundAction::Attempts { message_id, json } => {
                portcullis::outbound::cli::attempts(&conf, &message_id, json)
            }
            OutboundAction::Status { json } => portcullis::outbound::cli::status(&conf, json),
            OutboundAction::Send {
                tenant,
                event_type,
                id,
                data,
            } => portcullis::outbound::cli::send(&conf, &tenant, &event_type, id.as_deref(), &data),
            OutboundAction::Endpoint { action } => match action {
                EndpointAction::Disable { endpoint } => {
                    portcullis::outbound::cli::endpoint(&conf, &endpoint, false)
                }
                EndpointAction::Enable { endpoint } => {
                    portcullis::outbound::cli::endpoint(&conf, &endpoint, true)
                }
            },
        },
        Command::Spool {
            conf,
            sink,
            consumer,
            action,
        } => {
            let command = match action {
                SpoolAction::Status => commands::SpoolCommand::Status,
                SpoolAction::Read { max } => commands::SpoolCommand::Read { max },
                SpoolAction::Ack { position } => commands::SpoolCommand::Ack { position },
            };
            commands::spool(&conf, sink.as_deref(), &consumer, command)
        }
        Command::Events {
            conf,
            provider,
            outcome,
            reason,
            since,
            limit,
            json,
        } => {
            if let Some(o) = outcome
                .as_deref()
                .filter(|o| !portcullis::event_log::OUTCOMES.contains(o))
            {
                eprintln!(
                    "--outcome {o}: one of {}",
                    portcullis::event_log::OUTCOMES.join(", ")
                );
                return ExitCode::from(2);
            }
            let now = portcullis::store::now_ms();
            let since = match since
                .as_deref()
                .map(|s| portcullis::event_log::parse_since(s, now))
            {
                None => None,
                Some(Ok(ms)) => Some(ms),
                Some(Err(e)) => {
                    eprintln!("--since: {e}");
                    return ExitCode::from(2);
                }
            };
            if limit == 0 {
                eprintln!("--limit: at least 1");
                return ExitCode::from(2);
            }
            let query = portcullis::store::events::EventQuery {
                provider,
                outcome,
                reason,
                since,
                limit,
            };
            portcullis::event_log::cli::events(&conf, &query, json)
        }
        Command::Store { conf, action } => match action {
            StoreAction::RotateMasterKey => portcullis::outbound::cli::rotate_master_key(&conf),
        },
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "portcullis",
                &mut std::io::stdout(),
            );
            0
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e}");
                    1
                }
            }
        }
        Command::Verify {
            filter,
            request,
            now,
        } => commands::verify(&filter, &request, now),
    };
    ExitCode::from(code as u8)
}
