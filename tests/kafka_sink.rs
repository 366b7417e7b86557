//! The kafka sink against a real Kafka-protocol broker: Tansu (`cargo install tansu --features
//! libsql`, which `.ci/run` does), one private broker per test on a free port with its SQLite
//! storage in a temp dir, killed and started again where a test needs it. Records are read
//! back with librdkafka (rdkafka), the client the sink itself uses.

mod common;

use std::collections::HashSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A Tansu broker of the test's own.
struct Tansu {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Clients must authenticate (SASL/SCRAM) from the next spawn on.
    authentication: bool,
    /// The user the test's own consumer signs in as, then.
    user: Option<(String, String)>,
    /// A TLS terminator in front (Tansu 0.6 has no working TLS flags of its own): clients
    /// are told to connect there, with the client certificate in this directory.
    tls: Option<(Haproxy, std::path::PathBuf)>,
}

/// One record as a consumer sees it.
struct Record {
    key: String,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Record {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Tansu {
    /// `None` (the test skips) when tansu is not installed, unless brokers are required.
    fn start() -> Option<Tansu> {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Option<Tansu> {
        let installed = Command::new("tansu")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
                panic!("no tansu (cargo install tansu --features libsql), and PORTCULLIS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipped: no Kafka broker: tansu is not installed (cargo install tansu --features libsql)");
            return None;
        }
        let mut t = Tansu {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
            authentication: false,
            user: None,
            tls: None,
        };
        t.spawn();
        Some(t)
    }

    /// Puts haproxy in front, speaking only TLS and only to clients with a certificate `ca`
    /// signed; the broker advertises haproxy's port from the next spawn on.
    fn behind_tls(&mut self, ca: &common::certs::Ca) {
        let dir = self.dir.path().join("tls");
        std::fs::create_dir_all(&dir).unwrap();
        ca.write_server(&dir);
        let (cert, key, _) = ca.leaf(&["portcullis"], true);
        std::fs::write(dir.join("client.pem"), cert).unwrap();
        std::fs::write(dir.join("client.key"), key).unwrap();
        let server = std::fs::read_to_string(dir.join("server.pem")).unwrap()
            + &std::fs::read_to_string(dir.join("server.key")).unwrap();
        std::fs::write(dir.join("haproxy.pem"), server).unwrap();
        let (crt, ca_file, backend) = (dir.join("haproxy.pem"), dir.join("ca.pem"), self.port);
        let Some(haproxy) = Haproxy::start(|port| {
            format!(
                "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\nfrontend tls\n  bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required\n  default_backend tansu\nbackend tansu\n  server tansu 127.0.0.1:{backend}\n",
                crt.display(),
                ca_file.display()
            )
        }) else {
            panic!("haproxy is needed for the TLS test");
        };
        self.tls = Some((haproxy, dir));
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = match &self.tls {
            Some((haproxy, _)) => format!("tcp://127.0.0.1:{}", haproxy.port),
            None => url.clone(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("tansu.log"))
            .unwrap();
        // Tansu takes the SQLite path relative to its working directory.
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.authentication.then_some("--authentication"))
            .current_dir(self.dir.path())
            .env(
                "RUST_LOG",
                std::env::var("TANSU_LOG").unwrap_or("warn".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("tansu runs");
        self.child = Some(child);
        wait_until("tansu listens", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// A SCRAM-SHA-512 user. Tansu 0.6 takes new users only from unauthenticated clients,
    /// so this comes before turning authentication on.
    fn add_user(&mut self, name: &str, password: &str) {
        self.user = Some((name.to_owned(), password.to_owned()));
        let status = Command::new("tansu")
            .args([
                "user",
                "create",
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
            ])
            .args([name, password])
            .status()
            .unwrap();
        assert!(status.success(), "tansu user create");
    }

    /// Where clients connect: haproxy's TLS port when there is one.
    fn brokers(&self) -> String {
        match &self.tls {
            Some((haproxy, _)) => format!("127.0.0.1:{}", haproxy.port),
            None => format!("127.0.0.1:{}", self.port),
        }
    }

    /// A client of the broker as it is now: TLS with the client certificate, and SCRAM.
    fn client(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers());
        if let Some((_, dir)) = &self.tls {
            let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
            config
                .set("security.protocol", "ssl")
                .set("ssl.ca.location", path("ca.pem"))
                .set("ssl.certificate.location", path("client.pem"))
                .set("ssl.key.location", path("client.key"));
        }
        if let (true, Some((name, password))) = (self.authentication, &self.user) {
            let protocol = if self.tls.is_some() {
                "sasl_ssl"
            } else {
                "sasl_plaintext"
            };
            config
                .set("security.protocol", protocol)
                .set("sasl.mechanisms", "SCRAM-SHA-512")
                .set("sasl.username", name)
                .set("sasl.password", password);
        }
        config
    }

    fn create_topic(&self, topic: &str) {
        let admin: AdminClient<DefaultClientContext> = self.client().create().unwrap();
        let created = runtime().block_on(admin.create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ));
        for result in created.expect("CreateTopics answered") {
            result.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// Every record of the (one-partition) topic, in order.
    fn records(&self, topic: &str) -> Vec<Record> {
        let consumer: BaseConsumer = self
            .client()
            .set("group.id", unique("portcullis-test"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(topic, 0, Duration::from_secs(10))
            .expect("ListOffsets answered");
        let mut partitions = TopicPartitionList::new();
        partitions
            .add_partition_offset(topic, 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&partitions).unwrap();
        let mut out = Vec::new();
        let mut next = 0;
        // Bounded: a hang detector, not a timing assertion.
        for _ in 0..600 {
            if next >= high {
                break;
            }
            let Some(message) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = message.expect("a record");
            next = message.offset() + 1;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                            (h.key.to_owned(), value.unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(Record {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                value: message.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        assert!(next >= high, "read {next} of {high} records of {topic}");
        out
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.kill();
    }
}

fn filter(name: &str) -> String {
    format!("name: {name}\npreset: github\nsecrets: [\"ks\"]\nmap: {{ n: \"$.i\" }}\nsink: queue\n")
}

fn kafka_sink(brokers: &str, topic: &str, extra: &str) -> String {
    format!("  queue: {{ type: kafka, brokers: \"{brokers}\", topic: \"{topic}\", timeout: 2s{extra} }}")
}

#[test]
fn n_signed_events_become_n_kafka_records_keyed_by_provider_and_event_id() {
    let Some(kafka) = Tansu::start() else {
        return;
    };
    let prefix = unique("p");
    kafka.create_topic(&format!("{prefix}.gh.pull_request"));
    let f = filter("gh");
    let sink = kafka_sink(
        &kafka.brokers(),
        &format!("{prefix}.{{provider}}.{{event_type}}"),
        "",
    );
    let server = Server::start(&[("f.yaml", &f)], &sink);
    let n = 30;
    post_pull_requests_twice(server.port, &f, n);
    let got = kafka.records(&format!("{prefix}.gh.pull_request"));
    assert_eq!(
        got.len(),
        n,
        "one record per event, none for the duplicates"
    );
    let keys: HashSet<&str> = got.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys.len(), n);
    for r in &got {
        let id = r.header("Portcullis-Event-Id").unwrap();
        assert_eq!(r.key, format!("gh:{id}"), "key provider:event_id");
        let (t, i) = id.split_once('-').unwrap();
        assert_eq!(r.value, format!("{{\"t\":{t},\"i\":{i}}}").into_bytes());
        assert_eq!(
            r.header("Portcullis-Map"),
            Some(format!("{{\"n\":{i}}}").as_str())
        );
    }
    let r = &got[0];
    assert_eq!(r.header("Portcullis-Provider"), Some("gh"));
    assert_eq!(r.header("Portcullis-Event-Type"), Some("pull_request"));
    assert_eq!(r.header("Portcullis-Verified"), Some("true"));
    assert_eq!(r.header("Portcullis-Source-Ip"), Some("127.0.0.1"));
    assert!(r.header("Portcullis-Received-At").is_some());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-hub-signature-256"), None, "no signature header");
    assert_eq!(server.admin_get("/readyz").status, 200);
}

#[test]
fn a_kafka_broker_killed_mid_stream_loses_no_acknowledged_event() {
    let Some(mut kafka) = Tansu::start() else {
        return;
    };
    let topic = unique("fault");
    kafka.create_topic(&topic);
    let f = filter("fault");
    let server = Server::start(&[("f.yaml", &f)], &kafka_sink(&kafka.brokers(), &topic, ""));
    let traffic = Traffic::start(server.port, "/webhook/fault", &f);
    traffic.wait_for(202, 20);
    kafka.kill();
    traffic.wait_for(503, 3);
    wait_until("/readyz says the broker is gone", || {
        server.admin_get("/readyz").status == 503
    });
    let accepted_before = traffic.count(202);
    kafka.spawn();
    let healed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        traffic.wait_for(202, accepted_before + 20)
    }));
    if let Err(panic) = healed {
        eprintln!(
            "gateway log:\n{}\nbroker log:\n{}",
            server.log(),
            kafka.log()
        );
        std::panic::resume_unwind(panic);
    }
    let results = traffic.finish();
    assert!(
        results.iter().all(|(_, s, _)| *s == 202 || *s == 503),
        "only 202 or 503: {:?}",
        results
            .iter()
            .filter(|(_, s, _)| *s != 202 && *s != 503)
            .collect::<Vec<_>>()
    );
    let stored: Vec<String> = kafka.records(&topic).into_iter().map(|r| r.key).collect();
    let unique_stored: HashSet<&String> = stored.iter().collect();
    assert_eq!(unique_stored.len(), stored.len(), "no event stored twice");
    for (id, status, _) in &results {
        if *status == 202 {
            assert!(
                unique_stored.contains(&format!("fault:{id}")),
                "{id} got 202 but is not in the topic"
            );
        }
    }
    // A 503 released the event's reservation: the sender's retry is taken, not a duplicate.
    let (refused, _, _) = results.iter().find(|(_, s, _)| *s == 503).unwrap();
    let body = format!("{{\"i\":{}}}", refused.strip_prefix("f-").unwrap()).into_bytes();
    let retry = post(
        server.port,
        "/webhook/fault",
        &sign(&f, &body, now(), refused),
        &body,
    );
    assert_eq!(retry.status, 202, "the retry of a 503 is accepted");
    assert_eq!(server.admin_get("/readyz").status, 200);
}

#[test]
fn without_a_broker_events_are_refused_with_503_and_readyz_is_false() {
    let Some(_tansu) = Tansu::start() else {
        return;
    };
    let f = filter("nobroker");
    let sink = kafka_sink(&format!("127.0.0.1:{}", free_port()), "t", "");
    let server = Server::start(&[("f.yaml", &f)], &sink);
    let body = b"{\"i\":1}";
    let answer = post(
        server.port,
        "/webhook/nobroker",
        &sign(&f, body, now(), "x"),
        body,
    );
    assert_eq!(answer.status, 503);
    assert_eq!(answer.reason(), "sink_unavailable");
    assert!(answer.header("retry-after").is_some());
    assert_eq!(server.admin_get("/readyz").status, 503);
    assert!(
        server.log().contains("kafka"),
        "the log says the kafka sink failed"
    );
}

#[test]
fn with_a_fallback_the_outage_is_spooled_and_replayed_into_the_topic_in_order() {
    let port = free_port();
    let f = filter("later");
    let sink = format!(
        "{}\n  spool: {{ type: spool, dir: fallback/ }}",
        kafka_sink(&format!("127.0.0.1:{port}"), "later", ", fallback: spool")
    );
    let server = Server::start(&[("f.yaml", &f)], &sink);
    let ids: Vec<String> = (0..5).map(|i| format!("down-{i}")).collect();
    for id in &ids {
        assert_eq!(
            post_id(&server, &f, id),
            202,
            "spooled while the broker is away"
        );
    }
    let Some(kafka) = Tansu::start_on(port) else {
        return;
    };
    kafka.create_topic("later");
    wait_until("the spooled events reach the topic", || {
        kafka.records("later").len() >= ids.len()
    });
    let keys: Vec<String> = kafka.records("later").into_iter().map(|r| r.key).collect();
    let expected: Vec<String> = ids.iter().map(|id| format!("later:{id}")).collect();
    assert_eq!(keys, expected, "replayed once each, in arrival order");
}

#[test]
fn sasl_scram_credentials_from_env_are_used_and_a_wrong_password_is_refused_clearly() {
    let Some(mut kafka) = Tansu::start() else {
        return;
    };
    kafka.create_topic("secured");
    kafka.add_user("gateway", "correct-horse-battery");
    kafka.kill();
    kafka.authentication = true;
    kafka.spawn();
    let f = filter("scram");
    let sasl =
        ", sasl: { mechanism: SCRAM-SHA-512, username: gateway, password: \"env:KAFKA_PASSWORD\" }";
    let sink = kafka_sink(&kafka.brokers(), "secured", sasl);
    let good = Server::start_env(
        &[("f.yaml", &f)],
        &sink,
        &[("KAFKA_PASSWORD", "correct-horse-battery")],
        &[],
    );
    assert_eq!(post_id(&good, &f, "signed-in"), 202);
    assert_eq!(good.admin_get("/readyz").status, 200);
    let keys: Vec<String> = kafka
        .records("secured")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["scram:signed-in"]);

    let bad = Server::start_env(
        &[("f.yaml", &f)],
        &sink,
        &[("KAFKA_PASSWORD", "wrong-horse")],
        &[],
    );
    let r = post_signed_response(&bad, &f, "refused");
    assert_eq!((r.status, r.reason()), (503, "sink_unavailable".into()));
    assert_eq!(bad.admin_get("/readyz").status, 503);
    let log = bad.log();
    assert!(
        log.contains("SASL authentication"),
        "the log says why:\n{log}"
    );
    for server in [&good, &bad] {
        let log = server.log();
        assert!(!log.contains("horse"), "no password in the log:\n{log}");
    }
    assert_eq!(
        kafka.records("secured").len(),
        1,
        "nothing from the refused sink"
    );
}

#[test]
fn a_sink_with_tls_never_speaks_plaintext_to_a_broker_that_has_no_tls() {
    let Some(kafka) = Tansu::start() else {
        return;
    };
    kafka.create_topic("clear");
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let f = filter("tls");
    let dir = Server::prepare(&[("f.yaml", &f)]);
    std::fs::write(dir.path().join("ca.pem"), ca.cert.pem()).unwrap();
    let sink = kafka_sink(&kafka.brokers(), "clear", ", tls: { ca: ca.pem }");
    let port = free_port();
    let server = Server::start_in(dir, port, &format!("  - addr: 127.0.0.1:{port}"), &sink, "");
    let r = post_signed_response(&server, &f, "clear-1");
    assert_eq!(r.status, 503);
    assert_eq!(server.admin_get("/readyz").status, 503);
    assert!(
        kafka.records("clear").is_empty(),
        "nothing sent in the clear"
    );
    // A plaintext broker never completes the handshake: the answer is a timeout, not data.
    assert!(
        server.log().contains("no kafka delivery report"),
        "{}",
        server.log()
    );
}

#[test]
fn sasl_scram_over_tls_with_a_client_certificate_and_a_wrong_ca_is_refused_clearly() {
    let Some(mut kafka) = Tansu::start() else {
        return;
    };
    kafka.add_user("gateway", "tls-horse-staple");
    kafka.kill();
    let ca = common::certs::Ca::new("kafka test ca");
    kafka.behind_tls(&ca);
    kafka.authentication = true;
    kafka.spawn();
    kafka.create_topic("tls-secured");
    let f = filter("ssl");
    let sasl =
        ", sasl: { mechanism: SCRAM-SHA-512, username: gateway, password: \"env:KAFKA_PASSWORD\" }";
    let dir = &kafka.tls.as_ref().unwrap().1;
    let files: Vec<(&str, String)> = ["client.pem", "client.key"]
        .iter()
        .map(|n| (*n, std::fs::read_to_string(dir.join(n)).unwrap()))
        .collect();
    let other = common::certs::Ca::new("another ca");
    let start = |ca_pem: &str, tls: &str| {
        let mut files = files.clone();
        files.push(("ca.pem", ca_pem.to_owned()));
        let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
        let sink = kafka_sink(&kafka.brokers(), "tls-secured", &format!("{tls}{sasl}"));
        Server::start_env(
            &[("f.yaml", &f)],
            &sink,
            &[("KAFKA_PASSWORD", "tls-horse-staple")],
            &files,
        )
    };
    let mtls = ", tls: { ca: ca.pem, cert: client.pem, key: client.key }";
    let good = start(&ca.pem, mtls);
    assert_eq!(post_id(&good, &f, "over-tls"), 202, "{}", good.log());
    assert_eq!(good.admin_get("/readyz").status, 200);

    let wrong_ca = start(&other.pem, mtls);
    let r = post_signed_response(&wrong_ca, &f, "wrong-ca");
    assert_eq!((r.status, r.reason()), (503, "sink_unavailable".into()));
    assert_eq!(wrong_ca.admin_get("/readyz").status, 503);
    let log = wrong_ca.log();
    assert!(
        log.contains("certificate verify failed"),
        "the log says why:\n{log}"
    );
    let no_client_cert = start(&ca.pem, ", tls: { ca: ca.pem }");
    assert_eq!(post_id(&no_client_cert, &f, "no-cert"), 503);
    assert_eq!(no_client_cert.admin_get("/readyz").status, 503);
    for server in [&good, &wrong_ca, &no_client_cert] {
        let log = server.log();
        assert!(!log.contains("horse"), "no password in the log:\n{log}");
    }
    let keys: Vec<String> = kafka
        .records("tls-secured")
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(keys, ["ssl:over-tls"], "only the good sink's record");
}

/// [`post_id`]'s request, with the whole answer.
fn post_signed_response(server: &Server, filter: &str, id: &str) -> Response {
    let name = filter
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap();
    let body = format!("{{\"id\":\"{id}\"}}").into_bytes();
    server.post(
        &format!("/webhook/{name}"),
        &sign(filter, &body, now(), id),
        &body,
    )
}
