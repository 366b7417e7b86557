//! Black-box harness: starts the real `portcullis` binary on ephemeral ports with a config
//! written into a temp dir, speaks raw HTTP/1.1 to it, and runs tiny upstreams for the http sink.
#![allow(dead_code)]

pub mod certs;
pub mod dispatcher;
pub mod receiver;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port free now and not handed out before by this test process (the kernel may give a
/// just-released ephemeral port again, so two calls could otherwise name one port twice).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Server {
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl Server {
    /// Starts the gateway with `filters` (file name, YAML) and `sinks` (YAML mapping body).
    pub fn start(filters: &[(&str, &str)], sinks: &str) -> Server {
        Self::start_with(filters, sinks, "")
    }

    pub fn start_with(filters: &[(&str, &str)], sinks: &str, extra: &str) -> Server {
        let dir = Self::prepare(filters);
        let port = free_port();
        let listen = format!("  - addr: 127.0.0.1:{port}");
        Self::start_in(dir, port, &listen, sinks, extra)
    }

    /// Like [`Server::start`], with `env` set for the process (what `env:` references read)
    /// and `files` (name, text) written beside the config (CA bundles, keys).
    pub fn start_env(
        filters: &[(&str, &str)],
        sinks: &str,
        env: &[(&str, &str)],
        files: &[(&str, &str)],
    ) -> Server {
        let dir = Self::prepare(filters);
        let lines: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(dir.path().join("env"), lines).unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let port = free_port();
        Self::start_in(dir, port, &format!("  - addr: 127.0.0.1:{port}"), sinks, "")
    }

    /// A temp dir holding `filters/` with the given filter files.
    pub fn prepare(filters: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("filters")).unwrap();
        for (name, yaml) in filters {
            std::fs::write(dir.path().join("filters").join(name), yaml).unwrap();
        }
        dir
    }

    /// Writes `portcullis.yaml` into `dir` (with the `listen:` entries given, `port` being the
    /// one tests talk to) and starts the gateway on it.
    pub fn start_in(
        dir: tempfile::TempDir,
        port: u16,
        listen: &str,
        sinks: &str,
        extra: &str,
    ) -> Server {
        Self::launch(dir, port, listen, sinks, extra, &[])
    }

    /// The default listener, with extra `run` arguments (`--json-logs`, `--no-access-log`).
    pub fn start_args(filters: &[(&str, &str)], sinks: &str, args: &[&str]) -> Server {
        let port = free_port();
        let listen = format!("  - addr: 127.0.0.1:{port}");
        Self::launch(Self::prepare(filters), port, &listen, sinks, "", args)
    }

    fn launch(
        dir: tempfile::TempDir,
        port: u16,
        listen: &str,
        sinks: &str,
        extra: &str,
        args: &[&str],
    ) -> Server {
        let admin = free_port();
        let conf = format!(
            "listen:\n{listen}\nadmin: 127.0.0.1:{admin}\nfilters: filters/\nsinks:\n{sinks}\npingora: {{ threads: 2, grace_period_seconds: 30, graceful_shutdown_timeout_seconds: 5, pid_file: {pid}, upgrade_sock: {sock} }}\n{extra}",
            pid = dir.path().join("pid").display(),
            sock = dir.path().join("upgrade.sock").display(),
        );
        std::fs::write(dir.path().join("portcullis.yaml"), conf).unwrap();
        let child = Self::spawn(dir.path(), args);
        let server = Server {
            port,
            admin,
            dir,
            child,
        };
        server.wait_healthy();
        server
    }

    /// Starts the binary on `dir`'s config; `dir/env` (KEY=VALUE lines), if present, adds
    /// to its environment.
    fn spawn(dir: &Path, extra_args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("log.txt"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        // A test's `env` file may ask for another level.
        cmd.env("RUST_LOG", "debug");
        if let Ok(env) = std::fs::read_to_string(dir.join("env")) {
            for (k, v) in env.lines().filter_map(|l| l.split_once('=')) {
                cmd.env(k, v);
            }
        }
        cmd.args(["run", "-c"])
            .arg(dir.join("portcullis.yaml"))
            .args(extra_args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Sends a signal (`TERM`, `QUIT`, `HUP`, …) to the gateway process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded, as a hang detector) for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts a second process on the same directory with Pingora's `--upgrade`: it takes the
    /// listening sockets over from this one once this one gets SIGQUIT. Returns the new process
    /// (ports and directory shared); the caller sends the SIGQUIT.
    pub fn spawn_upgrade(&self) -> Child {
        Self::spawn(self.dir.path(), &["-u"])
    }

    /// Makes `child` (from [`Self::spawn_upgrade`]) the process this handle manages.
    pub fn adopt(&mut self, child: Child) -> Child {
        std::mem::replace(&mut self.child, child)
    }

    /// Kills the process outright (no graceful shutdown) and starts it again on the same
    /// config, ports and state directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.dir.path(), &[]);
        self.wait_healthy();
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = try_request(
                self.admin,
                b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            ) {
                if r.status == 200 && TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway did not become healthy; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log.txt")).unwrap_or_default()
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    /// Every line of every spool segment, parsed.
    pub fn spooled(&self) -> Vec<serde_json::Value> {
        spool_lines(&self.spool_dir())
    }

    pub fn post(&self, path: &str, headers: &[(String, String)], body: &[u8]) -> Response {
        post(self.port, path, headers, body)
    }

    pub fn admin_get(&self, path: &str) -> Response {
        request(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    }

    /// The event ids in the spool, sorted.
    pub fn spooled_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .spooled()
            .iter()
            .map(|l| l["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }

    pub fn is_alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none() && self.admin_get("/healthz").status == 200
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spool_lines(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).expect("every spool line is JSON"))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "body is not JSON: {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// The `error` reason of a rejection.
    pub fn reason(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_owned()
    }
}

pub fn post(port: u16, path: &str, headers: &[(String, String)], body: &[u8]) -> Response {
    try_post(port, path, headers, body).unwrap_or_else(|e| panic!("POST to {port} failed: {e}"))
}

pub fn try_post(
    port: u16,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        raw += &format!("{k}: {v}\r\n");
    }
    raw += "\r\n";
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    try_request(port, &bytes)
}

pub fn request(port: u16, raw: &[u8]) -> Response {
    try_request(port, raw).unwrap_or_else(|e| panic!("request to {port} failed: {e}"))
}

pub fn try_request(port: u16, raw: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(raw)?;
    read_response(&mut stream)
}

/// Reads one response; the body by Content-Length, or to EOF.
pub fn read_response<S: Read>(stream: &mut S) -> std::io::Result<Response> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Writes a filter into a temp file and returns the headers its scheme signs `body` with.
pub fn sign(filter_yaml: &str, body: &[u8], timestamp: i64, id: &str) -> Vec<(String, String)> {
    sign_as(filter_yaml, body, timestamp, id, "application/json").headers
}

/// What a filter's scheme signs: the headers (content-type included) and the query string the
/// request must carry, if any (Twilio's `bodySHA256`).
pub struct Signed {
    pub headers: Vec<(String, String)>,
    pub query: Option<String>,
}

/// [`sign`] for a body of `content_type`.
pub fn sign_as(
    filter_yaml: &str,
    body: &[u8],
    timestamp: i64,
    id: &str,
    content_type: &str,
) -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.yaml");
    std::fs::write(&path, filter_yaml).unwrap();
    let (filter, problems) = portcullis::loader::load_filter(&path);
    let filter = filter.unwrap_or_else(|| panic!("filter does not load: {problems:?}"));
    let msg = portcullis::schemes::Outbound {
        body,
        timestamp,
        id,
        url: filter.public_url.as_deref(),
        content_type: Some(content_type),
    };
    let mut headers = filter.scheme.sign(&msg);
    if let portcullis::filters::dedup::EventIdSource::Header { name, .. } = &filter.event_id {
        if !headers.iter().any(|(k, _)| k == name) {
            headers.push((name.clone(), id.to_owned()));
        }
    }
    headers.push(("content-type".into(), content_type.into()));
    Signed {
        headers,
        query: filter.scheme.sign_query(&msg),
    }
}

/// Polls `done` (bounded: a hang detector, not a timing assertion) until it holds.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("gave up waiting: {what}");
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A minimal HTTP/1.1 upstream (keep-alive) answering every request with `status`, optionally
/// holding each answer until `gate` opens.
pub struct Upstream {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub status: Arc<Mutex<u16>>,
    pub gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Upstream {
    pub fn start(status: u16) -> Upstream {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), status)
    }

    pub fn start_on(listener: TcpListener, status: u16) -> Upstream {
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(status));
        let gate = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, s, g, c) = (
            received.clone(),
            status.clone(),
            gate.clone(),
            connections.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (r, s, g) = (r.clone(), s.clone(), g.clone());
                std::thread::spawn(move || serve_upstream(conn, r, s, g));
            }
        });
        Upstream {
            port,
            received,
            status,
            gate,
            connections,
        }
    }

    pub fn hold(&self) {
        *self.gate.0.lock().unwrap() = false;
    }

    pub fn release(&self) {
        *self.gate.0.lock().unwrap() = true;
        self.gate.1.notify_all();
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

fn serve_upstream(
    conn: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<Mutex<u16>>,
    gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let Some((_, headers, body)) = read_request(&mut reader) else {
            return;
        };
        received.lock().unwrap().push(Received { headers, body });
        let (lock, cvar) = &*gate;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cvar.wait(open).unwrap();
        }
        drop(open);
        let code = *status.lock().unwrap();
        let resp = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\n\r\nok");
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A request as read: (request line, lower-case headers, body).
pub type RawRequest = (String, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 request with a Content-Length body; `None` at the end of the connection.
pub fn read_request<R: BufRead>(reader: &mut R) -> Option<RawRequest> {
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((line, headers, body))
}

pub fn spool_sink() -> &'static str {
    "  spool: { type: spool, dir: spool/ }"
}

pub fn http_sink(port: u16) -> String {
    format!("  app: {{ type: http, url: \"http://127.0.0.1:{port}/ingest\", timeout: 5s }}")
}

/// Headers as (String, String) pairs from string slices.
pub fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether a broker answers at `addr`. Absent brokers skip a test with a clear message, unless
/// `PORTCULLIS_REQUIRE_BROKERS=1` (CI), where absence is a failure.
pub fn broker(name: &str, addr: &str) -> bool {
    if TcpStream::connect(addr).is_ok() {
        return true;
    }
    if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
        panic!("no {name} at {addr}, and PORTCULLIS_REQUIRE_BROKERS=1");
    }
    eprintln!("skipped: no {name} at {addr}");
    false
}

