//! One request's way through the proxy: check it against its service's
//! limits, pick an endpoint round-robin, send, retry on another endpoint
//! when that is safe, time out, answer errors a client can act on (503
//! nothing healthy or too many waiting, 502 upstream broke, 504 timeout,
//! 413 / 431 too large for the service).
use std::{convert::Infallible, sync::Arc, sync::atomic::Ordering, time::Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode, Uri, Version,
    body::{Body, Incoming},
    header::{self, HeaderValue},
    http::request::Parts,
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use prometheus_client::metrics::counter::Counter;
use proxy_config::AppProtocol;
use tracing::debug;

use super::{
    AliasRoute, Endpoint, Proxy, ProxyEvent,
    access::{self, Client, Record},
    body::{
        Guarded, InflightGuard, ProxyBody, empty, error_response, full, incoming, overflow_response,
    },
    idle::{Activity, Tracked},
    limits::NoLane,
    pool::SendError,
    tlsdial, upgrade,
};
use crate::metrics::Overflow;

/// At most this many retries per request (ECS Service Connect's agent: 2).
const MAX_RETRIES: usize = 2;
/// Bodies up to this size are kept so that a request can be replayed.
const MAX_REPLAY_BODY: usize = 64 * 1024;
/// Largest request head the proxy reads (more: 431), whatever the
/// service's `maxHeaderBytes` (which is at most this).
pub const MAX_HEADER_BYTES: usize = proxy_config::LimitsSpec::DEFAULT_MAX_HEADER_BYTES as usize;
/// gRPC status UNAVAILABLE.
const GRPC_UNAVAILABLE: &[u8] = b"14";

/// Where a connection's requests go.
#[derive(Clone)]
pub enum Target {
    /// The alias the task dialed (by kernel id), looked up per request so
    /// that keep-alive connections follow endpoint changes; and the task's
    /// service, when known; and the client task (its cgroup id), whose
    /// share of the service's upgraded tunnels is capped; and which alias
    /// that id was when the connection came ([`AliasRoute::identity`]): a
    /// deleted service's id, given to another alias later, is not followed;
    /// and the route the connection was accepted under, which its first
    /// request takes (see [`handle`]).
    Alias(
        u32,
        Option<Arc<Client>>,
        u64,
        Arc<str>,
        Arc<arc_swap::ArcSwapOption<AliasRoute>>,
    ),
    /// A fixed route (an ingress listener to its local app).
    Fixed(Arc<AliasRoute>),
}

/// Serve one downstream connection (HTTP/1.1 or HTTP/2, detected).
pub async fn serve_connection<S>(stream: S, target: Target, proxy: Arc<Proxy>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let idle = match &target {
        Target::Alias(id, ..) => proxy
            .routes
            .load()
            .aliases
            .get(id)
            .and_then(|a| a.idle_timeout),
        Target::Fixed(a) => a.idle_timeout,
    };
    proxy.live.fetch_add(1, Ordering::SeqCst);
    let _live = LiveGuard(proxy.clone());
    let activity = Activity::new();
    let svc = {
        let (proxy, activity) = (proxy.clone(), activity.clone());
        service_fn(move |req| {
            let (target, proxy, activity) = (target.clone(), proxy.clone(), activity.clone());
            async move {
                let h1 = req.version() < Version::HTTP_2;
                activity.head_done();
                let mut resp = logged(req, &target, &proxy).await;
                // HTTP/1.1 reads the next head after this answer; HTTP/2
                // streams overlap, and h2 guards its own framing.
                if h1 {
                    activity.await_head();
                }
                // Handed over: this connection ends after this answer, and
                // the client knows to open a new one (to the new daemon).
                if h1 && proxy.is_retiring() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let b = downstream_builder();
    let io = TokioIo::new(Tracked::new(stream, activity.clone()));
    let conn = b.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle_close = async {
        match idle {
            Some(idle) => activity.idle_for(idle).await,
            None => std::future::pending().await,
        }
    };
    // Handed over: once quiet for a moment, finish in-flight work and close
    // (HTTP/2: GOAWAY).
    let retire = async {
        proxy.retired().await;
        activity.idle_for(RETIRE_IDLE).await;
    };
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            debug!(error = %e, "downstream connection");
        },
        // Dropping the connection closes it.
        () = idle_close => debug!(?idle, "closing an idle downstream connection"),
        () = activity.slow_head(HEAD_TIMEOUT) => {
            proxy.metrics.slow_heads.inc();
            debug!("closing a connection whose request head came too slowly");
        }
        () = retire => {
            conn.as_mut().graceful_shutdown();
            if let Err(e) = conn.await {
                debug!(error = %e, "downstream connection (closing, handed over)");
            }
        }
    }
}

/// How long a request to another host waits for its task's identity (a
/// task that just started calls before the signer answered).
const IDENTITY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The mutual TLS of a request of `target` to another host's endpoint of
/// `alias` that must present `server_id`: `None` when the calling task's
/// service has no identity (or the task is unknown).
pub(super) async fn tls_dial(
    target: &Target,
    alias: &Arc<AliasRoute>,
    server_id: &Arc<str>,
    proxy: &Arc<Proxy>,
) -> Option<tlsdial::TlsDial> {
    let Target::Alias(_, Some(client), ..) = target else {
        return None;
    };
    let identity = proxy
        .tls
        .wait_for(
            &alias.target.namespace,
            &client.source.service,
            IDENTITY_WAIT,
        )
        .await?;
    Some(tlsdial::TlsDial {
        identity,
        server_id: server_id.clone(),
        errors: proxy.metrics.tls_client_errors.clone(),
        route: alias.clone(),
        handshakes: proxy.metrics.tls_client_handshakes.clone(),
    })
}

/// A connection from a caller that `allowedClients` leaves out: every
/// request on it is answered 403 (gRPC: PERMISSION_DENIED), then it closes.
pub async fn serve_denied<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let svc = service_fn(|req: Request<Incoming>| async move {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut r = super::body::denied_response(
            grpc,
            "the calling service is not among the clients this service allows (allowedClients)",
        );
        if req.version() < Version::HTTP_2 {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Ok::<_, Infallible>(r)
    });
    let b = downstream_builder();
    let conn = b.serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = tokio::time::timeout(std::time::Duration::from_secs(10), conn)
        .await
        .unwrap_or(Ok(()))
    {
        debug!(error = %e, "a refused caller's connection");
    }
}

/// How the proxy reads downstream connections (HTTP/1.1 or h2c, detected).
fn downstream_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1().max_buf_size(MAX_HEADER_BYTES);
    b.http2().max_header_list_size(MAX_HEADER_BYTES as u32);
    b
}

/// Fuzzing the HTTP edge: `data` as the bytes of a downstream connection,
/// read with the proxy's own server settings, and every request head that
/// parses put through what the proxy does to a head before it picks an
/// endpoint: its size against `maxHeaderBytes`, the access log's path,
/// upgrade detection, hop-by-hop stripping, the authority check and the
/// upstream URI for HTTP/1.1 and HTTP/2. Must never panic. Returns how
/// many requests were seen.
pub fn fuzz_request_head(data: &[u8]) -> usize {
    use tokio::io::AsyncWriteExt;
    thread_local! {
        static RT: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok();
    }
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move {
            let _ = head_bytes(&req);
            let _ = access::path(req.uri(), true);
            let _ = access::path(req.uri(), false);
            let _ = upgrade::Kind::of(&req);
            let _ = bad_head(&req);
            let (mut parts, _body) = req.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let authority = authority_of(&parts).unwrap_or_else(|| "web:8080".into());
            if authority.parse::<hyper::http::uri::Authority>().is_ok() {
                let _ = upstream_uri(&parts, &authority, true);
                let _ = upstream_uri(&parts, &authority, false);
            }
            Ok::<_, Infallible>(Response::new(empty()))
        }
    });
    RT.with(|rt| {
        let Some(rt) = rt else { return };
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let data = data.to_vec();
            let writer = tokio::spawn(async move {
                let _ = client.write_all(&data).await;
                let _ = client.shutdown().await;
                // Keep our end open until the server is done reading.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            });
            let builder = downstream_builder();
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(server), svc);
            let _ = tokio::time::timeout(std::time::Duration::from_millis(200), conn).await;
            writer.abort();
        });
    });
    seen.load(Ordering::Relaxed)
}

