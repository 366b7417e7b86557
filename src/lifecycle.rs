//! Shutdown and upgrade: which signal does what, when the process may exit.
//!
//! Pingora's sequence on SIGTERM (and on SIGQUIT, after handing the listening sockets to the
//! process started with `--upgrade`) is: stop accepting, drop idle connections, let requests
//! in flight finish, then sleep the whole `grace_period_seconds` before stopping its runtimes.
//! Added here:
//!
//! - a readiness drain: on SIGTERM, `/readyz` answers 503 for `drain` (server config) while
//!   the node still serves, so a load balancer stops sending before the listeners close;
//! - a linger: Pingora drops a connection still waiting for its first request the moment it
//!   stops listening, so one accepted in that instant would fail. [`Lingering`] gives such
//!   connections [`LINGER`] to send their request before Pingora lets go of them;
//! - a prompt exit: [`Drainer`] counts requests in flight and exits the process as soon as
//!   none is left after that, instead of always sleeping out the grace period (which stays
//!   the upper bound). Every 202 was already acknowledged by its sink, so there is nothing
//!   left to flush but the event log's queued records (waited for, 3 s at most);
//! - no handover of nothing: a SIGQUIT waits until this process holds the sockets
//!   ([`SocketsHeld`], which also releases a `run -d` parent: [`crate::daemon`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
static DRAINING: AtomicBool = AtomicBool::new(false);
static LISTENERS_DONE: AtomicBool = AtomicBool::new(false);
static SOCKETS_HELD: AtomicBool = AtomicBool::new(false);

/// After the listeners close, how long a just-accepted connection has to send its request.
pub const LINGER: Duration = Duration::from_secs(1);

/// How long "nothing in flight" must hold before the process exits: covers a connection
/// accepted in the instant the listeners closed, whose request is about to start.
const SETTLE: Duration = Duration::from_millis(200);

/// How long an exit waits for the event log's queued records.
const EVENT_LOG_FLUSH: Duration = Duration::from_secs(3);

/// Held by every request from its first hook to the end of its logging.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// True once SIGTERM arrived: `/readyz` fails so load balancers stop sending.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Acquire)
}

/// Pingora's signal handling (SIGQUIT upgrade, SIGTERM graceful, SIGINT fast) with the
/// readiness drain in front of SIGTERM.
pub struct Signals {
    pub drain: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = signal(SignalKind::quit()).expect("install SIGQUIT handler");
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
        tokio::select! {
            _ = quit.recv() => {
                // Pingora hands over the sockets it holds; before its bootstrap has them (a
                // second reload right after a first) it would hand over none, and the new
                // process, then this one, would exit: nothing left listening.
                if !SOCKETS_HELD.load(Ordering::Acquire) {
                    tracing::info!("SIGQUIT: waiting for the listening sockets before handing them over");
                }
                while !SOCKETS_HELD.load(Ordering::Acquire) {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    }
                }
                tracing::info!("SIGQUIT: handing the listeners to the new process, then draining");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                DRAINING.store(true, Ordering::Release);
                if !self.drain.is_zero() {
                    tracing::info!(drain = ?self.drain, "SIGTERM: /readyz now fails; still serving while load balancers notice");
                    tokio::select! {
                        _ = tokio::time::sleep(self.drain) => {}
                        _ = int.recv() => return ShutdownSignal::FastShutdown,
                    }
                }
                tracing::info!("SIGTERM: closing listeners, finishing requests in flight");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// The gateway's Pingora app, with [`LINGER`] between "listeners closed" and "connections
/// without a request dropped".
pub struct Lingering<A> {
    pub inner: Arc<A>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Lingering<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        tokio::time::sleep(LINGER).await;
        self.inner.cleanup().await;
        LISTENERS_DONE.store(true, Ordering::Release);
    }
}

/// Depends on Pingora's bootstrap (which receives an upgrade's sockets); then waits for the
/// listeners to be bound (a fresh start, or an address new in this config). From then on a
/// SIGQUIT may hand the sockets over, and a `run -d` parent is released.
pub struct SocketsHeld {
    pub addrs: Vec<std::net::SocketAddr>,
}

#[async_trait]
impl BackgroundService for SocketsHeld {
    async fn start(&self, _shutdown: ShutdownWatch) {
        while !crate::daemon::listening(&self.addrs) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        SOCKETS_HELD.store(true, Ordering::Release);
        crate::daemon::sockets_held();
    }
}

/// Exits the process once the listeners are closed and no request is in flight.
pub struct Drainer;

#[async_trait]
impl BackgroundService for Drainer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        while !LISTENERS_DONE.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            match (in_flight(), idle_since) {
                (0, Some(since)) if since.elapsed() >= SETTLE => break,
                (0, None) => idle_since = Some(tokio::time::Instant::now()),
                (0, Some(_)) => {}
                (_, _) => idle_since = None,
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The last requests' records, then exit.
        crate::event_log::wait_written(EVENT_LOG_FLUSH).await;
        tracing::info!("shutdown: no request in flight, exiting");
        std::process::exit(0);
    }
}