/// A name no other test run uses (stream keys, subjects, queues).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}{}x{}x{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A broker process of the test's own, on a free port with its own data directory, that the
/// test can kill and start again (same port, same data).
pub struct PrivateBroker {
    pub port: u16,
    pub dir: tempfile::TempDir,
    kind: BrokerKind,
    child: Option<Child>,
}

#[derive(Clone, Copy)]
enum BrokerKind {
    Redis,
    Nats,
}

impl PrivateBroker {
    /// redis-server with AOF and fsync on every write: what it acknowledged survives a kill.
    pub fn redis() -> PrivateBroker {
        Self::start(BrokerKind::Redis)
    }

    /// nats-server with JetStream on file storage.
    pub fn nats() -> PrivateBroker {
        Self::start(BrokerKind::Nats)
    }

    fn start(kind: BrokerKind) -> PrivateBroker {
        let mut b = PrivateBroker {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            kind,
            child: None,
        };
        b.spawn();
        b
    }

    pub fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            BrokerKind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--dir",
                ]);
                c
            }
            BrokerKind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"]);
                c
            }
        };
        let child = cmd
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the broker's server binary is installed");
        self.child = Some(child);
        for _ in 0..400 {
            let up = match self.kind {
                BrokerKind::Redis => self.redis_connection().is_some(),
                BrokerKind::Nats => TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            };
            if up {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("private broker on {} did not start", self.port);
    }

    /// A connection that has answered PING (redis only).
    pub fn redis_connection(&self) -> Option<redis::Connection> {
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .ok()?
            .get_connection()
            .ok()?;
        redis::cmd("PING").query::<String>(&mut c).ok()?;
        Some(c)
    }

    /// Sends a signal (`STOP` freezes it, `CONT` thaws it) to the broker process.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("the broker runs").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}");
        if name == "STOP" {
            // kill(2) returns before every thread has stopped: one still running could answer.
            wait_until("the broker's threads stopped", || all_stopped(pid));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request of a stream of traffic: event id, status, Retry-After.
pub type Sent = (String, u16, Option<String>);

/// Every request of `sent` answered 202 (`during` names what they went through), and each
/// accepted id is among `spooled` exactly once, with nothing else there.
pub fn assert_all_accepted_once(sent: Vec<Sent>, mut spooled: Vec<String>, during: &str) {
    let failed: Vec<_> = sent.iter().filter(|(_, s, _)| *s != 202).collect();
    assert!(failed.is_empty(), "failed during {during}: {failed:?}");
    let mut accepted: Vec<String> = sent.into_iter().map(|(id, _, _)| id).collect();
    accepted.sort();
    spooled.sort();
    assert_eq!(spooled.len(), accepted.len(), "no event lost or doubled");
    assert_eq!(spooled, accepted);
}

/// A thread sending signed events `f-0`, `f-1`, … (body `{"i":N}`) one after another until
/// stopped, recording every answer: the load a fault test breaks the broker under.
pub struct Traffic {
    results: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    sender: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(port: u16, path: &str, filter: &str) -> Traffic {
        Self::start_named(port, path, filter, "f")
    }

    /// Like [`Traffic::start`], with ids `prefix-0`, `prefix-1`, … (several streams at once).
    pub fn start_named(port: u16, path: &str, filter: &str, prefix: &str) -> Traffic {
        let prefix = prefix.to_owned();
        let results: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, s, path, filter) = (
            results.clone(),
            stop.clone(),
            path.to_owned(),
            filter.to_owned(),
        );
        let sender = std::thread::spawn(move || {
            let mut i = 0;
            while !s.load(std::sync::atomic::Ordering::SeqCst) && i < 100_000 {
                let id = format!("{prefix}-{i}");
                let body = format!("{{\"i\":{i}}}").into_bytes();
                // A connection that fails (refused, reset) is recorded as status 0.
                let (status, retry_after) =
                    match try_post(port, &path, &sign(&filter, &body, now(), &id), &body) {
                        Ok(resp) => (resp.status, resp.header("retry-after").map(str::to_owned)),
                        Err(_) => (0, None),
                    };
                let refused = status != 202;
                r.lock().unwrap().push((id, status, retry_after));
                i += 1;
                if refused {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Traffic {
            results,
            stop,
            sender: Some(sender),
        }
    }

    pub fn count(&self, status: u16) -> usize {
        self.results
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _)| *s == status)
            .count()
    }

    /// Waits (bounded) until `status` has been answered at least `n` times.
    pub fn wait_for(&self, status: u16, n: usize) {
        for _ in 0..6000 {
            if self.count(status) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("gave up waiting for {n} answers of {status}");
    }

    /// Stops sending and returns every answer.
    pub fn finish(mut self) -> Vec<Sent> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            sender.join().unwrap();
        }
        std::mem::take(&mut *self.results.lock().unwrap())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Every entry of a Redis stream, in order, as field → bytes maps.
pub fn entries(port: u16, stream: &str) -> Vec<std::collections::HashMap<String, Vec<u8>>> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_connection().unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|entry| {
            entry
                .map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<Vec<u8>>(v).unwrap()))
                .collect()
        })
        .collect()
}