/// A request head (HTTP/1.1, or an HTTP/2 preface) must arrive whole within
/// this long of its first byte (slowloris); an idle keep-alive connection is
/// not affected (its service's idle timeout applies).
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection quiet this long is closed once the daemon handed over.
const RETIRE_IDLE: std::time::Duration = std::time::Duration::from_millis(300);

/// Counts a downstream connection as live while it is served.
/// Counts a connection in [`Proxy::live`] until dropped.
pub(super) struct LiveGuard(pub(super) Arc<Proxy>);

impl LiveGuard {
    /// Count one more connection now.
    pub(super) fn count(proxy: &Arc<Proxy>) -> Self {
        proxy.live.fetch_add(1, Ordering::SeqCst);
        Self(proxy.clone())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What became of a request, for its access log line.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) retries: u32,
    pub(super) endpoint: Option<std::net::SocketAddr>,
    /// From the start to the response head.
    pub(super) upstream: std::time::Duration,
    pub(super) request_bytes: u64,
    pub(super) target: Option<(String, String)>,
}

/// [`handle`], with an access log line when the source service (egress)
/// or the target service (ingress) asks for one; it is written when the
/// response body ends.
async fn logged(
    req: Request<Incoming>,
    target: &Target,
    proxy: &Arc<Proxy>,
) -> Response<ProxyBody> {
    let log = match target {
        Target::Alias(_, Some(c), ..) => c
            .source
            .access_log
            .map(|spec| (spec, c.source.service.clone(), "egress")),
        Target::Fixed(route) => route
            .access_log
            .map(|spec| (spec, "-".to_string(), "ingress")),
        Target::Alias(_, None, ..) => None,
    };
    let Some((spec, source, direction)) = log else {
        return handle(req, target, proxy, &mut Outcome::default()).await;
    };
    let started = std::time::SystemTime::now();
    let t0 = Instant::now();
    let method = req.method().to_string();
    let path = access::path(req.uri(), spec.include_query);
    let protocol = match req.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut outcome = Outcome::default();
    let resp = handle(req, target, proxy, &mut outcome).await;
    let (target_service, target_discovery) = outcome.target.take().unwrap_or_default();
    let record = Record {
        spec,
        started,
        source,
        target_service,
        target_discovery,
        direction,
        method,
        path,
        protocol,
        request_bytes: outcome.request_bytes,
        status: resp.status().as_u16(),
        retries: outcome.retries,
        endpoint: outcome.endpoint.map(|a| a.to_string()).unwrap_or_default(),
        upstream: outcome.upstream,
    };
    let (parts, body) = resp.into_parts();
    let body = super::body::Logged::new(body, record, t0, proxy.clone()).boxed();
    Response::from_parts(parts, body)
}

