//! Connections to one L7 service's endpoints, shared by every request to
//! it (egress and ingress): HTTP/1.1 connections are kept idle per endpoint
//! and reused one request at a time; an HTTP/2 connection per endpoint
//! carries many streams at once. Each request holds a [`Lane`] of the
//! service's [`Limits`] while it uses a connection; HTTP/1.1 connections
//! count against `maxConnections` while they are open.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
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

use super::{
    body::ProxyBody,
    limits::{Lane, Limits, OpenConn},
    tlsdial::TlsDial,
};

/// How long a connect to an endpoint may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// An idle connection older than this is not reused: servers close idle
/// keep-alive connections (Node.js after 5 s), and reusing one they are
/// closing races their FIN.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// An HTTP/1.1 connection, counted as open while it lives.
struct H1 {
    send: http1::SendRequest<ProxyBody>,
    _open: OpenConn,
    /// The client identity it was made with (mutual TLS).
    made_with: Made,
}

/// The client identity a mutual TLS connection was made with: once the
/// identity is renewed (at half its life) the connection is not reused, so
/// no connection outlives the certificate it presented. Held, so that its
/// address is never another identity's.
type Made = Option<Arc<crate::tls::Identity>>;

fn current(made: &Made, tls: Option<&TlsDial>) -> bool {
    match (made, tls) {
        (None, None) => true,
        (Some(m), Some(t)) => Arc::ptr_eq(m, &t.identity),
        _ => false,
    }
}

/// An idle HTTP/1.1 connection and since when it has been idle.
type IdleH1 = (H1, Instant);

/// Connections are pooled per endpoint and, over mutual TLS, per client
/// identity (a connection carries its client's certificate).
type Key = (SocketAddr, Option<Arc<str>>);

fn key(addr: SocketAddr, tls: Option<&TlsDial>) -> Key {
    (addr, tls.map(TlsDial::key))
}

enum Conn {
    H1(H1),
    H2(http2::SendRequest<ProxyBody>),
}

/// A connection (or an HTTP/2 stream's connection) for one request, with
/// the request's lane.
pub struct Sender {
    conn: Conn,
    lane: Lane,
}

/// A send that failed before the request left: it comes back for another try.
pub enum SendError {
    NotSent(Box<Request<ProxyBody>>, hyper::Error),
    Failed(hyper::Error),
}

impl Sender {
    pub async fn send(&mut self, req: Request<ProxyBody>) -> Result<Response<Incoming>, SendError> {
        let r = match &mut self.conn {
            Conn::H1(c) => c.send.try_send_request(req).await,
            Conn::H2(s) => s.try_send_request(req).await,
        };
        r.map_err(|mut e| match e.take_message() {
            Some(req) => SendError::NotSent(Box::new(req), e.into_error()),
            None => SendError::Failed(e.into_error()),
        })
    }
}

/// One L7 service's connections and limits; outlives route tables.
#[derive(Default)]
pub struct ServicePool {
    pub limits: Arc<Limits>,
    h1: Mutex<HashMap<Key, Vec<IdleH1>>>,
    h2: Mutex<HashMap<Key, (http2::SendRequest<ProxyBody>, Made)>>,
}

impl std::fmt::Debug for ServicePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServicePool")
            .field("max_connections", &self.limits.max_connections())
            .field("open", &self.limits.open())
            .field("pending", &self.limits.pending())
            .finish_non_exhaustive()
    }
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

/// A new HTTP/1.1 connection to `addr` (over mutual TLS with `tls`).
async fn connect_h1(
    addr: SocketAddr,
    tls: Option<&TlsDial>,
) -> io::Result<http1::SendRequest<ProxyBody>> {
    let tcp = dial(addr).await?;
    match tls {
        None => handshake_h1(addr, tcp).await,
        Some(t) => handshake_h1(addr, t.wrap(tcp).await?).await,
    }
}

async fn handshake_h1<I>(addr: SocketAddr, io: I) -> io::Result<http1::SendRequest<ProxyBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = http1::handshake(TokioIo::new(io)).await.map_err(other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%addr, error = %e, "upstream h1 connection");
        }
    });
    Ok(send)
}

async fn handshake_h2<I>(addr: SocketAddr, io: I) -> io::Result<http2::SendRequest<ProxyBody>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (s, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .map_err(other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(%addr, error = %e, "upstream h2 connection");
        }
    });
    Ok(s)
}

