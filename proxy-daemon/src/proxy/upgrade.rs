//! HTTP/1.1 upgrades. What a service allows, and nothing else:
//!
//! - `websocket` on an `http` service: the request (its head checked, its
//!   hop-by-hop fields stripped like any other's) goes to one endpoint on a
//!   connection of its own; after `101 Switching Protocols` the two sides
//!   are spliced byte for byte. The tunnel holds a lane (`maxConnections`)
//!   and counts as an open connection while it lasts, is closed after the
//!   service's `idleTimeoutSeconds` without a byte either way, and one
//!   client task holds at most half of `maxConnections` of them.
//! - `h2c` is never passed on (it would splice an HTTP/2 connection past
//!   every per-request limit, retry, timeout and metric): the `Upgrade`
//!   and `HTTP2-Settings` fields are stripped and the request is served as
//!   the plain HTTP/1.1 request it also is (RFC 9110 7.8 lets a server
//!   ignore an upgrade).
//! - Any other token (or WebSocket on an `http2` / `grpc` service): 403.
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{
    Request, Response, StatusCode, Version,
    body::Incoming,
    client::conn::http1,
    header::{self, HeaderValue},
};
use hyper_util::rt::TokioIo;
use proxy_config::AppProtocol;
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    AliasRoute, Proxy,
    body::{Holding, InflightGuard, ProxyBody, error_response, incoming, overflow_response},
    forward::{Outcome, strip_hop_by_hop},
    idle::{Activity, Tracked},
    pool::CONNECT_TIMEOUT,
};
use crate::metrics::Overflow;

/// What a request's `Connection: upgrade` + `Upgrade` ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not an upgrade (also: `Upgrade` without `Connection: upgrade`).
    None,
    /// `h2c` among the tokens: stripped, served as HTTP/1.1.
    H2c,
    /// `websocket` alone.
    WebSocket,
    /// Anything else.
    Other,
}

impl Kind {
    pub fn of<B>(req: &Request<B>) -> Self {
        let names_upgrade = req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            });
        if req.version() != Version::HTTP_11 || !names_upgrade {
            return Kind::None;
        }
        let tokens: Vec<String> = req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
            })
            .collect();
        if tokens.is_empty() {
            Kind::None
        } else if tokens.iter().any(|t| t.split('/').next() == Some("h2c")) {
            Kind::H2c
        } else if tokens.len() == 1 && tokens[0] == "websocket" {
            Kind::WebSocket
        } else {
            Kind::Other
        }
    }

    /// The answer to an upgrade the service does not allow.
    pub fn refused(self, protocol: AppProtocol) -> Option<Response<ProxyBody>> {
        let why = match self {
            Kind::Other => "this service allows no upgrade but WebSocket",
            Kind::WebSocket if protocol != AppProtocol::Http => {
                "WebSocket upgrades go only to services with appProtocol http"
            }
            _ => return None,
        };
        let mut r = error_response(StatusCode::FORBIDDEN, why);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Some(r)
    }
}