async fn handle(
    req: Request<Incoming>,
    target: &Target,
    proxy: &Arc<Proxy>,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    let alias = match target {
        Target::Alias(id, _, _, identity, accepted) => {
            // The first request takes the route the connection was
            // accepted under: a task that connected while the alias was
            // routed is served even if the alias left the table in the
            // moment since (deleted: its tasks drain, and serve it).
            let first = accepted.swap(None);
            let current = proxy
                .routes
                .load()
                .aliases
                .get(id)
                .filter(|a| a.identity == *identity)
                .cloned();
            match current.or(first) {
                Some(a) => a,
                // Deleted (or its id is another alias's now): this
                // connection is done; a new one dials whatever the name
                // is now.
                None => {
                    let mut r = error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this service is no longer routed",
                    );
                    if req.version() < hyper::Version::HTTP_2 {
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    return r;
                }
            }
        }
        Target::Fixed(a) => a.clone(),
    };
    outcome.target = Some((alias.service.clone(), alias.discovery_name.clone()));
    if let Target::Alias(_, Some(client), ..) = target {
        client.edge.inc();
        client.target.requests.inc();
    }
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // allowedClients, on the caller's host: the kernel said which task
    // connected (the target's host checks again, by certificate).
    if let Target::Alias(_, client, ..) = target
        && !alias.authorize(
            client.as_ref().map(|c| c.source.service.as_str()),
            "egress",
            &proxy.metrics.authorization_denied,
        )
    {
        return super::body::denied_response(
            grpc,
            "this task's service is not among the clients this service allows (allowedClients)",
        );
    }
    // Requests tasks send (egress); an ingress listener's are counted where
    // they came from.
    if matches!(target, Target::Alias(..)) {
        alias.counters.requests.inc();
        if grpc {
            alias.counters.grpc_requests.inc();
        }
    }
    let h1 = req.version() < Version::HTTP_2;
    let limits = &alias.pool.limits;
    let max_head = limits.max_header_bytes();
    // Every request's head is checked the same way, an upgrade's too.
    if let Some(why) = bad_head(&req) {
        return bad_request(why, h1);
    }
    // At the default the parser's own limit (the same size) applies.
    if max_head < MAX_HEADER_BYTES && head_bytes(&req) > max_head {
        return too_large(&alias, Overflow::HeaderBytes, grpc, h1);
    }
    let upgrade = upgrade::Kind::of(&req);
    if let Some(refused) = upgrade.refused(alias.protocol) {
        return refused;
    }
    let max_body = limits.max_request_bytes();
    // A declared length (Content-Length) is checked before anything is sent.
    if max_body.is_some_and(|max| req.body().size_hint().lower() > max) {
        return too_large(&alias, Overflow::RequestBytes, grpc, h1);
    }
    if upgrade == upgrade::Kind::WebSocket {
        // A WebSocket handshake has no body: one would be read by nobody
        // (or smuggled into the tunnel).
        if !req.body().is_end_stream() {
            return bad_request("an upgrade request carries no body", h1);
        }
        return upgrade::forward(req, &alias, proxy, target, outcome).await;
    }
    let version = req.version();
    let (mut parts, body) = req.into_parts();
    // `Upgrade: h2c` (and any upgrade an HTTP/2 service gets) goes no
    // further: the request is served as the HTTP/1.1 request it also is.
    strip_hop_by_hop(&mut parts.headers);
    let mut body = match ReqBody::read(&parts, body, max_body).await {
        Ok(b) => b,
        Err(BodyRefused::TooLarge) => return too_large(&alias, Overflow::RequestBytes, grpc, h1),
        Err(BodyRefused::Malformed) => return bad_body(h1),
    };
    outcome.request_bytes = match &body {
        ReqBody::Buffered(b) => b.len() as u64,
        ReqBody::Streaming(..) => parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
    };
    let start = Instant::now();
    alias.budget.request(start);
    let deadline = alias
        .request_timeout
        .map(|t| tokio::time::Instant::from_std(start + t));
    let h2 = matches!(alias.protocol, AppProtocol::Http2 | AppProtocol::Grpc);
    // Endpoints tried so far: an attempt, then at most MAX_RETRIES more.
    let mut tried = [0u32; MAX_RETRIES + 1];
    let mut attempts = 0;
    let mut retries = 0;
    loop {
        // A lane first: a request that waits for one picks its endpoint
        // when it can go.
        let lane = match alias.pool.limits.lane(deadline).await {
            Ok(lane) => lane,
            Err(why) => return no_lane(&alias, why, grpc),
        };
        let Some(ep) = alias.pick(&parts.headers, &tried[..attempts]).cloned() else {
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy endpoint for this service",
            );
        };
        // Every next attempt went through `may_retry` (at most
        // MAX_RETRIES); `min` keeps the index in bounds whatever happens.
        tried[attempts.min(MAX_RETRIES)] = ep.backend_id;
        attempts = (attempts + 1).min(MAX_RETRIES + 1);
        outcome.endpoint = Some(ep.addr);
        outcome.retries = retries as u32;
        let mut may_retry = |replay_ok: bool| {
            if !(replay_ok && retries < MAX_RETRIES) {
                return false;
            }
            if !alias.budget.try_retry(Instant::now()) {
                // Would have retried: the service's retry budget said no.
                alias.counters.budget_exhausted.inc();
                return false;
            }
            retries += 1;
            alias.counters.retries.inc();
            true
        };
        // Another host's endpoint of a service with tls: mutual TLS with
        // the calling task's identity.
        let tls = match &ep.tls {
            None => None,
            Some(server_id) => match tls_dial(target, &alias, server_id, proxy).await {
                Some(t) => Some(t),
                None => {
                    tlsdial::count(
                        &proxy.metrics.tls_client_errors,
                        &alias.target,
                        crate::tls::Cause::NoCertificate,
                    );
                    // Not the endpoint's fault: another (a local one) may do.
                    if may_retry(true) {
                        continue;
                    }
                    return error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this task's service has no identity yet to present to the service's \
                         endpoints on other hosts (mutual TLS); is `knit signer` running?",
                    );
                }
            },
        };
        let acquired = within(
            deadline,
            alias.pool.acquire(ep.addr, h2, lane, tls.as_ref()),
        )
        .await;
        let (mut sender, reused) = match acquired {
            None => return timeout_response(),
            Some(Err(e)) => {
                debug!(service = %alias.service, endpoint = %ep.addr, error = %e, "connect failed");
                proxy.failure(&alias, &ep);
                // Nothing was sent: any request may go elsewhere.
                if may_retry(true) {
                    continue;
                }
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no endpoint of this service accepted a connection",
                );
            }
            Some(Ok(s)) => s,
        };
        let target_bytes = alias.counters.bytes.clone();
        let Some(b) = body.for_attempt(&target_bytes) else {
            return error_response(StatusCode::BAD_GATEWAY, "the request could not be replayed");
        };
        let guard = InflightGuard::new(ep.health.clone());
        let req = upstream_request(&parts, b, &alias, h2);
        let sent_at = Instant::now();
        let mut sent = within(deadline, sender.send(req)).await;
        if let Some(Err(SendError::NotSent(req, e))) = sent {
            // A pooled connection the endpoint had closed: not a failure of
            // the endpoint; the request never left, so send it on a new one.
            debug!(endpoint = %ep.addr, reused, error = %e, "stale pooled connection");
            sent = match within(
                deadline,
                alias.pool.reconnect(ep.addr, &mut sender, tls.as_ref()),
            )
            .await
            {
                None => None,
                Some(Ok(())) => within(deadline, sender.send(*req)).await,
                Some(Err(_)) => Some(Err(SendError::Failed(e))),
            };
        }
        match sent {
            None => {
                proxy.failure(&alias, &ep);
                return timeout_response();
            }
            Some(Err(SendError::NotSent(_, e) | SendError::Failed(e))) => {
                // The body passed maxRequestBytes and was cut off before
                // any answer: the client's doing, and it can act on it.
                if body.too_large() {
                    return too_large(&alias, Overflow::RequestBytes, grpc, h1);
                }
                // The client's body broke off or its framing was bad after
                // some of it went: the client's error; the endpoint got no
                // whole request (its connection is dropped mid-body).
                if e.is_user() && body.client_failed() {
                    return bad_body(h1);
                }
                debug!(service = %alias.service, endpoint = %ep.addr, error = %e, "upstream failed before answering");
                // The client's own body failing (an aborted upload) is not the
                // endpoint's fault, nor is a pooled connection it closed.
                if !(e.is_user() || reused && e.is_incomplete_message()) {
                    proxy.failure(&alias, &ep);
                }
                if may_retry(body.replayable() && idempotent(&parts.method)) {
                    continue;
                }
                return bad_gateway_before_answer();
            }
            Some(Ok(resp)) => {
                outcome.upstream = start.elapsed();
                let m = &alias.counters;
                let ms = sent_at.elapsed().as_secs_f64() * 1000.0;
                m.code(resp.status().as_u16());
                ep.requests.inc();
                m.latency(ms, Some(&ep.health.latency));
                if let Target::Alias(_, Some(client), ..) = target {
                    client.target.answered(resp.status().as_u16(), ms);
                }
                let unavailable = resp.status() == StatusCode::SERVICE_UNAVAILABLE
                    || resp.headers().get("grpc-status").map(HeaderValue::as_bytes)
                        == Some(GRPC_UNAVAILABLE);
                if resp.status().is_server_error() || unavailable {
                    proxy.failure(&alias, &ep);
                } else {
                    proxy.success(&ep);
                }
                // A streamed request (gRPC always is) may still be replayed
                // when its whole body was seen and kept by the tee.
                // 503 / UNAVAILABLE: the endpoint did not take the request,
                // but only idempotent methods and gRPC calls are replayed.
                let safe = idempotent(&parts.method) || grpc;
                let replay = unavailable && safe && body.settle().await;
                if unavailable && may_retry(replay) {
                    drop(alias.pool.release(ep.addr, sender, tls.as_ref()));
                    continue;
                }
                let release = alias.pool.release(ep.addr, sender, tls.as_ref());
                return downstream_response(resp, version, guard, release, target_bytes);
            }
        }
    }
}

