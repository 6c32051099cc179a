//! Bodies and small response helpers shared by the proxy's paths.
use std::{
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::{
    Response, StatusCode,
    body::{Body, Frame, Incoming, SizeHint},
    header::{CONTENT_TYPE, HeaderValue},
};
use prometheus_client::metrics::counter::Counter;

use super::routes::EndpointHealth;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the proxy sends, either way.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn incoming(b: Incoming) -> ProxyBody {
    b.map_err(BoxError::from).boxed()
}

/// An answer the proxy makes itself. The text says what a client can act
/// on; internals stay in the daemon's log.
pub fn error_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("knit: {text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Counts a request as in flight on its endpoint until dropped.
#[derive(Debug)]
pub struct InflightGuard(Arc<EndpointHealth>);

impl InflightGuard {
    pub fn new(h: Arc<EndpointHealth>) -> Self {
        h.inflight.fetch_add(1, Ordering::Relaxed);
        Self(h)
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it ends, and
/// counts its bytes.
pub struct Guarded {
    inner: ProxyBody,
    _guard: InflightGuard,
    bytes: Counter,
}

impl Guarded {
    pub fn new(inner: ProxyBody, guard: InflightGuard, bytes: Counter) -> Self {
        Self {
            inner,
            _guard: guard,
            bytes,
        }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes.inc_by(d.len() as u64);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a [`Tee`] saw of a request body.
#[derive(Default)]
pub struct TeeState {
    inner: std::sync::Mutex<TeeInner>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct TeeInner {
    copy: bytes::BytesMut,
    /// The body ended and `copy` holds all of it.
    complete: bool,
    /// Too big, trailers, an error, or dropped early: never replayable.
    spoiled: bool,
}

impl TeeState {
    fn update(&self, f: impl FnOnce(&mut TeeInner)) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
        if g.complete || g.spoiled {
            self.done.notify_waiters();
        }
    }

    /// The whole body, once it is known (waiting at most `wait`).
    pub async fn settled(&self, wait: std::time::Duration) -> Option<Bytes> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.done.notified();
            {
                let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
                if g.spoiled {
                    return None;
                }
                if g.complete {
                    return Some(g.copy.clone().freeze());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Streams a request body upstream and keeps a copy of it (up to the
/// replay limit) so that it can be replayed on another endpoint.
pub struct Tee {
    inner: Incoming,
    state: Arc<TeeState>,
    bytes: Counter,
}

impl Tee {
    pub fn new(inner: Incoming, state: Arc<TeeState>, bytes: Counter) -> Self {
        Self {
            inner,
            state,
            bytes,
        }
    }
}

const TEE_LIMIT: usize = 64 * 1024;

impl Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let end = self.inner.is_end_stream();
        if let Poll::Ready(Some(Ok(f))) = &r
            && let Some(d) = f.data_ref()
        {
            self.bytes.inc_by(d.len() as u64);
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => self.state.update(|t| match f.data_ref() {
                Some(d) if t.copy.len() + d.len() <= TEE_LIMIT => {
                    t.copy.extend_from_slice(d);
                    t.complete |= end;
                }
                _ => t.spoiled = true,
            }),
            Poll::Ready(Some(Err(_))) => self.state.update(|t| t.spoiled = true),
            Poll::Ready(None) => self.state.update(|t| t.complete = true),
            Poll::Pending => {}
        }
        r.map(|o| o.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped before its end (the upstream stopped reading): incomplete.
        self.state.update(|t| t.spoiled |= !t.complete);
    }
}

/// A response body that writes its request's access log line when it ends
/// (or is dropped: the client went away), with the bytes it carried.
pub struct Logged {
    inner: ProxyBody,
    record: Option<super::access::Record>,
    started: std::time::Instant,
    bytes: u64,
    proxy: Arc<super::Proxy>,
}

impl Logged {
    pub fn new(
        inner: ProxyBody,
        record: super::access::Record,
        started: std::time::Instant,
        proxy: Arc<super::Proxy>,
    ) -> Self {
        Self {
            inner,
            record: Some(record),
            started,
            bytes: 0,
            proxy,
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.record.take() {
            self.proxy
                .access_log
                .emit(&r, self.bytes, self.started.elapsed());
        }
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            Poll::Ready(None) => self.finish(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}