/// A WebSocket request of client task `client` (its cgroup id; `None`:
/// from another host's daemon, which applied the share at its egress).
pub async fn forward(
    mut req: Request<Incoming>,
    alias: &Arc<AliasRoute>,
    proxy: &Arc<Proxy>,
    target: &super::forward::Target,
    outcome: &mut Outcome,
) -> Response<ProxyBody> {
    let client = match target {
        super::forward::Target::Alias(_, _, task, ..) => Some(*task),
        super::forward::Target::Fixed(_) => None,
    };
    let limits = &alias.pool.limits;
    let tunnel = match client {
        Some(c) => match limits.tunnel(c) {
            Some(t) => Some(t),
            None => {
                alias.counters.overflow(Overflow::ClientShare);
                return overflow_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Overflow::ClientShare,
                    false,
                    "this task holds its share of this service's upgraded connections (half of maxConnections)",
                );
            }
        },
        None => None,
    };
    // An upgraded connection holds a lane and counts as open for as long
    // as it lasts, like any request on its own connection.
    let start = std::time::Instant::now();
    let deadline = alias
        .request_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let lane = match limits.lane(deadline).await {
        Ok(lane) => lane,
        Err(why) => return super::forward::no_lane(alias, why, false),
    };
    let Some(ep) = alias.pick(req.headers(), &[]).cloned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy endpoint for this service",
        );
    };
    outcome.endpoint = Some(ep.addr);
    let downstream = hyper::upgrade::on(&mut req);
    let open = alias.pool.open_for_upgrade();
    // Another host's endpoint of a service with tls: the tunnel too goes
    // over mutual TLS.
    let tls = match &ep.tls {
        None => None,
        Some(server_id) => match super::forward::tls_dial(target, alias, server_id, proxy).await {
            Some(t) => Some(t),
            None => {
                super::tlsdial::count(
                    &proxy.metrics.tls_client_errors,
                    &alias.target,
                    crate::tls::Cause::NoCertificate,
                );
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this task's service has no identity yet to present to the service's \
                     endpoints on other hosts (mutual TLS); is `knit signer` running?",
                );
            }
        },
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep.addr)).await {
        Ok(Ok(s)) => s,
        _ => {
            proxy.failure(alias, &ep);
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service's endpoint did not accept a connection",
            );
        }
    };
    let _ = stream.set_nodelay(true);
    // The tunnel's clock: any byte either way through it.
    let activity = Activity::new();
    let handshake = match &tls {
        None => handshake(Tracked::new(stream, activity.clone())).await,
        Some(t) => match t.wrap(stream).await {
            Ok(s) => handshake(Tracked::new(s, activity.clone())).await,
            Err(_) => {
                proxy.failure(alias, &ep);
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the service's endpoint on another host failed the mutual TLS handshake",
                );
            }
        },
    };
    let (mut sender, conn) = match handshake {
        Ok(x) => x,
        Err(_) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                "the service's endpoint broke the connection",
            );
        }
    };
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    // Hop by hop like any request; then the two fields this hop asks for.
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut up = Request::from_parts(parts, incoming(body));
    *up.uri_mut() = match path.parse() {
        Ok(u) => u,
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "bad request target"),
    };
    let sent_at = std::time::Instant::now();
    let mut resp = match sender.send_request(up).await {
        Ok(r) => r,
        Err(_) => {
            proxy.failure(alias, &ep);
            return error_response(
                StatusCode::BAD_GATEWAY,
                "the service's endpoint closed the connection before answering",
            );
        }
    };
    outcome.upstream = start.elapsed();
    let m = &alias.counters;
    m.code(resp.status().as_u16());
    ep.requests.inc();
    m.latency(sent_at.elapsed().as_secs_f64() * 1000.0, None);
    if resp.status().is_server_error() {
        proxy.failure(alias, &ep);
    } else {
        proxy.success(&ep);
    }
    let held = (lane, open);
    let idle = alias.idle_timeout;
    let (mut parts, body) = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        // An open WebSocket is a request in flight: a drain waits for it.
        let guard = InflightGuard::new(ep.health.clone());
        tokio::spawn(async move {
            let _held = (guard, held, tunnel);
            match (downstream.await, upstream.await) {
                (Ok(d), Ok(u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    let quiet = async {
                        match idle {
                            Some(idle) => activity.idle_for(idle).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        r = tokio::io::copy_bidirectional(&mut d, &mut u) => if let Err(e) = r {
                            debug!(error = %e, "upgraded connection ended");
                        },
                        // Dropping both ends closes them.
                        () = quiet => debug!(?idle, "closing an idle upgraded connection"),
                    }
                }
                (d, u) => debug!(down = d.is_ok(), up = u.is_ok(), "upgrade did not complete"),
            }
        });
        let (parts, body) = resp.into_parts();
        (parts, incoming(body))
    } else {
        // Not upgraded: the connection is done once this answer is read.
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        (parts, Holding::new(incoming(body), (held, tunnel)).boxed())
    };
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body)
}

/// An HTTP/1.1 client handshake on `io`; the connection's driver (to be
/// spawned) keeps upgrades.
async fn handshake<I>(
    io: I,
) -> hyper::Result<(
    http1::SendRequest<ProxyBody>,
    std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
)>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    Ok((
        sender,
        Box::pin(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upgraded upstream connection");
            }
        }),
    ))
}
