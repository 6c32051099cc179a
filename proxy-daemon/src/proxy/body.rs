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

use super::{pool::Release, routes::EndpointHealth};

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

/// The answer header that says which of the service's limits refused a
/// request (`pending`, `request_bytes`, `header_bytes`): the client can
/// tell the proxy's refusal from the service's own answer.
pub const OVERFLOW_HEADER: &str = "x-knit-overflow";

/// The answer to a request a limit of its service refused: `status` with
/// [`OVERFLOW_HEADER`]; for a gRPC call the status it understands instead
/// (HTTP 200, trailers only: RESOURCE_EXHAUSTED for a size limit,
/// UNAVAILABLE, which it may retry, for a full queue).
pub fn overflow_response(
    status: StatusCode,
    reason: crate::metrics::Overflow,
    grpc: bool,
    text: &str,
) -> Response<ProxyBody> {
    let mut r = if grpc {
        let mut r = Response::new(empty());
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            "14"
        } else {
            "8"
        };
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static(code));
        if let Ok(v) = HeaderValue::from_str(&format!("knit: {text}")) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        error_response(status, text)
    };
    r.headers_mut()
        .insert(OVERFLOW_HEADER, HeaderValue::from_static(reason.as_str()));
    r
}

/// The answer to a caller that the service's `allowedClients` leaves out:
/// 403, or for a gRPC call PERMISSION_DENIED (HTTP 200, trailers only).
pub fn denied_response(grpc: bool, text: &str) -> Response<ProxyBody> {
    if grpc {
        let mut r = Response::new(empty());
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("7"));
        if let Ok(v) = HeaderValue::from_str(&format!("knit: {text}")) {
            h.insert("grpc-message", v);
        }
        r
    } else {
        error_response(StatusCode::FORBIDDEN, text)
    }
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

/// A response body that keeps its request in flight (and an HTTP/2
/// request's lane taken) until it ends, returns an HTTP/1.1 upstream
/// connection to its pool as it ends, and counts its bytes.
pub struct Guarded {
    inner: ProxyBody,
    _guard: InflightGuard,
    release: Release,
    bytes: Counter,
}

impl Guarded {
    pub fn new(inner: ProxyBody, guard: InflightGuard, release: Release, bytes: Counter) -> Self {
        Self {
            inner,
            _guard: guard,
            release,
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
        let ended = match &r {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if ended && let Release::H1(back) = &mut self.release {
            back.done(cx);
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
    /// Cut off: longer than the service's `maxRequestBytes`.
    too_large: bool,
    /// The client's body failed (bad framing, broke off).
    failed: bool,
}

impl TeeState {
    fn update(&self, f: impl FnOnce(&mut TeeInner)) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
        if g.complete || g.spoiled {
            self.done.notify_waiters();
        }
    }

    /// The body was cut off at the service's `maxRequestBytes`.
    pub fn too_large(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .too_large
    }

    /// The client's body failed: bad framing, or it broke off.
    pub fn failed(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).failed
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
/// replay limit) so that it can be replayed on another endpoint; ends it
/// with an error once it passes `limit` bytes.
pub struct Tee {
    inner: Prefixed,
    state: Arc<TeeState>,
    bytes: Counter,
    /// Bytes that may still pass.
    left: u64,
}

impl Tee {
    /// `limit`: the service's `maxRequestBytes` (`u64::MAX`: none).
    pub fn new(inner: Prefixed, state: Arc<TeeState>, bytes: Counter, limit: u64) -> Self {
        Self {
            inner,
            state,
            bytes,
            left: limit,
        }
    }
}

/// A request body longer than its service's `maxRequestBytes`.
#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than the service's maxRequestBytes")]
pub struct TooLarge;

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
            let n = d.len() as u64;
            if n > self.left {
                // Cut off here: what passed stays sent, this frame is not.
                self.left = 0;
                self.state.update(|t| {
                    t.spoiled = true;
                    t.too_large = true;
                });
                return Poll::Ready(Some(Err(Box::new(TooLarge))));
            }
            self.left -= n;
            self.bytes.inc_by(n);
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => self.state.update(|t| match f.data_ref() {
                Some(d) if t.copy.len() + d.len() <= TEE_LIMIT => {
                    t.copy.extend_from_slice(d);
                    t.complete |= end;
                }
                _ => t.spoiled = true,
            }),
            Poll::Ready(Some(Err(_))) => self.state.update(|t| {
                t.spoiled = true;
                t.failed = true;
            }),
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

/// A request body of which the proxy read the first frames already (to
/// check their framing and size before sending anything): those, then the
/// rest as it comes.
pub struct Prefixed {
    read: std::collections::VecDeque<Frame<Bytes>>,
    read_bytes: u64,
    rest: Incoming,
}

impl Prefixed {
    pub fn new(read: Vec<Frame<Bytes>>, rest: Incoming) -> Self {
        let read_bytes = read
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        Self {
            read: read.into(),
            read_bytes,
            rest,
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(f) = self.read.pop_front() {
            self.read_bytes -= f.data_ref().map_or(0, |d| d.len() as u64);
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }

    /// Exact when the rest's is (a Content-Length body): the upstream gets
    /// the same Content-Length.
    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(rest.lower() + self.read_bytes);
        if let Some(u) = rest.upper() {
            h.set_upper(u + self.read_bytes);
        }
        h
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

/// A body that keeps something (a lane, an open connection) alive until
/// it ends or is dropped.
pub struct Holding<T> {
    inner: ProxyBody,
    _held: T,
}

impl<T> Holding<T> {
    pub fn new(inner: ProxyBody, held: T) -> Self {
        Self { inner, _held: held }
    }
}

impl<T: Unpin> Body for Holding<T> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Overflow;

    #[test]
    fn overflow_answers_say_which_limit() {
        let r = overflow_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Overflow::Pending,
            false,
            "full",
        );
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[OVERFLOW_HEADER], "pending");
        // gRPC: a status it maps right (413 would read as UNKNOWN).
        let r = overflow_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            Overflow::RequestBytes,
            true,
            "big",
        );
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()["grpc-message"], "knit: big");
        assert_eq!(r.headers()[OVERFLOW_HEADER], "request_bytes");
        assert!(r.body().is_end_stream());
        let r = overflow_response(
            StatusCode::SERVICE_UNAVAILABLE,
            Overflow::Pending,
            true,
            "full",
        );
        assert_eq!(r.headers()["grpc-status"], "14");
    }
}
