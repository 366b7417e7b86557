//! End-to-end load for the outbound dispatcher: N messages through `POST /outbound` at a
//! fixed concurrency (keep-alive connections), delivered to a receiver in this process that
//! answers 200 and notes when each `webhook-id` arrived. Reports the enqueue rate, the
//! delivery rate, enqueue→delivered latency (from the start of the API call) p50/p99, and
//! given pids their CPU seconds per 10k messages. Then `--cut` API calls are cut off
//! mid-request or before their answer, and it checks that every message the dispatcher
//! counted as queued was delivered.
//!
//!     portcullis-outbound-load --api 127.0.0.1:9091 --token T --receiver 127.0.0.1:9300 \
//!         --messages 20000 --concurrency 64 [--pid PID,…] [--cut 120] [--metrics 127.0.0.1:9090]

#[path = "proc_stat.rs"]
mod proc_stat;
use proc_stat::cpu_seconds;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// The dispatcher's API listener.
    #[arg(long)]
    api: String,
    #[arg(long)]
    token: String,
    /// Where the receiver listens (the tenant's endpoint URL points here).
    #[arg(long)]
    receiver: String,
    #[arg(long, default_value = "bench")]
    tenant: String,
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Processes whose CPU time to report, summed (the node; PostgreSQL's backends).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// API calls to cut off after the measured run (half mid-body, half before the answer).
    #[arg(long, default_value_t = 0)]
    cut: usize,
    /// The admin listener, to read how many messages the dispatcher queued (with --cut).
    #[arg(long)]
    metrics: Option<String>,
    #[arg(long, default_value = "outbound")]
    label: String,
    /// Also send as many messages to this tenant, interleaved (e.g. one whose endpoint is
    /// dead); they are not waited for or counted.
    #[arg(long)]
    also_tenant: Option<String>,
    /// Offered load: calls per second in all (default: as fast as the connections go).
    #[arg(long)]
    rate: Option<f64>,
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Reads one HTTP/1.1 request or response head and its content-length body.
async fn read_message(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf[..end + 4].to_vec();
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let len = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 16384];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 16384];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header(head: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

async fn receiver(listener: TcpListener, seen: Seen) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some((head, _)) = read_message(&mut stream, &mut buf).await {
                if let Some(id) = header(&head, "webhook-id") {
                    seen.lock().unwrap().entry(id).or_insert_with(Instant::now);
                }
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

fn request(args: &Args, tenant: &str, i: usize, run: u32) -> Vec<u8> {
    let body = format!(
        r#"{{"tenant":"{tenant}","event_type":"order.updated","id":"load-{run}-{i}","payload":{{"order":{i},"status":"shipped","items":[{{"sku":"A-1","qty":2}},{{"sku":"B-7","qty":1}}],"note":"benchmark message of about two hundred bytes"}}}}"#
    );
    let mut req = format!(
        "POST /outbound HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        args.api,
        args.token,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

fn message_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["message_id"].as_str().map(str::to_owned)
}

async fn queued(metrics: &str) -> f64 {
    let Ok(mut s) = TcpStream::connect(metrics).await else {
        return -1.0;
    };
    let _ = s
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nhost: {metrics}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
    let mut text = String::new();
    let _ = s.read_to_string(&mut text).await;
    text.lines()
        .filter(|l| {
            l.starts_with("portcullis_outbound_messages_total")
                && l.contains("outcome=\"queued\"")
                && l.contains("source=\"api\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let listener = TcpListener::bind(&args.receiver)
        .await
        .expect("receiver address");
    tokio::spawn(receiver(listener, seen.clone()));
    let run = std::process::id();
    // (request, counted): with --also-tenant every other one goes there, uncounted.
    let requests: Arc<Vec<(Vec<u8>, bool)>> = Arc::new(
        (0..args.messages)
            .flat_map(|i| {
                let mut r = vec![(request(&args, &args.tenant, i, run), true)];
                if let Some(other) = &args.also_tenant {
                    r.push((request(&args, other, i, run), false));
                }
                r
            })
            .collect(),
    );
    let cpu_before: f64 = args.pid.iter().map(|p| cpu_seconds(*p)).sum();
    // This process (the API callers and the receiver) shares the machine with the node.
    let own_before = cpu_seconds(run);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (args, requests, next) = (args.clone(), requests.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent: Vec<(String, Instant)> = Vec::new();
            let mut failed = 0usize;
            let mut stream = TcpStream::connect(&args.api).await.expect("api");
            let _ = stream.set_nodelay(true);
            let mut buf = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= requests.len() {
                    break;
                }
                if let Some(rate) = args.rate {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                // Latency counts from the call, not from the pacing wait before it.
                let at = Instant::now();
                let (request, counted) = &requests[i];
                if stream.write_all(request).await.is_err() {
                    failed += 1;
                    break;
                }
                match read_message(&mut stream, &mut buf).await {
                    Some((head, _)) if head.starts_with(b"HTTP/1.1 202") && !counted => {}
                    Some((head, body)) if head.starts_with(b"HTTP/1.1 202") => {
                        match message_id(&body) {
                            Some(id) => sent.push((id, at)),
                            None => failed += 1,
                        }
                    }
                    Some(_) => failed += 1,
                    None => {
                        failed += 1;
                        break;
                    }
                }
            }
            (sent, failed)
        }));
    }
    let mut sent = Vec::with_capacity(args.messages);
    let mut failed = 0;
    for t in tasks {
        let (s, f) = t.await.unwrap();
        sent.extend(s);
        failed += f;
    }
    let enqueued_in = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = {
            let seen = seen.lock().unwrap();
            sent.iter().filter(|(id, _)| seen.contains_key(id)).count()
        };
        if n == sent.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu: f64 = args.pid.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - cpu_before;
    let own = cpu_seconds(run) - own_before;
    let seen_now = seen.lock().unwrap().clone();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, at)| {
            seen_now
                .get(id)
                .map(|t| t.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let last = sent
        .iter()
        .filter_map(|(id, _)| seen_now.get(id))
        .max()
        .copied()
        .unwrap_or(started);
    let total = last.duration_since(started).as_secs_f64();
    println!(
        "{}: messages={} failed={} delivered={} enqueue={:.0}/s end_to_end={:.0}/s latency_ms p50={:.1} p99={:.1} max={:.1} cpu_s_per_10k={:.2} load_cpu_s_per_10k={:.2}",
        args.label,
        sent.len(),
        failed,
        lat.len(),
        sent.len() as f64 / enqueued_in.as_secs_f64(),
        lat.len() as f64 / total,
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        cpu / sent.len().max(1) as f64 * 10_000.0,
        own / sent.len().max(1) as f64 * 10_000.0
    );

    if args.cut == 0 {
        return;
    }
    // Calls cut off: half after part of the body (nothing may be kept), half with the whole
    // body but gone before the answer (kept or not, never kept undelivered).
    let Some(metrics) = args.metrics.as_deref() else {
        eprintln!("--cut needs --metrics");
        return;
    };
    let before = queued(metrics).await;
    for i in 0..args.cut {
        let req = request(&args, &args.tenant, args.messages + i, run);
        let mut s = TcpStream::connect(&args.api).await.expect("api");
        let upto = if i % 2 == 0 {
            req.len() - 20
        } else {
            req.len()
        };
        let _ = s.write_all(&req[..upto]).await;
        drop(s);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = queued(metrics).await - before;
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let n = seen.lock().unwrap().len() as f64 - seen_now.len() as f64;
        if n >= kept || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "{}: cut={} kept={} delivered_of_kept={} stored_undelivered={}",
        args.label,
        args.cut,
        kept,
        delivered,
        (kept - delivered).max(0.0)
    );
}
