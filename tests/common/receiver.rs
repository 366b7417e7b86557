//! A scripted webhook receiver for outbound tests: a real HTTP/1.1 server on 127.0.0.1 that
//! records every request and answers the n-th one as its script says.

use std::io::{BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Delivered {
    /// When it arrived.
    pub at: std::time::Instant,
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
    /// Answer this status after this long (requests overlap meanwhile).
    After(Duration, u16),
}

type Script = dyn Fn(&Delivered, usize) -> Reply + Send + Sync;

pub struct Receiver {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Delivered>>>,
    /// Requests being answered now, and the most there ever were at once.
    pub load: Arc<Load>,
}

#[derive(Default)]
pub struct Load {
    now: AtomicUsize,
    pub peak: AtomicUsize,
}

impl Receiver {
    /// Answers request `n` (from 0) with `script(n)`.
    pub fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Receiver {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    /// Answers each request as `script(request, n)` says.
    pub fn start_with(
        script: impl Fn(&Delivered, usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_scripted(TcpListener::bind("127.0.0.1:0").unwrap(), Arc::new(script))
    }

    pub fn start_on(
        listener: TcpListener,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        Self::start_scripted(listener, Arc::new(move |_: &Delivered, n| script(n)))
    }

    fn start_scripted(listener: TcpListener, script: Arc<Script>) -> Receiver {
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let r = received.clone();
        let load = Arc::new(Load::default());
        let l = load.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, script, l) = (r.clone(), script.clone(), l.clone());
                std::thread::spawn(move || serve(conn, r, script, l));
            }
        });
        Receiver {
            port,
            received,
            load,
        }
    }

    /// The same over TLS with `config` (a rustls server config).
    pub fn start_tls(
        config: Arc<rustls::ServerConfig>,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(move |_: &Delivered, n| script(n));
        let r = received.clone();
        let load = Arc::new(Load::default());
        let l = load.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (r, script, config, l) = (r.clone(), script.clone(), config.clone(), l.clone());
                std::thread::spawn(move || {
                    let Ok(tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    serve(rustls::StreamOwned::new(tls, conn), r, script, l)
                });
            }
        });
        Receiver {
            port,
            received,
            load,
        }
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

/// Counts a request in, and out when dropped.
struct Busy(Arc<Load>);

impl Busy {
    fn new(load: &Arc<Load>) -> Busy {
        let now = load.now.fetch_add(1, Ordering::SeqCst) + 1;
        load.peak.fetch_max(now, Ordering::SeqCst);
        Busy(load.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve<S: Read + Write>(
    conn: S,
    received: Arc<Mutex<Vec<Delivered>>>,
    script: Arc<Script>,
    load: Arc<Load>,
) {
    let mut reader = BufReader::new(conn);
    loop {
        let Some((line, headers, body)) = super::read_request(&mut reader) else {
            return;
        };
        let _busy = Busy::new(&load);
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let request = Delivered {
            at: std::time::Instant::now(),
            path,
            headers,
            body,
        };
        let n = {
            let mut all = received.lock().unwrap();
            all.push(request.clone());
            all.len() - 1
        };
        let (status, extra, body) = match script(&request, n) {
            Reply::Status(s) => (s, Vec::new(), b"ok".to_vec()),
            Reply::Full(s, h, b) => (s, h, b),
            Reply::Hang(d) => {
                std::thread::sleep(d);
                return;
            }
            Reply::After(d, s) => {
                std::thread::sleep(d);
                (s, Vec::new(), b"ok".to_vec())
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