/// haproxy (Debian's package) in the foreground on a free port, with the config `conf` builds
/// for that port (a `global` section is added). `None`, with a "skipped" line, when haproxy is
/// not installed, unless PORTCULLIS_REQUIRE_BROKERS=1.
pub struct Haproxy {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(conf: impl Fn(u16) -> String) -> Option<Haproxy> {
        if Command::new("haproxy").arg("-v").output().is_err() {
            if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
                panic!("no haproxy on this machine, and PORTCULLIS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipped: no haproxy (apt-get install haproxy)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        // A free port can be taken by another test before haproxy binds it: haproxy then
        // exits, and a connect that "worked" reached someone else. Checked, and retried once.
        for _ in 0..2 {
            let port = free_port();
            std::fs::write(&path, format!("global\n  maxconn 4096\n{}", conf(port))).unwrap();
            let mut child = Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            for _ in 0..200 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                    if matches!(child.try_wait(), Ok(None)) {
                        return Some(Haproxy {
                            port,
                            child,
                            _dir: dir,
                        });
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("haproxy did not start");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portcullis check -c conf`: its exit code and what it printed on stdout.
pub fn check(conf: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "-c"])
        .arg(conf)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs the binary with `args`: (exit code, stdout, stderr).
pub fn portcullis(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` to `dir/name` (parents created); the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

/// The response has this status and JSON `error` reason.
#[track_caller]
pub fn expect(r: &Response, status: u16, reason: &str) {
    assert_eq!(
        (r.status, r.reason().as_str()),
        (status, reason),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Sends `raw` and reads everything until the server closes the connection.
pub fn exchange_to_close(port: u16, raw: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

/// `body` signed by `filter` (with event id `id`) and posted to the filter's default route; the
/// status.
pub fn post_signed(server: &Server, filter: &str, id: &str, body: &[u8]) -> u16 {
    let name = filter
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .expect("the filter has a name");
    server
        .post(
            &format!("/webhook/{name}"),
            &sign(filter, body, now(), id),
            body,
        )
        .status
}

/// [`post_signed`] with the body `{"id":…}`.
pub fn post_id(server: &Server, filter: &str, id: &str) -> u16 {
    post_signed(
        server,
        filter,
        id,
        format!("{{\"id\":\"{id}\"}}").as_bytes(),
    )
}

/// Whether every thread of `pid` is stopped (state `T`).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
        })
    })
}

/// Sends `n` signed GitHub `pull_request` events (ids `T-I`, body `{"t":T,"i":I}`) from three
/// threads at once, each twice: the first answer must be 202, the second 200 (a duplicate).
pub fn post_pull_requests_twice(port: u16, filter: &str, n: usize) {
    let name = filter
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .expect("the filter has a name")
        .to_owned();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let (f, path) = (filter.to_owned(), format!("/webhook/{name}"));
            std::thread::spawn(move || {
                for i in 0..n / 3 {
                    let body = format!("{{\"t\":{t},\"i\":{i}}}").into_bytes();
                    let mut headers = sign(&f, &body, now(), &format!("{t}-{i}"));
                    headers.push(("X-GitHub-Event".into(), "pull_request".into()));
                    assert_eq!(post(port, &path, &headers, &body).status, 202);
                    assert_eq!(post(port, &path, &headers, &body).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

/// A current-thread Tokio runtime for a test's own broker clients.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A redis-server of the test's own that speaks only TLS (its plain port off) and knows one
/// ACL user, `portcullis`, with `password`; the default user is off.
pub struct TlsRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl TlsRedis {
    pub fn start(ca: &certs::Ca, password: &str) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        ca.write_server(dir.path());
        let port = free_port();
        let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .args([
                "--tls-cert-file",
                &path("server.pem"),
                "--tls-key-file",
                &path("server.key"),
            ])
            .args([
                "--tls-ca-cert-file",
                &path("ca.pem"),
                "--tls-auth-clients",
                "no",
            ])
            .args(["--save", "", "--appendonly", "no", "--dir", &path("")])
            // One directive's words as separate arguments (a quoted one is read as one name).
            .args([
                "--user",
                "portcullis",
                "on",
                &format!(">{password}"),
                "~*",
                "&*",
                "+@all",
            ])
            .args(["--user", "default", "off"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server runs");
        wait_until("the TLS redis listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        TlsRedis { port, dir, child }
    }

    /// `redis-cli` over TLS as the ACL user.
    pub fn cli(&self, password: &str, args: &[&str]) -> String {
        let ca = self.dir.path().join("ca.pem");
        let out = std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert"])
            .arg(&ca)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "--user",
                "portcullis",
                "--pass",
                password,
                "--no-auth-warning",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nats-server of the test's own with JetStream that takes only TLS with a client
/// certificate (mTLS) and knows two users: one by nkey, and `portcullis` with `password`.
pub struct SecureNats {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: std::process::Child,
}

impl SecureNats {
    pub fn start(ca: &certs::Ca, user: &nkeys::KeyPair, password: &str) -> SecureNats {
        let dir = tempfile::tempdir().unwrap();
        ca.write_server(dir.path());
        let port = free_port();
        let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        let conf = format!(
            "port: {port}\nhost: 127.0.0.1\njetstream {{ store_dir: \"{}\" }}\ntls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", verify: true }}\nauthorization {{ users = [ {{ nkey: \"{}\" }}, {{ user: portcullis, password: \"{password}\" }} ] }}\n",
            path("js"),
            path("server.pem"),
            path("server.key"),
            path("ca.pem"),
            user.public_key()
        );
        std::fs::write(dir.path().join("nats.conf"), conf).unwrap();
        let child = std::process::Command::new("nats-server")
            .args(["-c", &path("nats.conf")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server runs");
        wait_until("the TLS nats-server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        SecureNats { port, dir, child }
    }
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A durable topic exchange and a durable queue bound to it for `key`, on `conn`.
pub async fn amqp_bound_queue(conn: &lapin::Connection, exchange: &str, queue: &str, key: &str) {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{FieldTable, ShortString};
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        ShortString::from(exchange.to_owned()),
        lapin::ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(
        ShortString::from(queue.to_owned()),
        q,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(queue.to_owned()),
        ShortString::from(exchange.to_owned()),
        ShortString::from(key.to_owned()),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// One filter per sink name `n` (provider `{prefix}_{n}`, file `{n}.yaml`), as (file, YAML).
pub fn filter_per_sink(names: &[&str], prefix: &str) -> Vec<(String, String)> {
    names
        .iter()
        .map(|n| {
            let yaml =
                format!("name: {prefix}_{n}\npreset: github\nsecrets: [\"{prefix}\"]\nsink: {n}\n");
            (format!("{n}.yaml"), yaml)
        })
        .collect()
}

/// Posts one event through each of [`filter_per_sink`]'s filters: 202 for `good`, 503 for
/// the others.
pub fn post_each_expecting(
    server: &Server,
    names: &[&str],
    filters: &[(String, String)],
    good: &str,
) {
    for (n, (_, f)) in names.iter().zip(filters) {
        let expected = if *n == good { 202 } else { 503 };
        assert_eq!(
            post_id(server, f, &format!("{n}-1")),
            expected,
            "sink {n}:\n{}",
            server.log()
        );
    }
}