impl ServicePool {
    /// A sender to `addr` for the request holding `lane`: a pooled
    /// connection when there is one (`true`: reused), else a new one.
    pub async fn acquire(
        &self,
        addr: SocketAddr,
        h2: bool,
        lane: Lane,
        tls: Option<&TlsDial>,
    ) -> io::Result<(Sender, bool)> {
        let k = key(addr, tls);
        if h2 {
            let existing = {
                let map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
                map.get(&k)
                    .filter(|(s, made)| !s.is_closed() && current(made, tls))
                    .map(|(s, _)| s.clone())
            };
            let (s, reused) = match existing {
                Some(s) => (s, true),
                None => (self.connect_h2(k, tls).await?, false),
            };
            return Ok((
                Sender {
                    conn: Conn::H2(s),
                    lane,
                },
                reused,
            ));
        }
        let open = {
            let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(idle) = map.get_mut(&k) {
                // Stale ones are dropped here, under the lock, so that the
                // open count and the pool agree for whoever looks next.
                while let Some((c, since)) = idle.pop() {
                    if c.send.is_ready()
                        && since.elapsed() < POOL_IDLE_TIMEOUT
                        && current(&c.made_with, tls)
                    {
                        let conn = Conn::H1(c);
                        return Ok((Sender { conn, lane }, true));
                    }
                }
            }
            self.make_room(&mut map)
        };
        let send = connect_h1(addr, tls).await?;
        let conn = Conn::H1(H1 {
            send,
            _open: open,
            made_with: tls.map(|t| t.identity.clone()),
        });
        Ok((Sender { conn, lane }, false))
    }

    /// A new connection in place of one the endpoint had closed (the
    /// request never left); an HTTP/1.1 one takes over its place under
    /// `maxConnections`.
    pub async fn reconnect(
        &self,
        addr: SocketAddr,
        sender: &mut Sender,
        tls: Option<&TlsDial>,
    ) -> io::Result<()> {
        match &mut sender.conn {
            Conn::H1(c) => {
                c.send = connect_h1(addr, tls).await?;
                c.made_with = tls.map(|t| t.identity.clone());
            }
            Conn::H2(s) => *s = self.connect_h2(key(addr, tls), tls).await?,
        }
        Ok(())
    }

    /// Room for one more HTTP/1.1 connection: at `maxConnections`, an idle
    /// one (to any endpoint, the longest idle there) is closed. There is
    /// always one to close while lanes in use are at most `maxConnections`
    /// (the caller holds one and has no connection): each busy connection
    /// holds a lane, and idle ones leave the pool only under this lock.
    /// Right after `maxConnections` shrank, lanes in use may exceed it for
    /// a moment; then this dials past the limit rather than stall.
    fn make_room(&self, map: &mut HashMap<Key, Vec<IdleH1>>) -> OpenConn {
        while self.limits.open() >= self.limits.max_connections() {
            let Some(idle) = map.values_mut().find(|v| !v.is_empty()) else {
                break;
            };
            idle.remove(0);
        }
        self.limits.open_conn()
    }

    /// A connection for an HTTP/1.1 upgrade (it leaves the pool for good),
    /// counted as open while the token lives.
    pub fn open_for_upgrade(&self) -> OpenConn {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        self.make_room(&mut map)
    }

    /// A new HTTP/2 connection for `k`, shared from now on.
    async fn connect_h2(
        &self,
        k: Key,
        tls: Option<&TlsDial>,
    ) -> io::Result<http2::SendRequest<ProxyBody>> {
        let addr = k.0;
        let tcp = dial(addr).await?;
        let s = match tls {
            None => handshake_h2(addr, tcp).await?,
            Some(t) => handshake_h2(addr, t.wrap(tcp).await?).await?,
        };
        self.h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(k, (s.clone(), tls.map(|t| t.identity.clone())));
        Ok(s)
    }

    /// Done with a sender once its response head is in; what the response
    /// body holds until it ends. HTTP/2: the lane. HTTP/1.1: the
    /// connection, on its way back to the pool (see [`Returning`]).
    pub fn release(
        self: &Arc<Self>,
        addr: SocketAddr,
        sender: Sender,
        tls: Option<&TlsDial>,
    ) -> Release {
        let Sender { conn, lane } = sender;
        match conn {
            Conn::H2(_) => Release::Lane(lane),
            Conn::H1(c) => Release::H1(Returning {
                back: Some((self.clone(), key(addr, tls), c, lane)),
            }),
        }
    }