/// 400 for a request whose head a proxy must not pass on (RFC 9112 3.2,
/// RFC 9113 8.3.1); HTTP/1.1 connections close after it.
fn bad_request(why: &str, h1: bool) -> Response<ProxyBody> {
    let mut r = error_response(StatusCode::BAD_REQUEST, why);
    if h1 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// 400 for a body whose framing was bad (an invalid chunk size) or that
/// broke off: the client's error, never the endpoint's.
fn bad_body(h1: bool) -> Response<ProxyBody> {
    bad_request(
        "the request body is malformed (bad chunked framing) or was cut short",
        h1,
    )
}

/// Why a request head is refused before anything else: two Host fields
/// (a backend might route by another than the proxy did), an HTTP/2
/// request whose Host differs from its `:authority`, a Host that is not an
/// authority.
pub(super) fn bad_head<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("the request has more than one Host header");
    }
    if req.version() == Version::HTTP_2
        && let (Some(h), Some(a)) = (host, req.uri().authority())
        && h.as_bytes() != a.as_str().as_bytes()
    {
        return Some("the Host header and :authority differ");
    }
    let authority = host
        .map(|h| h.to_str().map(str::to_string))
        .or_else(|| req.uri().authority().map(|a| Ok(a.to_string())));
    match authority {
        Some(Ok(a)) if a.parse::<hyper::http::uri::Authority>().is_ok() => None,
        None => None,
        _ => Some("the Host header is not a valid authority"),
    }
}

