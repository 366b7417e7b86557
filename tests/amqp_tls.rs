//! `amqps://` to a RabbitMQ of the test's own that takes only TLS with a client certificate
//! (mTLS) and one user: the amqp sink and the RabbitMQ source of outbound messages speak it
//! with credentials from `env:`, and a wrong CA, password or missing client certificate is a
//! clear refusal with `/readyz` false, never a plaintext fallback.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use common::dispatcher::*;
use common::receiver::Receiver;
use common::*;
use lapin::options::*;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::ShortString;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const PASSWORD: &str = "rmq-pw-8841";

/// A RabbitMQ node with a TLS listener only; killed (with its Erlang VM) on drop.
struct TlsRabbit {
    port: u16,
    dir: tempfile::TempDir,
    child: std::process::Child,
    client_cert: String,
    client_key: String,
}

impl TlsRabbit {
    /// None (and a "skipped" line) where RabbitMQ is not installed, unless brokers are required.
    fn start(ca: &common::certs::Ca) -> Option<TlsRabbit> {
        if !Path::new(SERVER).exists() {
            if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
                panic!("no {SERVER}, and PORTCULLIS_REQUIRE_BROKERS=1");
            }
            eprintln!("skipped: no RabbitMQ server at {SERVER}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        ca.write_server(dir.path());
        let path = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
        let port = free_port();
        let conf = format!(
            "listeners.tcp = none\nlisteners.ssl.default = {port}\n\
             ssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n\
             default_user = portcullis\ndefault_pass = {PASSWORD}\nloopback_users = none\n",
            path("ca.pem"),
            path("server.pem"),
            path("server.key"),
        );
        std::fs::write(dir.path().join("rabbitmq.conf"), conf).unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let node = format!("{}@localhost", unique("portcullis-tls-"));
        let child = std::process::Command::new(SERVER)
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", free_port().to_string())
            .env("RABBITMQ_CONFIG_FILE", path("rabbitmq"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("HOME", path(""))
            // Where the Erlang VM writes anything of its own (a MnesiaCore dump).
            .current_dir(dir.path())
            // Its own process group: the script, the VM and its helpers die together.
            .process_group(0)
            .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rabbitmq-server runs");
        let (client_cert, client_key, _) = ca.leaf(&["portcullis"], true);
        let rabbit = TlsRabbit {
            port,
            dir,
            child,
            client_cert,
            client_key,
        };
        // A RabbitMQ node takes several seconds to boot.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the TLS RabbitMQ did not start:\n{}",
                std::fs::read_to_string(rabbit.dir.path().join("out.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        Some(rabbit)
    }

    fn url(&self) -> String {
        format!("amqps://127.0.0.1:{}/%2f", self.port)
    }

    /// A connection as the test's user, with the client certificate.
    async fn connect(&self) -> Connection {
        let uri = format!("amqps://portcullis:{PASSWORD}@127.0.0.1:{}/%2f", self.port);
        let tls = OwnedTLSConfig {
            identity: Some(OwnedIdentity::PKCS8 {
                pem: self.client_cert.clone().into_bytes(),
                key: self.client_key.clone().into_bytes(),
            }),
            cert_chain: Some(std::fs::read_to_string(self.dir.path().join("ca.pem")).unwrap()),
        };
        let runtime = lapin::runtime::default_runtime().unwrap();
        Connection::connect_with_config(&uri, ConnectionProperties::default(), tls, runtime)
            .await
            .unwrap()
    }

    /// The client certificate files and CA (as `ca_name`) written into `dir`.
    fn write_client(&self, dir: &Path, ca_name: &str, ca_pem: &str) -> PathBuf {
        std::fs::write(dir.join("client.pem"), &self.client_cert).unwrap();
        std::fs::write(dir.join("client.key"), &self.client_key).unwrap();
        std::fs::write(dir.join(ca_name), ca_pem).unwrap();
        dir.to_owned()
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        // The whole group at once (SIGKILL: the VM writes nothing on the way out). The script
        // alone would leave the VM running, its data directory deleted under it.
        // SAFETY: signals the process group this test started (its leader is our child).
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

#[test]
fn the_amqp_sink_speaks_amqps_with_a_client_certificate_and_refuses_what_is_wrong_clearly() {
    let ca = common::certs::Ca::new("amqp test ca");
    let Some(rabbit) = TlsRabbit::start(&ca) else {
        return;
    };
    // The queue the good sink's messages land in.
    runtime().block_on(async {
        amqp_bound_queue(&rabbit.connect().await, "secure", "secured", "#").await;
    });
    let url = rabbit.url();
    let plain = url.replace("amqps://", "amqp://");
    let common = "exchange: secure, routing_key: \"{provider}\", timeout: 3s, username: portcullis";
    let tls = "tls: { ca: ca.pem, cert: client.pem, key: client.key }";
    let sinks = [
        format!("  good: {{ type: amqp, url: \"{url}\", {common}, password: \"env:RMQ_PASSWORD\", {tls} }}"),
        format!("  wrong_ca: {{ type: amqp, url: \"{url}\", {common}, password: \"env:RMQ_PASSWORD\", tls: {{ ca: other-ca.pem, cert: client.pem, key: client.key }} }}"),
        format!("  wrong_password: {{ type: amqp, url: \"{url}\", {common}, password: \"env:RMQ_WRONG\", {tls} }}"),
        format!("  no_client_cert: {{ type: amqp, url: \"{url}\", {common}, password: \"env:RMQ_PASSWORD\", tls: {{ ca: ca.pem }} }}"),
        format!("  plaintext: {{ type: amqp, url: \"{plain}\", {common}, password: \"env:RMQ_PASSWORD\" }}"),
    ]
    .join("\n");
    let names = [
        "good",
        "wrong_ca",
        "wrong_password",
        "no_client_cert",
        "plaintext",
    ];
    let filters = filter_per_sink(&names, "at");
    let filter_refs: Vec<(&str, &str)> = filters
        .iter()
        .map(|(f, y)| (f.as_str(), y.as_str()))
        .collect();
    let other = common::certs::Ca::new("another ca");
    let dir = Server::prepare(&filter_refs);
    rabbit.write_client(dir.path(), "ca.pem", &ca.pem);
    std::fs::write(dir.path().join("other-ca.pem"), &other.pem).unwrap();
    std::fs::write(
        dir.path().join("env"),
        format!("RMQ_PASSWORD={PASSWORD}\nRMQ_WRONG=not-the-password\n"),
    )
    .unwrap();
    let port = free_port();
    let server = Server::start_in(
        dir,
        port,
        &format!("  - addr: 127.0.0.1:{port}"),
        &sinks,
        "",
    );

    post_each_expecting(&server, &names, &filters, "good");
    let ready = server.admin_get("/readyz");
    assert_eq!(ready.status, 503);
    let sinks = &ready.json()["sinks"];
    assert_eq!(sinks["good"], true, "{ready:?}");
    for n in &names[1..] {
        assert_eq!(sinks[n], false, "sink {n}: {ready:?}");
    }
    let log = server.log();
    // Without a client certificate, TLS 1.3 lets the client finish its side first: the broker's
    // CertificateRequired alert may be read, or its reset of the connection come first.
    for (sink, why) in [
        ("wrong_ca", &["invalid peer certificate: UnknownIssuer"][..]),
        ("wrong_password", &["ACCESS_REFUSED"]),
        (
            "no_client_cert",
            &["CertificateRequired", "Connection reset by peer"],
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("sink=\"{sink}\""))
                    && why.iter().any(|w| l.contains(w))),
            "sink {sink}: the log says {why:?}:\n{log}"
        );
    }
    assert!(!log.contains(PASSWORD), "no password in the log");

    // Exactly the good sink's event reached the broker, with its envelope.
    runtime().block_on(async {
        let conn = rabbit.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let mut ids = Vec::new();
        while let Some(m) = ch
            .basic_get("secured".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            ids.push(
                m.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            );
        }
        assert_eq!(ids, ["good-1"]);
    });
}

#[test]
fn the_rabbitmq_source_consumes_over_amqps_and_a_refused_one_is_not_ready() {
    let ca = common::certs::Ca::new("amqp source ca");
    let Some(rabbit) = TlsRabbit::start(&ca) else {
        return;
    };
    let rx = Receiver::ok();
    let other = common::certs::Ca::new("another ca");
    let dir = Server::prepare(&[]);
    rabbit.write_client(dir.path(), "ca.pem", &ca.pem);
    std::fs::write(dir.path().join("other-ca.pem"), &other.pem).unwrap();
    std::fs::write(dir.path().join("env"), format!("RMQ_PASSWORD={PASSWORD}\n")).unwrap();
    let url = rabbit.url();
    let delivery = format!(
        "{{ allow_http: true, allow_internal: [127.0.0.1/32], retry: [100ms] }}\n  sources:\n    - {{ type: amqp, url: \"{url}\", queue: dispatch, username: portcullis, password: \"env:RMQ_PASSWORD\", tls: {{ ca: ca.pem, cert: client.pem, key: client.key }} }}\n    - {{ type: amqp, url: \"{url}\", queue: elsewhere, username: portcullis, password: \"env:RMQ_PASSWORD\", tls: {{ ca: other-ca.pem, cert: client.pem, key: client.key }} }}"
    );
    let e = endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "");
    let d = Dispatcher::start_in(
        dir,
        &[("t.yaml", tenant("t", &[e]))],
        &delivery,
        "sqlite://state/ledger.db",
    );
    wait_until("the good source is subscribed", || {
        d.server.admin_get("/readyz").json()["sources"]["amqp:dispatch"] == true
    });
    let ready = d.server.admin_get("/readyz");
    assert_eq!(
        ready.status, 503,
        "a source that cannot connect is not ready"
    );
    assert_eq!(ready.json()["sources"]["amqp:elsewhere"], false);

    runtime().block_on(async {
        let conn = rabbit.connect().await;
        let ch = conn.create_channel().await.unwrap();
        let message =
            r#"{"tenant":"t","event_type":"a","id":"amqps-1","payload":{"over":"amqps"}}"#;
        let confirm = ch
            .basic_publish(
                "".into(),
                ShortString::from("dispatch"),
                BasicPublishOptions::default(),
                message.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
        drop(confirm);
    });
    let got = rx.wait_for(1);
    assert_eq!(got[0].body, br#"{"over":"amqps"}"#);
    let log = d.server.log();
    assert!(
        log.contains("UnknownIssuer"),
        "the wrong CA is named:\n{log}"
    );
    assert!(!log.contains(PASSWORD), "no password in the log");
}
