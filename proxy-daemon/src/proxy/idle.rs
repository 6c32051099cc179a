//! Idle timeouts for downstream connections: a connection that moves no
//! byte either way for the service's `idleTimeoutSeconds` is closed.
use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// Milliseconds since `base` of the last byte moved; and the slow-head
/// guard: when the first byte of a request head arrived.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    last_ms: AtomicU64,
    /// [`HEAD_ARMED`]: waiting for a request head; [`HEAD_DISARMED`]: a
    /// request is being served; else 1 + the ms its head's first byte came.
    head: AtomicU64,
}

const HEAD_DISARMED: u64 = 0;
const HEAD_ARMED: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
            head: AtomicU64::new(HEAD_ARMED),
        })
    }

    fn touch(&self) {
        self.last_ms
            .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Bytes came in: if we wait for a head, its clock starts now. An
    /// HTTP/2 connection (its preface first) is left to h2's own framing:
    /// idle h2 connections with no stream are normal (gRPC channels).
    fn read_some(&self, first: bool, bytes: &[u8]) {
        if first && bytes.starts_with(b"PRI ") {
            self.head.store(HEAD_DISARMED, Ordering::Relaxed);
            return;
        }
        let now = 1 + self.base.elapsed().as_millis() as u64;
        let _ = self
            .head
            .compare_exchange(HEAD_ARMED, now, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// A whole request head arrived: the guard rests while it is served.
    pub fn head_done(&self) {
        self.head.store(HEAD_DISARMED, Ordering::Relaxed);
    }

    /// The request was answered: the next bytes start the next head.
    pub fn await_head(&self) {
        self.head.store(HEAD_ARMED, Ordering::Relaxed);
    }

    /// Resolves once a request head has been arriving for longer than
    /// `limit` without being complete (slowloris): the connection is closed.
    /// Idle keep-alive connections (no byte of a next request) never are.
    pub async fn slow_head(&self, limit: Duration) {
        loop {
            let h = self.head.load(Ordering::Relaxed);
            if h == HEAD_ARMED || h == HEAD_DISARMED {
                // Nothing started: look again within the limit's resolution.
                tokio::time::sleep(limit / 4).await;
                continue;
            }
            let due = self.base + Duration::from_millis(h - 1) + limit;
            if Instant::now() >= due && self.head.load(Ordering::Relaxed) == h {
                return;
            }
            tokio::time::sleep_until(due.max(Instant::now() + limit / 8)).await;
        }
    }

    /// Resolves once nothing has moved for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// A stream that records when bytes last moved.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// No byte read yet.
    fresh: bool,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            fresh: true,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
            let first = std::mem::replace(&mut self.fresh, false);
            self.activity.read_some(first, &buf.filled()[before..]);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_caught_and_a_quiet_connection_is_not() {
        let limit = Duration::from_secs(10);
        let a = Activity::new();
        // Idle: no head started, nothing due.
        let idle = tokio::time::timeout(Duration::from_secs(60), a.slow_head(limit)).await;
        assert!(idle.is_err());
        // Bytes of a head, never finished: due after the limit.
        a.read_some(true, b"GET / HT");
        let t0 = Instant::now();
        a.slow_head(limit).await;
        assert!(t0.elapsed() >= limit - Duration::from_millis(1));
        // A head finished in time disarms the guard.
        a.await_head();
        a.read_some(false, b"GET / HTTP/1.1\r\n\r\n");
        a.head_done();
        let served = tokio::time::timeout(Duration::from_secs(60), a.slow_head(limit)).await;
        assert!(served.is_err());
        // HTTP/2: no guard.
        let h2 = Activity::new();
        h2.read_some(true, b"PRI * HTTP/2.0\r\n");
        let quiet = tokio::time::timeout(Duration::from_secs(60), h2.slow_head(limit)).await;
        assert!(quiet.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_waits_for_quiet() {
        let a = Activity::new();
        let t0 = Instant::now();
        a.idle_for(Duration::from_secs(5)).await;
        assert!(t0.elapsed() >= Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(1)).await;
        a.touch();
        let t1 = Instant::now();
        a.idle_for(Duration::from_secs(5)).await;
        assert!(t1.elapsed() >= Duration::from_secs(5));
    }
}