/// The answer when a request got no lane: 503 when too many wait
/// already, 504 when its per-request timeout passed while it waited.
pub(super) fn no_lane(alias: &AliasRoute, why: NoLane, grpc: bool) -> Response<ProxyBody> {
    match why {
        NoLane::TimedOut => timeout_response(),
        NoLane::Overflow => {
            alias.counters.overflow(Overflow::Pending);
            overflow_response(
                StatusCode::SERVICE_UNAVAILABLE,
                Overflow::Pending,
                grpc,
                "too many requests to this service are waiting; try again later",
            )
        }
    }
}

fn bad_gateway_before_answer() -> Response<ProxyBody> {
    error_response(
        StatusCode::BAD_GATEWAY,
        "the service's endpoint closed the connection before answering",
    )
}

/// 413 (`maxRequestBytes`) or 431 (`maxHeaderBytes`); gRPC:
/// RESOURCE_EXHAUSTED. The rest of the request body is not read, so an
/// HTTP/1.1 connection closes after this answer, and says so.
fn too_large(alias: &AliasRoute, what: Overflow, grpc: bool, h1: bool) -> Response<ProxyBody> {
    alias.counters.overflow(what);
    let (status, text) = match what {
        Overflow::HeaderBytes => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "the request head is larger than this service accepts",
        ),
        _ => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is larger than this service accepts",
        ),
    };
    let mut r = overflow_response(status, what, grpc, text);
    if h1 {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// The request head's size as HTTP/1.1 carries it: the request line, one
/// `name: value` line per field, the empty line. HTTP/2 requests are
/// measured the same way, their `:authority` as a Host field.
fn head_bytes<B>(req: &Request<B>) -> usize {
    const CRLF: usize = 2;
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    // "GET /x HTTP/1.1\r\n"
    let mut n = req.method().as_str().len() + 1 + target + 1 + 8 + CRLF;
    for (name, value) in req.headers() {
        n += name.as_str().len() + 2 + value.len() + CRLF;
    }
    if !req.headers().contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
    {
        n += "host: ".len() + a.as_str().len() + CRLF;
    }
    n + CRLF
}

async fn within<F: Future>(deadline: Option<tokio::time::Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

fn timeout_response() -> Response<ProxyBody> {
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        "the service did not answer within its per-request timeout",
    )
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The URI sent upstream: absolute for HTTP/2 (its `:authority`), the path
/// and query alone for HTTP/1.1 (the request's own URI when it is that
/// already, as HTTP/1.1 requests' are: no copy).
fn upstream_uri(parts: &Parts, authority: &str, h2: bool) -> Uri {
    if !h2
        && parts.uri.scheme().is_none()
        && parts.uri.authority().is_none()
        && parts.uri.path().starts_with('/')
    {
        return parts.uri.clone();
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if h2 {
        Uri::try_from(format!("http://{authority}{path}")).unwrap_or_else(|_| parts.uri.clone())
    } else {
        Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"))
    }
}

/// The request's authority: its Host header, else the URI's (HTTP/2).
fn authority_of(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
}

/// The request body: kept whole when small (it can be replayed), else
/// streamed once, with a copy of its first 64 KiB kept by a tee that also
/// cuts it off past the service's `maxRequestBytes` (`u64::MAX`: none).
enum ReqBody {
    Buffered(Bytes),
    Streaming(
        Option<super::body::Prefixed>,
        Arc<super::body::TeeState>,
        u64,
    ),
}

/// Why a request body was refused before anything went upstream.
enum BodyRefused {
    /// Longer than `maxRequestBytes`: 413.
    TooLarge,
    /// Bad framing, or it broke off: 400.
    Malformed,
}

/// How long the proxy waits for a streamed body's first frame, and then
/// for each next one, before it starts sending upstream: long enough that
/// a body sent with its head is read (and its framing checked) before
/// anything leaves; short enough that a client streaming slowly is not
/// held up.
const FIRST_FRAME_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const NEXT_FRAME_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

impl ReqBody {
    /// `max`: the service's `maxRequestBytes`. A body with a declared
    /// length was checked against it already. Of a chunked body, the first
    /// 64 KiB that are at hand are read before anything is sent: bad
    /// framing there (an invalid chunk size) or a body past the limit is
    /// refused with nothing sent upstream; a body that ends within them is
    /// kept whole (replayable).
    async fn read(
        parts: &Parts,
        mut body: Incoming,
        max: Option<u64>,
    ) -> Result<Self, BodyRefused> {
        let limit = max.unwrap_or(u64::MAX);
        if body.is_end_stream() {
            return Ok(ReqBody::Buffered(Bytes::new()));
        }
        // gRPC streams stay streams, whatever their first frames look like.
        if parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
        {
            let b = super::body::Prefixed::new(Vec::new(), body);
            return Ok(ReqBody::Streaming(Some(b), Default::default(), limit));
        }
        // A declared length has no framing to get wrong (and was checked
        // against the limit): a small body is read whole (replayable), a
        // large one streamed at once. HTTP/2 frames its bodies itself. Only
        // an HTTP/1.1 body without a length (chunked) is pre-read below, to
        // refuse bad framing before anything goes upstream.
        let declared = body.size_hint().exact();
        if declared.is_some_and(|n| n <= MAX_REPLAY_BODY as u64) {
            return match http_body_util::Limited::new(body, MAX_REPLAY_BODY)
                .collect()
                .await
            {
                Ok(c) => Ok(ReqBody::Buffered(c.to_bytes())),
                Err(_) => Err(BodyRefused::Malformed),
            };
        }
        if declared.is_some() || parts.version == Version::HTTP_2 {
            let b = super::body::Prefixed::new(Vec::new(), body);
            return Ok(ReqBody::Streaming(Some(b), Default::default(), limit));
        }
        let mut frames = Vec::new();
        let (mut seen, mut trailers) = (0usize, false);
        let mut wait = FIRST_FRAME_WAIT;
        while seen <= MAX_REPLAY_BODY && !body.is_end_stream() && !trailers {
            let f = match tokio::time::timeout(wait, body.frame()).await {
                // Not at hand: stream from here.
                Err(_) => break,
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(BodyRefused::Malformed),
                Ok(Some(Ok(f))) => f,
            };
            wait = NEXT_FRAME_WAIT;
            if let Some(d) = f.data_ref() {
                seen += d.len();
                if seen as u64 > limit {
                    return Err(BodyRefused::TooLarge);
                }
            } else {
                trailers = true;
            }
            frames.push(f);
        }
        if body.is_end_stream() && !trailers && seen <= MAX_REPLAY_BODY {
            let mut all = bytes::BytesMut::with_capacity(seen);
            for f in frames {
                if let Ok(d) = f.into_data() {
                    all.extend_from_slice(&d);
                }
            }
            return Ok(ReqBody::Buffered(all.freeze()));
        }
        let b = super::body::Prefixed::new(frames, body);
        Ok(ReqBody::Streaming(Some(b), Default::default(), limit))
    }

    /// The streamed body failed on the client's side (bad framing, broke
    /// off), not by the service's limit.
    fn client_failed(&self) -> bool {
        matches!(self, ReqBody::Streaming(_, tee, _) if tee.failed() && !tee.too_large())
    }

    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }

    /// The body for one attempt; its bytes are counted into `bytes`.
    fn for_attempt(&mut self, bytes: &Counter) -> Option<ProxyBody> {
        match self {
            ReqBody::Buffered(b) if b.is_empty() => Some(empty()),
            ReqBody::Buffered(b) => {
                bytes.inc_by(b.len() as u64);
                Some(full(b.clone()))
            }
            ReqBody::Streaming(b, tee, limit) => b
                .take()
                .map(|b| super::body::Tee::new(b, tee.clone(), bytes.clone(), *limit).boxed()),
        }
    }

    /// The streamed body was cut off at `maxRequestBytes`.
    fn too_large(&self) -> bool {
        matches!(self, ReqBody::Streaming(_, tee, _) if tee.too_large())
    }

    /// After a retriable answer: whether the request can be sent again. A
    /// streamed body can when the tee saw all of it (waiting briefly for
    /// its end, which may race the answer).
    async fn settle(&mut self) -> bool {
        let ReqBody::Streaming(_, tee, _) = self else {
            return true;
        };
        match tee.settled(std::time::Duration::from_millis(100)).await {
            Some(copy) => {
                *self = ReqBody::Buffered(copy);
                true
            }
            None => false,
        }
    }
}

/// Headers that belong to one hop, never forwarded (RFC 9110 7.6.1).
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
        .collect();
    for n in named {
        // A client cannot make the proxy drop what the request needs.
        if n != "host" && n != "content-length" {
            h.remove(n.as_str());
        }
    }
    for n in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        // Only meaningful with `Upgrade: h2c`, which is never passed on.
        "http2-settings",
    ] {
        h.remove(n);
    }
    if h.get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        h.remove(header::TE);
    }
}

