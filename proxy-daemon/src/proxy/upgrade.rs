//! HTTP/1.1 upgrades (WebSocket and the like): the request goes to one
//! endpoint on a connection of its own; after `101 Switching Protocols` the
//! two sides are spliced byte for byte.
use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode, body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    AliasRoute, Proxy,
    body::{Holding, InflightGuard, ProxyBody, error_response, incoming},
    pool::CONNECT_TIMEOUT,
};

pub async fn forward(
    mut req: Request<Incoming>,
    alias: &AliasRoute,
    proxy: &Arc<Proxy>,
) -> Response<ProxyBody> {
    // An upgraded connection holds a lane and counts as open for as long
    // as it lasts, like any request on its own connection.
    let deadline = alias
        .request_timeout
        .map(|t| tokio::time::Instant::now() + t);
    let lane = match alias.pool.limits.lane(deadline).await {
        Ok(lane) => lane,
        Err(why) => return super::forward::no_lane(alias, why, false),
    };
    let Some(ep) = alias.pick(&[]).cloned() else {
        return error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy endpoint for this service",
        );
    };
    let downstream = hyper::upgrade::on(&mut req);
    let open = alias.pool.open_for_upgrade();
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
    let (mut sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
        Ok(x) => x,
        Err(_) => {
            return error_response(
                StatusCode::BAD_GATEWAY,
                "the service's endpoint broke the connection",
            );
        }
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upgraded upstream connection");
        }
    });
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut up = Request::from_parts(parts, incoming(body));
    *up.uri_mut() = match path.parse() {
        Ok(u) => u,
        Err(_) => return error_response(StatusCode::BAD_REQUEST, "bad request target"),
    };
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
    proxy.success(&ep);
    let held = (lane, open);
    let (parts, body) = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        // An open WebSocket is a request in flight: a drain waits for it.
        let guard = InflightGuard::new(ep.health.clone());
        tokio::spawn(async move {
            let _held = (guard, held);
            match (downstream.await, upstream.await) {
                (Ok(d), Ok(u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        debug!(error = %e, "upgraded connection ended");
                    }
                }
                (d, u) => debug!(down = d.is_ok(), up = u.is_ok(), "upgrade did not complete"),
            }
        });
        let (parts, body) = resp.into_parts();
        (parts, incoming(body))
    } else {
        // Not upgraded: the connection is done once this answer is read.
        let (parts, body) = resp.into_parts();
        (parts, Holding::new(incoming(body), held).boxed())
    };
    Response::from_parts(parts, body)
}
