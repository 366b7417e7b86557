//! A deadline for every request head, counted from the moment a connection starts waiting for
//! it (accepted, or its previous response sent).
//!
//! Pingora bounds each *read* of a request head (60 s) but not the whole head, and keeps an
//! idle keep-alive connection for as long. A slow-loris client trickling a byte at a time, or a
//! crowd of idle connections, would hold sockets and memory for minutes each. [`HeaderDeadline`]
//! wraps the HTTP application and closes a connection whose next head has not arrived within
//! `header_timeout`. The gateway reports [`head_received`] when it sees a head (no deadline while
//! the request is served; the body has the filter's `body_timeout`) and [`response_sent`] when it
//! is done, which starts the clock for the next head.
//!
//! TLS listeners start the clock at accept too: Pingora gives a handshake 60 s and then waits
//! for an HTTP/2 preface forever, so a silent TCP peer, a ClientHello followed by silence, or a
//! finished handshake with ALPN h2 and no request would each hold a socket. [`AcceptClock`] runs
//! as the first pre-TLS step, remembers the accept time under the socket's kernel cookie
//! (`SO_COOKIE`, never reused) and arms a watchdog that shuts the socket down if no request head
//! arrived within `header_timeout`; HTTP/1 connections hand over to the per-connection clock
//! above, HTTP/2 ones disarm it with their first HEADERS frame ([`h2_request_seen`]). After
//! that, an HTTP/2 connection is left to Pingora's `h2_idle_timeout` (the same value).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use once_cell::sync::Lazy;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

/// A TLS connection accepted and still without a request head, by socket cookie.
struct Waiting {
    accepted: Instant,
    /// Set once a head arrived or the HTTP/1 clock took over: the watchdog then leaves it be.
    done: Arc<AtomicBool>,
}

static WAITING: Lazy<Mutex<HashMap<u64, Waiting>>> = Lazy::new(|| Mutex::new(HashMap::new()));

/// HTTP/2 connections past their handshake still waiting for a first request, and how many:
/// apart, so a request on a connection that had its first one costs one atomic load.
static H2_WAITING: Lazy<Mutex<HashMap<u64, Arc<AtomicBool>>>> =
    Lazy::new(|| Mutex::new(HashMap::new()));
static H2_COUNT: AtomicUsize = AtomicUsize::new(0);

fn h2_waiting() -> std::sync::MutexGuard<'static, HashMap<u64, Arc<AtomicBool>>> {
    H2_WAITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Ends an HTTP/2 connection's wait (first request, or the watchdog): its flag, if it waited.
fn h2_stop_waiting(cookie: u64) -> Option<Arc<AtomicBool>> {
    let done = h2_waiting().remove(&cookie)?;
    H2_COUNT.fetch_sub(1, Ordering::AcqRel);
    Some(done)
}

fn waiting() -> std::sync::MutexGuard<'static, HashMap<u64, Waiting>> {
    WAITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The kernel's id of the socket behind `fd` (`SO_COOKIE`): unique for the system's uptime,
/// so a closed connection's reused descriptor is never mistaken for it.
fn cookie_of(fd: std::os::fd::RawFd) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cookie)
}

/// The first pre-TLS step of every TLS listener: see the module docs.
pub struct AcceptClock {
    pub timeout: Duration,
}