fn upstream_request(
    parts: &Parts,
    body: ProxyBody,
    alias: &AliasRoute,
    h2: bool,
) -> Request<ProxyBody> {
    // Needed for HTTP/2's `:authority`, or a Host to add; not otherwise
    // (no copy of it per request).
    let authority = if h2 || !parts.headers.contains_key(header::HOST) {
        authority_of(parts).unwrap_or_else(|| format!("{}:{}", alias.dns_name, alias.port))
    } else {
        String::new()
    };
    let b = Request::builder()
        .method(parts.method.clone())
        .version(if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        })
        .uri(upstream_uri(parts, &authority, h2));
    // A body without a length goes chunked whatever the method (hyper
    // would send a GET's or HEAD's as no body at all).
    let unsized_body = !body.is_end_stream() && body.size_hint().exact().is_none();
    let mut req = b.body(body).unwrap_or_else(|_| Request::new(empty()));
    *req.headers_mut() = parts.headers.clone();
    if !h2 && unsized_body && !req.headers().contains_key(header::CONTENT_LENGTH) {
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    if h2 {
        req.headers_mut().remove(header::HOST);
    } else {
        // HTTP/2 may split cookies over several fields; HTTP/1.1 servers
        // expect one (RFC 9113 8.2.3).
        let cookies = parts.headers.get_all(header::COOKIE);
        if cookies.iter().nth(1).is_some() {
            let joined: Vec<&[u8]> = cookies.iter().map(HeaderValue::as_bytes).collect();
            if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
                req.headers_mut().insert(header::COOKIE, v);
            }
        }
    }
    if !h2
        && !req.headers().contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&authority)
    {
        req.headers_mut().insert(header::HOST, v);
    }
    req
}

