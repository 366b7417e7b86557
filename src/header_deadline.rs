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
//! HTTP/2 connections multiplex many requests and are left to Pingora's `h2_idle_timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

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
            return self.inner.process_new(stream, shutdown).await;
        }
        let clock = Arc::new(HeadClock {
            accepted: Instant::now(),
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
