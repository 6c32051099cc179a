//! HTTP peers: a server (HTTP/1.1 and h2c on one port, WebSocket echo) that
//! says who it is, and clients that report what they saw as JSON.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderValue},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};

use crate::{arg, num, resolve_target};

type Body = BoxBody<Bytes, hyper::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// What the server saw, for `GET /stats` (those requests not counted).
#[derive(Default)]
struct Stats {
    /// Requests, and connections that carried at least one.
    requests: std::sync::atomic::AtomicU64,
    connections: std::sync::atomic::AtomicU64,
    /// Requests being answered now, and the most at once.
    inflight: std::sync::atomic::AtomicU64,
    max_inflight: std::sync::atomic::AtomicU64,
}

/// Counts a request as in flight until dropped.
struct Inflight(Arc<Stats>);

impl Inflight {
    fn new(stats: Arc<Stats>) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let now = stats.inflight.fetch_add(1, SeqCst) + 1;
        stats.max_inflight.fetch_max(now, SeqCst);
        Self(stats)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0
            .inflight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Serve until killed. Every answer carries `x-backend: <id>`.
/// `GET /stats` answers `{"requests": R, "connections": N, "max_inflight":
/// M}` about the other requests. `--on-term FILE`: at SIGTERM, write
/// `{"inflight", "requests", "sigterm_unix_ms", "last_answer_unix_ms"}`
/// to FILE and exit at once (an app that cuts whatever is in flight).
pub fn server(args: &[String]) -> Result<()> {
    let id = crate::server_id(args)?;
    let var = arg(args, "--port-env").context("--port-env")?;
    let port: u16 = std::env::var(&var)
        .with_context(|| format!("${var}"))?
        .parse()?;
    let always: Option<u16> = arg(args, "--always").map(|s| s.parse()).transpose()?;
    // Record every request as it reached us (head fields in order, body
    // bytes, body errors) and answer it with that record; `GET /seen`
    // (not recorded) lists them all.
    let record = args.iter().any(|a| a == "--record");
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    if let Some(p) = arg(args, "--pidfile") {
        std::fs::write(p, std::process::id().to_string())?;
    }
    // Requests served so far, rewritten on each request (for tests to read).
    let count_file = arg(args, "--count-file");
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stats = Arc::new(Stats::default());
    let host = std::env::var("KNIT_HOST_ADDRESS").unwrap_or_else(|_| "127.0.0.1".into());
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    let on_term = arg(args, "--on-term");
    let last_answer = Arc::new(std::sync::atomic::AtomicU64::new(0));
    runtime()?.block_on(async move {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind {addr}"))?;
        if let Some(file) = on_term {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let (stats, last_answer) = (stats.clone(), last_answer.clone());
            tokio::spawn(async move {
                term.recv().await;
                use std::sync::atomic::Ordering::SeqCst;
                let r = json!({
                    "inflight": stats.inflight.load(SeqCst),
                    "requests": stats.requests.load(SeqCst),
                    "sigterm_unix_ms": crate::now_ms(),
                    "last_answer_unix_ms": last_answer.load(SeqCst),
                });
                let _ = std::fs::write(&file, r.to_string());
                std::process::exit(0);
            });
        }
        let id: Arc<str> = id.into();
        loop {
            let (s, _) = l.accept().await?;
            let (id, served, count_file) = (id.clone(), served.clone(), count_file.clone());
            let stats = stats.clone();
            let seen = seen.clone();
            let used = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let last_answer = last_answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (id, served, count_file) = (id.clone(), served.clone(), count_file.clone());
                    let (stats, used, seen) = (stats.clone(), used.clone(), seen.clone());
                    let last_answer = last_answer.clone();
                    async move {
                        if record && req.uri().path() == "/seen" {
                            let all = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                            return Ok::<_, Infallible>(Response::new(full(
                                serde_json::Value::from(all).to_string(),
                            )));
                        }
                        if req.uri().path() == "/stats" {
                            let body = json!({
                                "requests": stats.requests.load(std::sync::atomic::Ordering::SeqCst),
                                "connections": stats.connections.load(std::sync::atomic::Ordering::SeqCst),
                                "max_inflight": stats.max_inflight.load(std::sync::atomic::Ordering::SeqCst),
                            });
                            return Ok::<_, Infallible>(Response::new(full(body.to_string())));
                        }
                        if !used.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            stats
                                .connections
                                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        stats
                            .requests
                            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _inflight = Inflight::new(stats.clone());
                        let n = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        if let Some(f) = &count_file {
                            let _ = std::fs::write(f, n.to_string());
                        }
                        if record {
                            return Ok(recorded(req, &id, &seen).await);
                        }
                        let resp = route(req, &id, always).await;
                        last_answer.store(crate::now_ms(), std::sync::atomic::Ordering::SeqCst);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    })
}

async fn route(req: Request<Incoming>, id: &str, always: Option<u16>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut resp = if let Some(code) = always {
        let mut r = Response::new(full(id.to_string()));
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        r
    } else if path == "/ws" {
        websocket(req)
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut r = Response::new(full(id.to_string()));
        *r.status_mut() = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        r
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        Response::new(full(id.to_string()))
    } else if path == "/echo" {
        Response::new(req.into_body().boxed())
    } else if path == "/sink" {
        // Reads the whole body, then answers with its length (an upload).
        match req.into_body().collect().await {
            Ok(b) => Response::new(full(b.to_bytes().len().to_string())),
            Err(_) => {
                let mut r = Response::new(full("body error"));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        }
    } else if path == "/trailers" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("x-trailer", HeaderValue::from_static("yes"));
        let frames = vec![
            Ok::<_, hyper::Error>(Frame::data(Bytes::from(id.to_string()))),
            Ok(Frame::trailers(trailers)),
        ];
        Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    } else {
        Response::new(full(id.to_string()))
    };
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-backend", v);
    }
    resp
}

/// `--record`: what reached this backend, kept and sent back as JSON:
/// `{"method", "path", "version", "headers": [[name, value]...],
/// "body_bytes", "body_error"}`. WebSocket upgrades are recorded (no body)
/// and then served as usual.
async fn recorded(
    req: Request<Incoming>,
    id: &str,
    seen: &Mutex<Vec<serde_json::Value>>,
) -> Response<Body> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let head = json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    if req.uri().path() == "/ws" {
        let mut r = head;
        r["body_bytes"] = 0.into();
        seen.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        return route(req, id, None).await;
    }
    let method = req.method().clone();
    let mut r = head;
    let (mut bytes, mut error) = (0u64, None);
    let mut body = req.into_body();
    // Frame by frame: what came before an error counts too.
    while let Some(f) = body.frame().await {
        match f {
            Ok(f) => bytes += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    r["body_bytes"] = bytes.into();
    r["body_error"] = error.into();
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(r.clone());
    let mut resp = Response::new(if method == hyper::Method::HEAD {
        full(Bytes::new())
    } else {
        full(r.to_string())
    });
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-backend", v);
    }
    resp
}

fn websocket(mut req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() || ws.send(m).await.is_err() {
                break;
            }
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

/// scheme://host:port/path -> (authority, resolved address, path)
fn parse_url(args: &[String], url: &str) -> Result<(String, SocketAddr, String)> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .context("URL needs a scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Ok((
        authority.to_string(),
        resolve_target(args, authority)?,
        path.to_string(),
    ))
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

async fn connect(addr: SocketAddr, h2: bool) -> Result<Conn> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    Ok(if h2 {
        let (s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(c);
        Conn::H2(s)
    } else {
        let (s, c) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(c);
        Conn::H1(s)
    })
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, u64>,
    by_backend: BTreeMap<String, u64>,
    /// Answers with `x-knit-overflow`, by its value.
    overflow: BTreeMap<String, u64>,
    errors: Vec<String>,
    failed: u64,
    mismatched: u64,
    trailers: u64,
    latencies_us: Vec<u64>,
    timeline: Vec<serde_json::Value>,
}

/// The longest `http-client` run (a soak's), whatever the arguments say.
const MAX_RUN_MS: u64 = 900_000;

/// Send requests on keep-alive connections and report what came back.
pub fn client(args: &[String]) -> Result<()> {
    let url = arg(args, "--url").context("--url")?;
    let (authority, addr, path) = parse_url(args, &url)?;
    let count = num(args, "--count", 0)?;
    let duration = Duration::from_millis(num(args, "--duration-ms", 0)?.min(MAX_RUN_MS));
    let conc = num(args, "--concurrency", 1)?.max(1);
    // A pause between a worker's requests (0: back to back).
    let pause = Duration::from_millis(num(args, "--interval-ms", 0)?);
    let h2 = args.iter().any(|a| a == "--h2");
    let method: hyper::Method = arg(args, "--method")
        .unwrap_or_else(|| "GET".into())
        .parse()?;
    let body_bytes = num(args, "--body-bytes", 0)? as usize;
    // Send the body in 1000-byte frames without a length (HTTP/1.1: chunked).
    let chunked = args.iter().any(|a| a == "--chunked");
    let dump = args.iter().any(|a| a == "--dump-body");
    // A new connection for every request (each one is a new connect, which
    // the kernel's connect hook routes afresh).
    let reconnect = args.iter().any(|a| a == "--reconnect");
    // Stop once this file exists (the test's steps are done), with
    // --duration-ms as the bound: a slow machine gets the traffic it needs.
    let stop_file = arg(args, "--stop-file").map(std::path::PathBuf::from);
    // A Host field other than the URL's authority (HTTP/2: beside it).
    let authority_field = arg(args, "--host-header");
    // `--header NAME:VALUE` (repeatable): more header fields on every request.
    let extra: Vec<(String, String)> = args
        .windows(2)
        .filter(|w| w[0] == "--header")
        .filter_map(|w| {
            let (n, v) = w[1].split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    let extra = Arc::new(extra);
    let last_body: Arc<Mutex<String>> = Arc::default();
    // Pseudo-random: no period a reordering of chunks could hide in.
    let payload: Bytes = {
        let mut v = vec![0u8; body_bytes];
        crate::xfer::Sequence::new(body_bytes as u64).fill(&mut v);
        v.into()
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let bodies = last_body.clone();
    runtime()?.block_on(async {
        let last_body = bodies;
        let mut workers = Vec::new();
        for _ in 0..conc {
            let (tally, next, authority, path, method, payload) = (
                tally.clone(),
                next.clone(),
                authority.clone(),
                path.clone(),
                method.clone(),
                payload.clone(),
            );
            let last_body = last_body.clone();
            let extra = extra.clone();
            let host_field = authority_field.clone().unwrap_or_else(|| authority.clone());
            let stop_file = stop_file.clone();
            workers.push(tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if (count > 0 && i >= count)
                        || (count == 0 && start.elapsed() >= duration)
                        || stop_file.as_deref().is_some_and(std::path::Path::exists)
                        || start.elapsed() > Duration::from_millis(MAX_RUN_MS.max(120_000))
                    {
                        break;
                    }
                    let t0 = Instant::now();
                    let r = one(
                        &mut conn,
                        addr,
                        h2,
                        (&authority, &host_field),
                        &extra,
                        &path,
                        &method,
                        &payload,
                        chunked,
                    )
                    .await;
                    {
                        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                        match r {
                            Ok((status, backend, echoed, trailers, overflow)) => {
                                if let Some(o) = overflow {
                                    *t.overflow.entry(o).or_default() += 1;
                                }
                                if dump {
                                    *last_body.lock().unwrap_or_else(|p| p.into_inner()) =
                                        String::from_utf8_lossy(&echoed).into_owned();
                                }
                                *t.statuses.entry(status).or_default() += 1;
                                *t.by_backend.entry(backend.clone()).or_default() += 1;
                                if path.starts_with("/echo") && echoed != payload {
                                    t.mismatched += 1;
                                }
                                t.trailers += u64::from(trailers);
                                t.latencies_us.push(t0.elapsed().as_micros() as u64);
                                t.timeline.push(json!([crate::now_ms(), status, backend]));
                            }
                            Err(e) => {
                                conn = None;
                                t.failed += 1;
                                if t.errors.len() < 10 {
                                    t.errors.push(format!("{e:#}"));
                                }
                                t.timeline.push(json!([crate::now_ms(), 0, null]));
                            }
                        }
                    }
                    if reconnect {
                        conn = None;
                    }
                    if !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                }
            }));
        }
        for w in workers {
            let _ = w.await;
        }
    });
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    t.latencies_us.sort_unstable();
    let pct = |p: f64| {
        t.latencies_us
            .get(((t.latencies_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    let ok: u64 = t
        .statuses
        .iter()
        .filter(|(s, _)| (200..300).contains(*s))
        .map(|(_, n)| n)
        .sum();
    let report = json!({
        "ok": ok, "failed": t.failed, "statuses": t.statuses, "by_backend": t.by_backend,
        "overflow": t.overflow,
        "errors": t.errors, "mismatched": t.mismatched, "trailers": t.trailers,
        "p50_us": pct(0.5), "p99_us": pct(0.99), "timeline": t.timeline,
        "body": dump.then(|| last_body.lock().unwrap_or_else(|p| p.into_inner()).clone()),
    });
    println!("{report}");
    Ok(())
}

/// One request: (status, x-backend, body, trailers seen, x-knit-overflow).
#[expect(
    clippy::too_many_arguments,
    reason = "one request's every knob, from the command line"
)]
async fn one(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    h2: bool,
    (authority, host_field): (&str, &str),
    extra: &[(String, String)],
    path: &str,
    method: &hyper::Method,
    payload: &Bytes,
    chunked: bool,
) -> Result<(u16, String, Bytes, bool, Option<String>)> {
    if conn.is_none() {
        *conn = Some(connect(addr, h2).await?);
    }
    let body = if chunked {
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = payload
            .chunks(1000)
            .map(|c| Ok(Frame::data(payload.slice_ref(c))))
            .collect();
        BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
    } else if payload.is_empty() {
        full(Bytes::new())
    } else {
        full(payload.clone())
    };
    let mut b = Request::builder()
        .method(method.clone())
        .header(header::HOST, host_field);
    for (n, v) in extra {
        b = b.header(n.as_str(), v.as_str());
    }
    b = if h2 {
        b.uri(format!("http://{authority}{path}"))
    } else {
        b.uri(path)
    };
    let req = b.body(body)?;
    let resp = match conn.as_mut() {
        Some(Conn::H1(s)) => {
            s.ready().await?;
            s.send_request(req).await?
        }
        Some(Conn::H2(s)) => s.send_request(req).await?,
        None => bail!("no connection"),
    };
    let status = resp.status().as_u16();
    // The server will close this connection: as any client, use a new one
    // for the next request.
    let closing = resp
        .headers()
        .get(hyper::header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let overflow = resp
        .headers()
        .get("x-knit-overflow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let collected = resp.into_body().collect().await?;
    let trailers = collected
        .trailers()
        .is_some_and(|t| t.contains_key("x-trailer"));
    if closing {
        *conn = None;
    }
    Ok((status, backend, collected.to_bytes(), trailers, overflow))
}

/// Open a WebSocket through the alias and check that messages come back.
pub fn ws_client(args: &[String]) -> Result<()> {
    let url = arg(args, "--url").context("--url")?;
    let (authority, addr, path) = parse_url(args, &url)?;
    let n = num(args, "--messages", 10)?.min(10_000);
    runtime()?.block_on(async move {
        let stream = TcpStream::connect(addr).await?;
        let (mut ws, resp) =
            tokio_tungstenite::client_async(format!("ws://{authority}{path}"), stream).await?;
        let backend = resp
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        let (mut ok, mut bad) = (0u64, 0u64);
        for i in 0..n {
            let m = format!("message {i} {}", "x".repeat((i % 100) as usize));
            ws.send(Message::text(m.clone())).await?;
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.as_str() == m => ok += 1,
                _ => bad += 1,
            }
        }
        let _ = ws.close(None).await;
        println!("{}", json!({"ok": ok, "bad": bad, "backend": backend}));
        Ok(())
    })
}

/// Open `--sockets K` WebSockets at once through the alias, say nothing on
/// them, and report how each fared: `{"opened": n, "refused": [status...],
/// "closed_after_ms": [ms or null per opened socket]}`; a socket still open
/// after `--idle-ms D` counts as null (bounded: D at most 60 s).
pub fn ws_idle(args: &[String]) -> Result<()> {
    let url = arg(args, "--url").context("--url")?;
    let (authority, addr, path) = parse_url(args, &url)?;
    let k = num(args, "--sockets", 1)?.clamp(1, 64);
    let idle = Duration::from_millis(num(args, "--idle-ms", 5000)?.min(60_000));
    runtime()?.block_on(async move {
        let mut open = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..k {
            let stream = TcpStream::connect(addr).await?;
            match tokio_tungstenite::client_async(format!("ws://{authority}{path}"), stream).await {
                Ok((ws, _)) => open.push(ws),
                Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                    refused.push(r.status().as_u16())
                }
                Err(e) => bail!("opening a WebSocket: {e}"),
            }
        }
        let start = Instant::now();
        let mut waits = Vec::new();
        for mut ws in open.drain(..) {
            waits.push(tokio::spawn(async move {
                // Until the peer closes (or a frame comes: not expected).
                let r = tokio::time::timeout(idle, ws.next()).await;
                match r {
                    Ok(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                        Some(start.elapsed().as_millis() as u64)
                    }
                    _ => None,
                }
            }));
        }
        let mut closed = Vec::new();
        for w in waits {
            closed.push(w.await.ok().flatten());
        }
        println!(
            "{}",
            json!({"opened": closed.len(), "refused": refused, "closed_after_ms": closed})
        );
        Ok(())
    })
}
