//! The PostgreSQL store over TLS with the server's certificate verified (`sslmode=verify-full`):
//! the machine's PostgreSQL serves Debian's snakeoil certificate, self-signed for `localhost`,
//! which serves as its own CA here. A certificate that names another host, or a CA that did
//! not sign it, keeps the node from starting, with the reason in its log; nothing falls back
//! to plaintext.

mod common;

use common::dispatcher::*;
use common::receiver::Receiver;
use common::*;

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Whether the machine's PostgreSQL takes TLS with the snakeoil certificate.
fn tls_postgres() -> bool {
    let ok = std::path::Path::new(SNAKEOIL).exists()
        && std::process::Command::new("psql")
            .args([
                "host=127.0.0.1 user=postgres sslmode=require",
                "-Atc",
                "select 1",
            ])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("PORTCULLIS_REQUIRE_BROKERS").as_deref() == Ok("1") {
            panic!("no PostgreSQL with TLS (ssl = on, {SNAKEOIL}) at 127.0.0.1:5432, and PORTCULLIS_REQUIRE_BROKERS=1");
        }
        eprintln!("skipped: no PostgreSQL with TLS at 127.0.0.1:5432");
    }
    ok
}

fn start(rx: &Receiver, url: &str, files: &[(&str, &str)]) -> Dispatcher {
    let dir = Server::prepare(&[]);
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let e = endpoint("e", &format!("http://127.0.0.1:{}/", rx.port), "");
    Dispatcher::start_in(dir, &[("t.yaml", tenant("t", &[e]))], LOCAL, url)
}

#[test]
fn the_store_verifies_the_postgresql_certificate_and_refuses_a_wrong_name_or_ca() {
    if !tls_postgres() {
        return;
    }
    let Some(db) = PgDatabase::create() else {
        return;
    };
    let rx = Receiver::ok();
    let verified = format!(
        "postgres://postgres@localhost:5432/{}?sslmode=verify-full&sslrootcert={SNAKEOIL}",
        db.name
    );
    let d = start(&rx, &verified, &[]);
    let id = d.queue("t", "a", "over-tls", r#"{"n":1}"#);
    let got = rx.wait_for(1);
    assert_eq!(got[0].header("webhook-id"), Some(id.as_str()));
    assert_eq!(d.server.admin_get("/readyz").status, 200);

    // The same node on a store whose certificate does not verify does not start: the
    // reason is in its log, and nothing is served in the clear.
    let config = std::fs::read_to_string(d.server.dir.path().join("portcullis.yaml")).unwrap();
    let endpoints = std::fs::read_to_string(d.server.dir.path().join("endpoints/t.yaml")).unwrap();
    drop(d);
    let refused = |url: &str, files: &[(&str, &str)]| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("endpoints")).unwrap();
        std::fs::create_dir_all(dir.path().join("filters")).unwrap();
        std::fs::write(dir.path().join("endpoints/t.yaml"), &endpoints).unwrap();
        std::fs::write(
            dir.path().join("portcullis.yaml"),
            config.replace(&verified, url),
        )
        .unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let log = dir.path().join("log.txt");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "-c"])
            .arg(dir.path().join("portcullis.yaml"))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // Bounded: a node that starts after all is killed and fails the test, not hangs it.
        let mut exited = None;
        for _ in 0..600 {
            exited = child.try_wait().unwrap();
            if exited.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(exited.is_some_and(|s| !s.success()), "it started:\n{text}");
        text
    };
    // 127.0.0.1 is not a name the certificate holds.
    let wrong_name = verified.replace("@localhost:", "@127.0.0.1:");
    let log = refused(&wrong_name, &[]);
    assert!(
        log.contains("not starting: store") && log.contains("not valid for name"),
        "{log}"
    );
    // A CA of the test's own (relative to the config file) did not sign it.
    let ca = common::certs::Ca::new("not the server's ca");
    let wrong_ca = verified.replace(SNAKEOIL, "ca.pem");
    let log = refused(&wrong_ca, &[("ca.pem", &ca.pem)]);
    assert!(
        log.contains("not starting: store") && log.contains("UnknownIssuer"),
        "{log}"
    );
    assert_eq!(rx.count(), 1, "nothing but the first message was delivered");
}