    fn park(&self, k: Key, c: H1) {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.entry(k).or_default();
        // One clock read, not one per idle connection.
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < POOL_IDLE_TIMEOUT);
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push((c, now));
        }
    }
}

/// What a response body holds until it ends (see [`ServicePool::release`]).
pub enum Release {
    /// HTTP/2: the request's lane, held (never read) until the body ends.
    Lane(#[allow(dead_code, reason = "held for its drop")] Lane),
    H1(Returning),
}

/// An HTTP/1.1 connection whose response is being read, with its
/// request's lane. It goes back to the pool once the connection is ready
/// for the next request (its response read), and only then is the lane
/// freed, so that a request waiting for a lane finds the connection.
/// Usually that is the moment the response body ends: [`Returning::done`]
/// parks it there and then, in the request's own task. Otherwise (the
/// body was dropped early, or the connection is not ready yet) a task
/// waits for it.
pub struct Returning {
    back: Option<(Arc<ServicePool>, Key, H1, Lane)>,
}

impl Returning {
    /// The response body ended: park the connection now if it is ready.
    pub fn done(&mut self, cx: &mut std::task::Context<'_>) {
        let Some((pool, addr, mut c, lane)) = self.back.take() else {
            return;
        };
        match c.send.poll_ready(cx) {
            std::task::Poll::Ready(Ok(())) => pool.park(addr, c),
            // Closed: it goes, and its place under maxConnections with it.
            std::task::Poll::Ready(Err(_)) => drop(c),
            std::task::Poll::Pending => {
                self.back = Some((pool, addr, c, lane));
                return;
            }
        }
        drop(lane);
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        let Some((pool, addr, mut c, lane)) = self.back.take() else {
            return;
        };
        tokio::spawn(async move {
            match c.send.ready().await {
                Ok(()) => pool.park(addr, c),
                Err(_) => drop(c),
            }
            drop(lane);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_config::LimitsSpec;

    /// Two endpoints (listeners that never answer: an HTTP/1.1 connection
    /// is ready to send as soon as it is open).
    async fn endpoints() -> io::Result<[(tokio::net::TcpListener, SocketAddr); 2]> {
        let a = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let b = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let (aa, ba) = (a.local_addr()?, b.local_addr()?);
        Ok([(a, aa), (b, ba)])
    }

    fn idle(pool: &ServicePool, addr: SocketAddr) -> usize {
        let map = pool.h1.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(addr, None)).map_or(0, Vec::len)
    }

    #[tokio::test]
    async fn at_max_connections_an_idle_one_closes_for_a_new_endpoint() -> io::Result<()> {
        let [(_la, a), (_lb, b)] = endpoints().await?;
        let pool = Arc::new(ServicePool::default());
        pool.limits.set(&LimitsSpec {
            max_connections: Some(1),
            ..LimitsSpec::default()
        });
        let lane = |p: &Arc<ServicePool>| {
            let l = p.limits.clone();
            async move {
                l.lane(None)
                    .await
                    .map_err(|e| io::Error::other(format!("{e:?}")))
            }
        };
        let (s, reused) = pool.acquire(a, false, lane(&pool).await?, None).await?;
        assert!(!reused);
        assert_eq!(pool.limits.open(), 1);
        assert!(matches!(pool.release(a, s, None), Release::H1(_)));
        // Parked, then the lane is free again.
        let l = tokio::time::timeout(Duration::from_secs(5), lane(&pool)).await??;
        assert_eq!(idle(&pool, a), 1);
        // Another endpoint: the idle connection to `a` makes room.
        let (s, reused) = pool.acquire(b, false, l, None).await?;
        assert!(!reused);
        assert_eq!((pool.limits.open(), idle(&pool, a)), (1, 0));
        drop(s);
        assert_eq!(pool.limits.open(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_parked_connection_is_reused() -> io::Result<()> {
        let [(_la, a), _] = endpoints().await?;
        let pool = Arc::new(ServicePool::default());
        let limits = pool.limits.clone();
        let lane = limits
            .lane(None)
            .await
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let (s, _) = pool.acquire(a, false, lane, None).await?;
        assert!(matches!(pool.release(a, s, None), Release::H1(_)));
        tokio::time::timeout(Duration::from_secs(5), async {
            while idle(&pool, a) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await?;
        let lane = limits
            .lane(None)
            .await
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let (_s, reused) = pool.acquire(a, false, lane, None).await?;
        assert!(reused);
        assert_eq!(limits.open(), 1);
        Ok(())
    }
}
