//! A load generator for Portcullis: pre-signs a set of requests with distinct event ids
//! (so dedup never short-cuts them), then replays them over keep-alive connections at a
//! fixed concurrency and reports throughput, latency percentiles and, given the server's
//! pid, its CPU time per 10k requests and peak RSS.
//!
//!     portcullis-loadgen --url http://127.0.0.1:8080/webhook/github \
//!         --filter filters/github.yaml --requests 50000 --concurrency 64 [--pid PID] [--invalid]
//!     portcullis-loadgen --url https://127.0.0.1:8443/webhook/github --filter … --wrk 5s [--close]

#[path = "proc_stat.rs"]
mod proc_stat;
use proc_stat::cpu_seconds;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// Target, e.g. http://127.0.0.1:8080/webhook/github
    #[arg(long)]
    url: String,
    /// Filter to sign with (omit for unsigned requests, e.g. against nginx).
    #[arg(long)]
    filter: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    #[arg(long, default_value_t = 1024)]
    body_size: usize,
    /// Corrupt every signature (the flood path): a well-formed header whose digest is wrong,
    /// so the gateway computes the HMAC before it refuses, as it must for a real forgery.
    #[arg(long)]
    invalid: bool,
    /// Processes whose CPU time and peak RSS to report, summed (repeat or comma-separate:
    /// a fleet's nodes, nginx's workers).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// A label for the result line.
    #[arg(long, default_value = "target")]
    label: String,
    /// Let wrk send the same pre-signed requests for this long (e.g. 5s) instead of this
    /// tool (`wrk -t1`, `bench/wrk_presigned.lua`): a second generator, so a latency tail one
    /// of them hides shows. `--requests` should exceed what wrk sends in that time.
    #[arg(long)]
    wrk: Option<String>,
    /// Ask for the connection to close after each answer (`Connection: close`): one request
    /// per connection, as many providers deliver. Only with `--wrk`, which reconnects.
    #[arg(long)]
    close: bool,
}

fn body(i: usize, size: usize) -> Vec<u8> {
    let head = format!("{{\"action\":\"opened\",\"seq\":{i},\"pad\":\"");
    let mut b = head.into_bytes();
    while b.len() + 2 < size {
        b.push(b'x');
    }
    b.extend_from_slice(b"\"}");
    b
}