fn downstream_response(
    resp: Response<Incoming>,
    version: Version,
    guard: InflightGuard,
    release: super::pool::Release,
    bytes: Counter,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = version;
    Response::from_parts(
        parts,
        Guarded::new(incoming(body), guard, release, bytes).boxed(),
    )
}

impl Proxy {
    /// A 5xx or a failed connect: one more in a row for the endpoint.
    pub(super) fn failure(&self, alias: &AliasRoute, ep: &Endpoint) {
        let n = ep
            .health
            .consecutive_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        // Once, as the count crosses the threshold; the monitor re-checks
        // every tick anyway.
        if n == alias.failure_threshold {
            let _ = self.events.send(ProxyEvent::Failing {
                backend_id: ep.backend_id,
            });
        }
    }

    pub(super) fn success(&self, ep: &Endpoint) {
        ep.health.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_bytes_counts_as_http1_sends_it() {
        let wire = "GET /a?b=1 HTTP/1.1\r\nhost: web\r\nx-big: aaaa\r\n\r\n";
        let req = Request::get("/a?b=1")
            .header("host", "web")
            .header("x-big", "aaaa")
            .body(())
            .unwrap_or_default();
        assert_eq!(head_bytes(&req), wire.len());
        // HTTP/2: the authority counts as a Host field.
        let req = Request::get("http://web/a?b=1")
            .header("x-big", "aaaa")
            .body(())
            .unwrap_or_default();
        assert_eq!(head_bytes(&req), wire.len());
    }
}
