//! A scripted webhook receiver for outbound tests: a real HTTP/1.1 server on 127.0.0.1 that
//! records every request and answers the n-th one as its script says.

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Delivered {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Delivered {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// Status, extra headers, body.
    Full(u16, Vec<(String, String)>, Vec<u8>),
    /// Answer nothing for this long, then close.
    Hang(Duration),
}

type Script = dyn Fn(usize) -> Reply + Send + Sync;

pub struct Receiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Delivered>>>,
}

impl Receiver {
    /// Answers request `n` (from 0) with `script(n)`.
    pub fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    pub fn start_on(
        listener: TcpListener,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let r = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, script) = (r.clone(), script.clone());
                std::thread::spawn(move || serve(conn, r, script));
            }
        });
        Receiver { port, received }
    }

    /// The same over TLS with `config` (a rustls server config).
    pub fn start_tls(
        config: Arc<rustls::ServerConfig>,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let r = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, script, config) = (r.clone(), script.clone(), config.clone());
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    serve(rustls::StreamOwned::new(tls, conn), r, script)
                });
            }
        });
        Receiver { port, received }
    }

    pub fn ok() -> Receiver {
        Self::start(|_| Reply::Status(200))
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn all(&self) -> Vec<Delivered> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (panics after 30 s).
    pub fn wait_for(&self, n: usize) -> Vec<Delivered> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.count() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "receiver got {} of {n} deliveries",
                self.count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.all()
    }
}

fn serve<S: Read + Write>(conn: S, received: Arc<Mutex<Vec<Delivered>>>, script: Arc<Script>) {
    let mut reader = BufReader::new(conn);
    loop {
        let Some((line, headers, body)) = super::read_request(&mut reader) else {
            return;
        };
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let n = {
            let mut all = received.lock().unwrap();
            all.push(Delivered {
                path,
                headers,
                body,
            });
            all.len() - 1
        };
        let (status, extra, body) = match script(n) {
            Reply::Status(s) => (s, Vec::new(), b"ok".to_vec()),
            Reply::Full(s, h, b) => (s, h, b),
            Reply::Hang(d) => {
                std::thread::sleep(d);
                return;
            }
        };
        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let writer = reader.get_mut();
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(&body).is_err()
            || writer.flush().is_err()
        {
            return;
        }
    }
}
