//! The admin HTTP listener (loopback by default): `/` (the live dashboard,
//! one self-contained page built into the binary), `/metrics` (Prometheus
//! text), `/api/v1/{services,endpoints,status,stats}` (JSON), `/healthz`,
//! `/readyz`, `/api/v1/history` (the last 15 minutes per alias). Read-only: every change goes through the CLI's root-only
//! unix socket.
use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::read::Reader;
use crate::proxy::Proxy;

/// The dashboard: HTML, CSS and script in one file, no outside assets.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Every answer comes from the published read model and live counters
/// ([`Reader`]): nothing here waits for the engine.
pub async fn serve(listener: TcpListener, reader: Arc<Reader>, proxy: Arc<Proxy>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "admin accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (reader, proxy) = (reader.clone(), proxy.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let (reader, proxy) = (reader.clone(), proxy.clone());
                async move { Ok::<_, Infallible>(handle(req, &reader, &proxy)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection");
            }
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json<T: Serialize>(v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(s) => text(StatusCode::OK, "application/json", s),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}

fn handle(req: Request<Incoming>, reader: &Reader, proxy: &Proxy) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "the admin API is read-only; change things with the knit CLI\n".into(),
        );
    }
    let path = req.uri().path();
    let known = [
        "/",
        "/index.html",
        "/metrics",
        "/healthz",
        "/readyz",
        "/api/v1/services",
        "/api/v1/endpoints",
        "/api/v1/status",
        "/api/v1/stats",
        "/api/v1/history",
    ];
    proxy
        .metrics
        .admin_requests
        .get_or_create(&crate::metrics::PathLabels {
            path: if known.contains(&path) { path } else { "other" }.to_string(),
        })
        .inc();
    match path {
        "/" | "/index.html" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            DASHBOARD.to_string(),
        ),
        "/metrics" => {
            let snap = reader.metrics_snapshot();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(&proxy.metrics, snap),
            )
        }
        "/healthz" | "/readyz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/api/v1/services" => json(&reader.service_rows()),
        "/api/v1/endpoints" => json(&reader.endpoint_rows(None)),
        "/api/v1/status" => match reader.status() {
            Some(s) => json(&s),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "the daemon is still starting\n".into(),
            ),
        },
        "/api/v1/stats" => json(&reader.stats()),
        "/api/v1/history" => json(&reader.history.report()),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /, /metrics, /api/v1/services, /api/v1/endpoints, /api/v1/status, /api/v1/stats, /api/v1/history, /healthz\n".into(),
        ),
    }
}
