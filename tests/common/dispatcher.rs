//! The outbound dispatcher as tests drive it: a gateway with an `outbound:` block on an
//! ephemeral API port, messages sent with `POST /outbound`, attempts read back through
//! `portcullis outbound attempts`.

use std::time::Duration;

use super::receiver::Receiver;
use super::*;

pub const TOKEN: &str = "test-token-1";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub struct Dispatcher {
    pub server: Server,
    pub api: u16,
}

impl Dispatcher {
    /// A gateway with an outbound block: `endpoints` are (file, YAML), `delivery` the
    /// `outbound.delivery` flow mapping.
    pub fn start(endpoints: &[(&str, String)], delivery: &str) -> Dispatcher {
        Self::start_on_store(endpoints, delivery, "sqlite://state/ledger.db")
    }

    pub fn start_on_store(endpoints: &[(&str, String)], delivery: &str, store: &str) -> Dispatcher {
        Self::start_in(Server::prepare(&[]), endpoints, delivery, store)
    }

    pub fn start_in(
        dir: tempfile::TempDir,
        endpoints: &[(&str, String)],
        delivery: &str,
        store: &str,
    ) -> Dispatcher {
        Self::start_with_sinks(dir, endpoints, delivery, store, spool_sink())
    }

    /// With the server's `sinks:` body given (filters in `dir` may name them).
    pub fn start_with_sinks(
        dir: tempfile::TempDir,
        endpoints: &[(&str, String)],
        delivery: &str,
        store: &str,
        sinks: &str,
    ) -> Dispatcher {
        Self::launch(dir, endpoints, sinks, |api| {
            format!(
                "store: {{ url: \"{store}\" }}\noutbound:\n  api: 127.0.0.1:{api}\n  tokens: [\"{TOKEN}\"]\n  endpoints: endpoints/\n  max_payload: 4KiB\n  delivery: {delivery}\n"
            )
        })
    }

    /// Writes the endpoint files, starts the gateway with the server file's extra keys that
    /// `extra(api_port)` gives, and waits for the API listener.
    fn launch(
        dir: tempfile::TempDir,
        endpoints: &[(&str, String)],
        sinks: &str,
        extra: impl FnOnce(u16) -> String,
    ) -> Dispatcher {
        std::fs::create_dir_all(dir.path().join("endpoints")).unwrap();
        for (name, yaml) in endpoints {
            write(dir.path(), &format!("endpoints/{name}"), yaml);
        }
        let api = free_port();
        let extra = extra(api);
        let port = free_port();
        let server = Server::start_in(
            dir,
            port,
            &format!("  - addr: 127.0.0.1:{port}"),
            sinks,
            &extra,
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "no API listener:\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Dispatcher { server, api }
    }

    /// With the management API's keys: `store` is the `store:` flow mapping (a master key
    /// among them) and `outbound` more lines of the `outbound:` block (`  key: value`).
    pub fn start_managed(
        dir: tempfile::TempDir,
        endpoints: &[(&str, String)],
        store: &str,
        delivery: &str,
        outbound: &str,
    ) -> Dispatcher {
        Self::launch(dir, endpoints, spool_sink(), |api| {
            format!(
                "store: {store}\noutbound:\n  api: 127.0.0.1:{api}\n  tokens: [\"{TOKEN}\"]\n  endpoints: endpoints/\n  delivery: {delivery}\n{outbound}"
            )
        })
    }

    /// One API call as the admin token, with `headers` added (say an `X-Account-Id`).
    pub fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            raw += &format!("{k}: {v}\r\n");
        }
        raw += "\r\n";
        raw += body;
        request(self.api, raw.as_bytes())
    }

    pub fn send(&self, body: &str) -> Response {
        self.send_as(Some(TOKEN), body)
    }

    pub fn send_as(&self, token: Option<&str>, body: &str) -> Response {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        if let Some(t) = token {
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        post(self.api, "/outbound", &headers, body.as_bytes())
    }

    /// Sends a message and returns its message id (asserting the 202).
    pub fn queue(&self, tenant: &str, event_type: &str, id: &str, payload: &str) -> String {
        let r = self.send(&format!(
            r#"{{"tenant":"{tenant}","event_type":"{event_type}","id":"{id}","payload":{payload}}}"#
        ));
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()["message_id"].as_str().unwrap().to_owned()
    }

    /// Queues `n` messages `{prefix}{i}` (payload `{"n":i}`) over `threads` keep-alive
    /// connections; their message ids, in order.
    pub fn queue_many(&self, tenant: &str, prefix: &str, n: usize, threads: usize) -> Vec<String> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let ids = std::sync::Mutex::new(vec![String::new(); n]);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.api)).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return;
                        }
                        let body = format!(
                            r#"{{"tenant":"{tenant}","event_type":"a","id":"{prefix}{i}","payload":{{"n":{i}}}}}"#
                        );
                        let raw = format!(
                            "POST /outbound HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                             Authorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        conn.write_all(raw.as_bytes()).unwrap();
                        let r = read_response(&mut conn).unwrap();
                        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
                        ids.lock().unwrap()[i] = r.json()["message_id"].as_str().unwrap().to_owned();
                    }
                });
            }
        });
        ids.into_inner().unwrap()
    }

    pub fn attempts(&self, message_id: &str) -> Vec<serde_json::Value> {
        let conf = self.server.dir.path().join("portcullis.yaml");
        let (_, out, _) = portcullis(&[
            "outbound",
            "attempts",
            "-c",
            conf.to_str().unwrap(),
            message_id,
            "--json",
        ]);
        serde_json::from_str::<Vec<serde_json::Value>>(out.trim()).unwrap_or_default()
    }

    /// The dead letters `portcullis outbound dlq list --json` prints.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        let conf = self.server.dir.path().join("portcullis.yaml");
        let (code, out, err) = portcullis(&[
            "outbound",
            "dlq",
            "list",
            "-c",
            conf.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(out.trim()).unwrap()
    }

    /// Waits until the message has `n` attempts recorded at `endpoint`.
    pub fn wait_attempts(
        &self,
        message_id: &str,
        endpoint: &str,
        n: usize,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let all: Vec<_> = self
                .attempts(message_id)
                .into_iter()
                .filter(|a| a["endpoint"] == endpoint)
                .collect();
            if all.len() >= n {
                return all;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{message_id} has {} of {n} attempts at {endpoint}; log:\n{}",
                all.len(),
                self.server.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `/metrics` shows `line` (panics after 10 s).
    pub fn wait_metric(&self, line: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.metrics().contains(line) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {line}:\n{}",
                self.metrics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(&self.server.admin_get("/metrics").body).into_owned()
    }
}

/// The bodies a receiver got, as text, sorted.
pub fn sorted_bodies(got: &[super::receiver::Delivered]) -> Vec<String> {
    let mut bodies: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.body.clone()).unwrap())
        .collect();
    bodies.sort();
    bodies
}