#[async_trait]
impl pingora::listeners::PreTlsProcess for AcceptClock {
    async fn process(
        &self,
        stream: &mut pingora::protocols::l4::stream::Stream,
    ) -> pingora::Result<()> {
        let fd = stream.as_raw_fd();
        let Some(cookie) = cookie_of(fd) else {
            return Ok(());
        };
        let done = Arc::new(AtomicBool::new(false));
        waiting().insert(
            cookie,
            Waiting {
                accepted: Instant::now(),
                done: done.clone(),
            },
        );
        let timeout = self.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            waiting().remove(&cookie);
            h2_stop_waiting(cookie);
            if !done.load(Ordering::Acquire) && cookie_of(fd) == Some(cookie) {
                tracing::debug!("no request head within {timeout:?} of accept: closing");
                crate::metrics::HEADER_TIMEOUTS.inc();
                // SAFETY: the cookie check above proves `fd` is still this connection's socket;
                // shutdown only ends its traffic, the owner still closes the descriptor.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        });
        Ok(())
    }
}

/// When the connection behind `stream` was accepted, if [`AcceptClock`] saw it; the HTTP/1
/// clock takes over from here, so the watchdog is disarmed.
fn take_over(stream: &Stream) -> Option<Instant> {
    let cookie = stream.get_socket_digest()?.socket_cookie().ok()?;
    let entry = waiting().remove(&cookie)?;
    entry.done.store(true, Ordering::Release);
    Some(entry.accepted)
}

/// An HTTP/2 connection finished its handshake: until its first request it waits apart.
fn h2_started(stream: &Stream) {
    let Some(cookie) = stream
        .get_socket_digest()
        .and_then(|d| d.socket_cookie().ok())
    else {
        return;
    };
    let Some(entry) = waiting().remove(&cookie) else {
        return;
    };
    h2_waiting().insert(cookie, entry.done);
    H2_COUNT.fetch_add(1, Ordering::AcqRel);
}

/// An HTTP/2 request arrived on the connection with this socket digest: its accept deadline
/// no longer applies. One atomic load when no HTTP/2 connection waits for its first request.
pub fn h2_request_seen(digest: Option<&pingora::protocols::SocketDigest>) {
    if H2_COUNT.load(Ordering::Acquire) == 0 {
        return;
    }
    let Some(cookie) = digest.and_then(|d| d.socket_cookie().ok()) else {
        return;
    };
    if let Some(done) = h2_stop_waiting(cookie) {
        done.store(true, Ordering::Release);
    }
}

tokio::task_local! {
    static CLOCK: Arc<HeadClock>;
}

/// When the connection started waiting for its next request head, in milliseconds after the
/// connection was accepted; `SERVING` while a request is being served.
struct HeadClock {
    accepted: Instant,
    waiting_since_ms: AtomicU64,
}

const SERVING: u64 = u64::MAX;

impl HeadClock {
    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since_ms.load(Ordering::Acquire) {
            SERVING => None,
            ms => Some(self.accepted + Duration::from_millis(ms)),
        }
    }
}

/// The head of the current request is complete: no deadline while it is served. A no-op
/// outside a [`HeaderDeadline`] (HTTP/2 streams run in tasks of their own).
pub fn head_received() {
    let _ = CLOCK.try_with(|clock| clock.waiting_since_ms.store(SERVING, Ordering::Release));
}

/// The response is sent: the next head on this keep-alive connection is due within the deadline.
pub fn response_sent() {
    let _ = CLOCK.try_with(|clock| {
        let ms = u64::try_from(clock.accepted.elapsed().as_millis()).unwrap_or(SERVING - 1);
        clock.waiting_since_ms.store(ms, Ordering::Release);
    });
}

pub struct HeaderDeadline<A> {
    pub inner: Arc<A>,
    pub timeout: Duration,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for HeaderDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            h2_started(&stream);
            return self.inner.process_new(stream, shutdown).await;
        }
        let clock = Arc::new(HeadClock {
            accepted: take_over(&stream).unwrap_or_else(Instant::now),
            waiting_since_ms: AtomicU64::new(0),
        });
        // Pingora serves every request of a keep-alive connection inside this one call.
        let serve = CLOCK.scope(clock.clone(), self.inner.process_new(stream, shutdown));
        tokio::pin!(serve);
        loop {
            let wake = clock.waiting_since().unwrap_or_else(Instant::now) + self.timeout;
            tokio::select! {
                next = &mut serve => return next,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
            if clock
                .waiting_since()
                .is_some_and(|since| since.elapsed() >= self.timeout)
            {
                // Dropping the future closes the connection; no request is in progress on it.
                tracing::debug!("no request head within {:?}: closing", self.timeout);
                crate::metrics::HEADER_TIMEOUTS.inc();
                return None;
            }
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
