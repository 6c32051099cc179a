//! Connections to endpoints, shared by all tasks' requests: HTTP/1.1
//! connections are kept idle per endpoint and reused one request at a
//! time; an HTTP/2 connection per endpoint carries many streams at once.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use hyper::{
    Request, Response,
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::debug;

use super::body::ProxyBody;

/// How long a connect to an endpoint may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// An idle connection older than this is not reused: servers close idle
/// keep-alive connections (Node.js after 5 s), and reusing one they are
/// closing races their FIN.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// An idle HTTP/1.1 connection and since when it has been idle.
type IdleH1 = (http1::SendRequest<ProxyBody>, Instant);

pub enum Sender {
    H1(http1::SendRequest<ProxyBody>),
    H2(http2::SendRequest<ProxyBody>),
}

/// A send that failed before the request left: it comes back for another try.
pub enum SendError {
    NotSent(Box<Request<ProxyBody>>, hyper::Error),
    Failed(hyper::Error),
}

impl Sender {
    pub async fn send(&mut self, req: Request<ProxyBody>) -> Result<Response<Incoming>, SendError> {
        let r = match self {
            Sender::H1(s) => s.try_send_request(req).await,
            Sender::H2(s) => s.try_send_request(req).await,
        };
        r.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::NotSent(Box::new(req), e.into_error()),
            None => SendError::Failed(e.into_error()),
        })
    }
}

#[derive(Default)]
pub struct Pools {
    h1: Mutex<HashMap<SocketAddr, Vec<IdleH1>>>,
    h2: Mutex<HashMap<SocketAddr, http2::SendRequest<ProxyBody>>>,
}

async fn dial(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

fn other(e: hyper::Error) -> io::Error {
    io::Error::other(e)
}

impl Pools {
    /// A sender to `addr`: a pooled one when there is one (`true`: reused),
    /// else a new connection.
    pub async fn acquire(&self, addr: SocketAddr, h2: bool) -> io::Result<(Sender, bool)> {
        if h2 {
            let existing = {
                let map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                map.get(&addr).filter(|s| !s.is_closed()).cloned()
            };
            if let Some(s) = existing {
                return Ok((Sender::H2(s), true));
            }
        } else {
            loop {
                let idle = {
                    let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
                    map.get_mut(&addr).and_then(Vec::pop)
                };
                match idle {
                    Some((s, since)) if s.is_ready() && since.elapsed() < POOL_IDLE_TIMEOUT => {
                        return Ok((Sender::H1(s), true));
                    }
                    Some(_) => continue,
                    None => break,
                }
            }
        }
        Ok((self.connect(addr, h2).await?, false))
    }

    /// A new connection to `addr`.
    pub async fn connect(&self, addr: SocketAddr, h2: bool) -> io::Result<Sender> {
        let io = TokioIo::new(dial(addr).await?);
        if h2 {
            let (s, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(other)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(%addr, error = %e, "upstream h2 connection");
                }
            });
            self.h2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(addr, s.clone());
            Ok(Sender::H2(s))
        } else {
            let (s, conn) = http1::handshake(io).await.map_err(other)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    debug!(%addr, error = %e, "upstream h1 connection");
                }
            });
            Ok(Sender::H1(s))
        }
    }

    /// Give an HTTP/1.1 connection back once its response has been read.
    pub async fn release(&self, addr: SocketAddr, sender: Sender) {
        let Sender::H1(mut s) = sender else {
            return;
        };
        if s.ready().await.is_err() {
            return;
        }
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.entry(addr).or_default();
        // One clock read, not one per idle connection.
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < POOL_IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((s, now));
        }
    }
}