/// Waits until the receiver saw every message id (as `webhook-id`) at least once.
pub fn wait_delivered(rx: &Receiver, ids: &[String]) {
    wait_delivered_within(rx, ids, Duration::from_secs(30));
}

/// The same, with a hang detector of `limit`; how many deliveries the receiver got in all.
pub fn wait_delivered_within(rx: &Receiver, ids: &[String], limit: Duration) -> usize {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let (seen, all) = {
            let got = rx.received.lock().unwrap();
            let seen: std::collections::HashSet<String> = got
                .iter()
                .filter_map(|r| r.header("webhook-id").map(str::to_owned))
                .collect();
            (seen, got.len())
        };
        let missing = ids.iter().filter(|id| !seen.contains(*id)).count();
        if missing == 0 {
            return all;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} messages never delivered",
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn endpoint(name: &str, url: &str, extra: &str) -> String {
    format!("  - name: {name}\n    url: {url}\n    secrets: [\"{SECRET}\"]\n{extra}")
}

pub fn tenant(name: &str, endpoints: &[String]) -> String {
    format!("tenant: {name}\nendpoints:\n{}", endpoints.concat())
}

pub const LOCAL: &str =
    "{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms, 200ms] }";

/// Verifies a delivery with the `standardwebhooks` Python package (the spec's own SDK) under
/// each of `secrets`; `None` when the package is missing (a failure with
/// PORTCULLIS_REQUIRE_BROKERS=1).
pub fn standard_webhooks_verify(
    secrets: &[&str],
    body: &str,
    delivery: &super::receiver::Delivered,
) -> Option<Result<(), String>> {
    let script = r#"
import sys, json
from standardwebhooks import Webhook
d = json.load(sys.stdin)
for secret in d["secrets"]:
    Webhook(secret).verify(d["body"], d["headers"])
print("verified")
"#;
    let input = serde_json::json!({
        "secrets": secrets,
        "body": body,
        "headers": {
            "webhook-id": delivery.header("webhook-id"),
            "webhook-timestamp": delivery.header("webhook-timestamp"),
            "webhook-signature": delivery.header("webhook-signature"),
        },
    });
    let present = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status()
        .is_ok_and(|s| s.success());
    if !present {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_BROKERS").is_none(),
            "no standardwebhooks package (pip install -r tests/sdk/requirements.txt), and PORTCULLIS_REQUIRE_BROKERS=1"
        );
        eprintln!("skipped: no python standardwebhooks package");
        return None;
    }
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// A database of its own on the machine's PostgreSQL, dropped afterwards.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    pub fn create() -> Option<PgDatabase> {
        if !broker("PostgreSQL", "127.0.0.1:5432") {
            return None;
        }
        let name = unique("portcullis_test").replace(['-', '.', ':'], "_");
        Self::psql(&format!("CREATE DATABASE {name}"));
        Some(PgDatabase { name })
    }

    pub fn psql(sql: &str) {
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("psql (apt-get install postgresql-client)");
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}