fn requests(args: &Args, host: &str, path: &str) -> Vec<Vec<u8>> {
    let filter = args.filter.as_ref().map(|f| {
        portcullis::loader::load_filter(f)
            .0
            .unwrap_or_else(|| panic!("filter {} does not load", f.display()))
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let run = std::process::id();
    (0..args.requests)
        .map(|i| {
            let body = body(i, args.body_size);
            let id = format!("load-{run}-{i}");
            let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
            if let Some(f) = &filter {
                headers.extend(f.scheme.sign(&portcullis::schemes::Outbound {
                    body: &body,
                    timestamp: now,
                    id: &id,
                    url: None,
                    content_type: None,
                }));
                if let portcullis::filters::dedup::EventIdSource::Header { name, .. } = &f.event_id
                {
                    if !headers.iter().any(|(k, _)| k == name) {
                        headers.push((name.clone(), id.clone()));
                    }
                }
            }
            if args.invalid {
                for (k, v) in headers.iter_mut() {
                    if k.contains("signature") {
                        *v = wrong_digest(v);
                    }
                }
            }
            let mut raw = format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n",
                body.len()
            );
            if args.close {
                raw += "Connection: close\r\n";
            }
            for (k, v) in headers {
                raw += &format!("{k}: {v}\r\n");
            }
            raw += "\r\n";
            let mut bytes = raw.into_bytes();
            bytes.extend_from_slice(&body);
            bytes
        })
        .collect()
}

/// Reads one response; returns its status.
async fn response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap_or("");
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while buf.len() < total {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Ok(status);
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    // wrk speaks TLS itself; this tool's own client is plain TCP.
    let rest = args
        .url
        .strip_prefix("http://")
        .or_else(|| args.wrk.as_ref().and(args.url.strip_prefix("https://")))
        .expect("an http:// URL (https:// only with --wrk)");
    assert!(
        !args.close || args.wrk.is_some(),
        "--close needs --wrk (this tool keeps connections alive)"
    );
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let requests = Arc::new(requests(&args, host, path));
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_total = |pids: &[u32]| pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>();
    if let Some(duration) = &args.wrk {
        return run_wrk(&args, &requests, duration, &cpu_total);
    }
    let cpu_before = cpu_total(&args.pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (requests, next, host) = (requests.clone(), next.clone(), host.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            let mut stream: Option<TcpStream> = None;
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests.len() {
                    break;
                }
                let sent = Instant::now();
                let mut status = 0;
                for _attempt in 0..2 {
                    if stream.is_none() {
                        stream = TcpStream::connect(&host).await.ok();
                        let _ = stream.as_ref().map(|s| s.set_nodelay(true));
                        buf.clear();
                    }
                    let Some(s) = stream.as_mut() else { continue };
                    let result = async {
                        s.write_all(&requests[i]).await?;
                        response(s, &mut buf).await
                    }
                    .await;
                    match result {
                        Ok(code) => {
                            status = code;
                            break;
                        }
                        Err(_) => stream = None,
                    }
                }
                latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for t in tasks {
        let (l, s) = t.await.unwrap();
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let rps = latencies.len() as f64 / elapsed.as_secs_f64();
    let (cpu, rss) = if args.pid.is_empty() {
        ("-".to_string(), "-".to_string())
    } else {
        let cpu = (cpu_total(&args.pid) - cpu_before) * 10_000.0 / latencies.len() as f64;
        let rss: u64 = args.pid.iter().map(|&p| peak_rss_kib(p)).sum();
        (format!("{cpu:.2}"), format!("{}", rss / 1024))
    };
    let statuses: Vec<String> = statuses.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    println!(
        "{label}\trps={rps:.0}\tp50_ms={:.2}\tp99_ms={:.2}\tp999_ms={:.2}\tcpu_s_per_10k={cpu}\tpeak_rss_mib={rss}\tstatuses={}\telapsed_s={:.2}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
        statuses.join(","),
        elapsed.as_secs_f64(),
        label = args.label,
    );
}

/// `--wrk`: the requests to a file, wrk (one thread, `--concurrency` connections) over them,
/// the target's CPU and peak RSS around it; prints the same line as a run of this tool.
fn run_wrk(args: &Args, requests: &[Vec<u8>], duration: &str, cpu_total: &dyn Fn(&[u32]) -> f64) {
    let path = std::env::temp_dir().join(format!("portcullis-wrk-{}.bin", std::process::id()));
    {
        let file = std::fs::File::create(&path).expect("temporary file");
        let mut out = std::io::BufWriter::new(file);
        for r in requests {
            std::io::Write::write_all(&mut out, r).unwrap();
            std::io::Write::write_all(&mut out, b"\0").unwrap();
        }
    }
    let cpu_before = cpu_total(&args.pid);
    let out = std::process::Command::new("wrk")
        .args([
            "-t1",
            "-c",
            &args.concurrency.to_string(),
            "-d",
            duration,
            "-s",
        ])
        .arg("bench/wrk_presigned.lua")
        .arg(&args.url)
        .env("WRK_REQUESTS", &path)
        .output();
    let _ = std::fs::remove_file(&path);
    let out = out.expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("WRK ")) else {
        panic!(
            "wrk printed no result:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let field = |k: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .unwrap_or("0")
            .to_owned()
    };
    let sent: f64 = field("requests").parse().unwrap_or(0.0);
    let seconds: f64 = field("seconds").parse().unwrap_or(1.0);
    let (cpu, rss) = if args.pid.is_empty() || sent == 0.0 {
        ("-".to_string(), "-".to_string())
    } else {
        let cpu = (cpu_total(&args.pid) - cpu_before) * 10_000.0 / sent;
        let rss: u64 = args.pid.iter().map(|&p| peak_rss_kib(p)).sum();
        (format!("{cpu:.2}"), format!("{}", rss / 1024))
    };
    if sent as usize > requests.len() {
        eprintln!(
            "{}: wrk sent {sent} of {} pre-signed requests: raise --requests",
            args.label,
            requests.len()
        );
    }
    println!(
        "{label}\trps={:.0}\tp50_ms={}\tp99_ms={}\tp999_ms={}\tcpu_s_per_10k={cpu}\tpeak_rss_mib={rss}\tstatuses={}\tsocket_errors={}\telapsed_s={seconds:.2}",
        sent / seconds,
        field("p50_ms"),
        field("p99_ms"),
        field("p999_ms"),
        field("statuses"),
        field("socket_errors"),
        label = args.label,
    );
}

/// `value` with one digest character changed to another that hex and base64 both accept
/// (`A` or `B`), ten characters from the end: inside the digest for every scheme's header
/// (`sha256=<hex>`, `v1,<base64>`, `t=…,v1=<hex>`), clear of base64 padding.
fn wrong_digest(value: &str) -> String {
    let mut chars: Vec<char> = value.chars().collect();
    if let Some(at) = chars.len().checked_sub(10) {
        // (Not `a` for `A`: hex is read in either case, so that would be the same digest.)
        chars[at] = if chars[at].eq_ignore_ascii_case(&'a') {
            'B'
        } else {
            'A'
        };
    }
    chars.into_iter().collect()
}
