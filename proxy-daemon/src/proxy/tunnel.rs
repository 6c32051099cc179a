//! TCP services with `tls` between hosts. Same-host connections stay in
//! the kernel (there is no wire to protect); a task's connect that the
//! kernel routes to another host's endpoint comes to the egress listener
//! instead ([`proxy_common::maps::CONN_TUNNEL`], with the endpoint it
//! chose). The daemon dials that host's ingress listener of the entry over
//! mutual TLS, presenting the task's service identity and accepting only
//! the target service's, then copies the bytes both ways in userspace. The
//! other host's ingress checks the caller ([`ingress`]) and connects to its
//! local app.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use proxy_common::maps::ConnInfo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tracing::debug;

use super::{
    AliasRoute, Endpoint, Proxy, SockRemover,
    forward::LiveGuard,
    idle::{Activity, Tracked},
    pool::CONNECT_TIMEOUT,
    tlsdial::TlsDial,
};

/// How long a connection waits for its task's identity (a task that just
/// started connects before the signer answered).
const IDENTITY_WAIT: Duration = Duration::from_secs(5);

/// Endpoints tried before the task's connection is closed (nothing was
/// read from the task yet, so another endpoint is always safe).
const TRIES: usize = 3;

/// Can this kernel take a TLS connection's keys (kTLS: the `tls` upper
/// layer protocol and the ciphers it asks the crypto API for)? Tried the
/// way every connection will be: a mutual TLS handshake over loopback with
/// throwaway identities, both ends handed to kTLS, one byte each way.
async fn ktls_probe(socks: Option<&Mutex<SockRemover>>) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let identity = probe_identity().map_err(|e| format!("a throwaway identity: {e}"))?;
    let l = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    let server = identity.server.clone();
    // Both ends of this same-host connection may be in the daemon's
    // sockhash (acceleration), which the kernel does not let take kTLS keys:
    // taken out first, as connections between hosts never go in.
    let take_out = |local: std::net::SocketAddr, remote: std::net::SocketAddr| {
        if let (Some(socks), std::net::SocketAddr::V4(l), std::net::SocketAddr::V4(r)) =
            (socks, local, remote)
            && let Ok(mut s) = socks.lock()
        {
            s.remove(l, r);
        }
    };
    let accept = async move {
        let (s, peer) = l.accept().await.map_err(|e| e.to_string())?;
        take_out(s.local_addr().map_err(|e| e.to_string())?, peer);
        let tls = tokio_rustls::TlsAcceptor::from(server)
            .accept(ktls::CorkStream::new(s))
            .await
            .map_err(|e| e.to_string())?;
        let mut k = ktls::config_ktls_server(tls)
            .await
            .map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        k.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        k.write_all(&b).await.map_err(|e| e.to_string())?;
        k.flush().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(k)
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        take_out(tcp.local_addr().map_err(|e| e.to_string())?, addr);
        let name = rustls_pki_types::ServerName::try_from("knit").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(identity.client.clone())
            .connect(name, ktls::CorkStream::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        let mut k = ktls::config_ktls_client(tls)
            .await
            .map_err(|e| e.to_string())?;
        k.write_all(b"k").await.map_err(|e| e.to_string())?;
        k.flush().await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        k.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(b[0])
    };
    let both = async { tokio::try_join!(accept, connect) };
    match tokio::time::timeout(Duration::from_secs(5), both).await {
        Ok(Ok((_, b'k'))) => Ok(()),
        Ok(Ok((_, other))) => Err(format!("the byte came back as {other}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("timed out".into()),
    }
}

/// A throwaway CA and an identity of it, for [`ktls_probe`].
fn probe_identity() -> Result<crate::tls::Identity, crate::tls::TlsError> {
    use crate::tls::{TlsError, ca};
    let dir = tempfile::tempdir().map_err(|e| TlsError::Crypto(e.to_string()))?;
    let (cert, key) = ca::create("knit kTLS probe", 1)?;
    let (c, k) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    std::fs::write(&c, cert).map_err(|e| TlsError::Crypto(e.to_string()))?;
    std::fs::write(&k, key).map_err(|e| TlsError::Crypto(e.to_string()))?;
    let ca = ca::Ca::load(&c, &k)?;
    let id = "spiffe://knit.probe/ns/probe/svc/probe";
    let (key, csr) = ca::request(id)?;
    let chain = crate::tls::certs_from_pem(&ca.sign(&csr, id, Duration::from_secs(3600))?)?;
    let mut roots = rustls::RootCertStore::empty();
    for r in &ca.roots {
        roots
            .add(r.clone())
            .map_err(|e| TlsError::Crypto(e.to_string()))?;
    }
    crate::tls::Identity::new(
        id.to_owned(),
        chain,
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        std::sync::Arc::new(roots),
    )
}

/// Decide how TCP with tls between hosts runs (kTLS when `wanted` and the
/// kernel has it) and say it, for the daemon's start-up line.
pub async fn choose_path(proxy: &Proxy, wanted: bool, socks: Option<SockRemover>) -> String {
    let socks = socks.map(Mutex::new);
    let (on, how) = if wanted {
        match ktls_probe(socks.as_ref()).await {
            Ok(()) => (
                true,
                "kTLS: after the handshake in the daemon, the kernel encrypts and decrypts"
                    .to_owned(),
            ),
            Err(e) => (
                false,
                format!("mutual TLS in the daemon (this kernel has no usable kTLS: {e})"),
            ),
        }
    } else {
        (
            false,
            "mutual TLS in the daemon ([tls] ktls = false)".to_owned(),
        )
    };
    proxy.set_ktls(on);
    format!("{how}; bytes copied in userspace")
}

/// A connection kTLS refused after its handshake (it is lost): say so, and
/// keep TCP between hosts in userspace from now on.
pub(super) fn ktls_refused(proxy: &Proxy, e: &ktls::Error) {
    proxy.metrics.ktls_failures.inc();
    if proxy.ktls() {
        proxy.set_ktls(false);
        tracing::warn!(
            error = %e,
            "kTLS refused a connection after its handshake; TCP between hosts is encrypted \
             in userspace from now on"
        );
    }
}

/// Copy both ways until either side closes (or, with `idle`, until
/// nothing moved for that long).
async fn splice<A, B>(a: A, b: B, idle: Option<Duration>) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let mut a = Tracked::new(a, activity.clone());
    let mut b = b;
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    match idle {
        Some(idle) => tokio::select! {
            r = copy => r,
            () = activity.idle_for(idle) => Ok((0, 0)),
        },
        None => copy.await,
    }
}

/// A task's connection to another host's endpoint of a TCP service with
/// tls (the kernel's choice in `info`): over mutual TLS to that host's
/// ingress listener, or closed.
pub(super) async fn egress(stream: TcpStream, info: ConnInfo, proxy: Arc<Proxy>) {
    let Some(route) = proxy.routes.load().aliases.get(&info.service_id).cloned() else {
        debug!(
            service_id = info.service_id,
            "tunnel: no route for this alias; closing"
        );
        return;
    };
    proxy.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _live = LiveGuard(proxy.clone());
    let client = proxy
        .sources
        .load()
        .get(&info.cgroup_id)
        .map(|s| s.service.clone());
    if !route.authorize(
        client.as_deref(),
        "egress",
        &proxy.metrics.authorization_denied,
    ) {
        return;
    }
    let Some(client) = client else {
        debug!(service = %route.service, "tunnel: a connection from a task not known here; closing");
        return;
    };
    let Some(identity) = proxy
        .tls
        .wait_for(&route.target.namespace, &client, IDENTITY_WAIT)
        .await
    else {
        super::tlsdial::count(
            &proxy.metrics.tls_client_errors,
            &route.target,
            crate::tls::Cause::NoCertificate,
        );
        debug!(%client, "tunnel: no identity for the calling service yet; closing");
        return;
    };
    let mut tried: Vec<u32> = Vec::new();
    let first = route
        .endpoints
        .iter()
        .find(|e| e.backend_id == info.backend_id);
    let mut next: Option<Endpoint> = first.cloned();
    for _ in 0..TRIES {
        let Some(ep) = next.take().or_else(|| pick(&route, &tried)) else {
            break;
        };
        tried.push(ep.backend_id);
        match dial(&ep, &route, &identity, &proxy).await {
            Ok(Dialled::Tls(up)) => {
                proxy.success(&ep);
                let r = splice(stream, up, route.idle_timeout).await;
                debug!(endpoint = %ep.addr, result = ?r, "tunnel closed");
                return;
            }
            Ok(Dialled::Ktls(up)) => {
                proxy.success(&ep);
                let r = splice(stream, up, route.idle_timeout).await;
                debug!(endpoint = %ep.addr, result = ?r, "tunnel (kTLS) closed");
                return;
            }
            Ok(Dialled::Plain(up)) => {
                proxy.success(&ep);
                let r = splice(stream, up, route.idle_timeout).await;
                debug!(endpoint = %ep.addr, result = ?r, "tunnel (same host) closed");
                return;
            }
            Err(e) => {
                proxy.failure(&route, &ep);
                debug!(endpoint = %ep.addr, error = %e, "tunnel: dial failed");
            }
        }
    }
    debug!(service = %route.service, "tunnel: no endpoint could be reached; closing");
}

/// Another endpoint in rotation, round-robin, not yet `tried`.
fn pick(route: &AliasRoute, tried: &[u32]) -> Option<Endpoint> {
    let e = route.pick(&hyper::HeaderMap::new(), tried)?;
    (!tried.contains(&e.backend_id)).then(|| e.clone())
}

enum Dialled {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Handed to the kernel's TLS after the handshake.
    Ktls(Box<ktls::KtlsStream<TcpStream>>),
    /// An endpoint on this host (it moved here since the kernel chose).
    Plain(TcpStream),
}

async fn dial(
    ep: &Endpoint,
    route: &Arc<AliasRoute>,
    identity: &Arc<crate::tls::Identity>,
    proxy: &Arc<Proxy>,
) -> std::io::Result<Dialled> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep.addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    let Some(server_id) = &ep.tls else {
        return Ok(Dialled::Plain(tcp));
    };
    let dial = TlsDial {
        identity: identity.clone(),
        server_id: server_id.clone(),
        errors: proxy.metrics.tls_client_errors.clone(),
        route: route.clone(),
        handshakes: proxy.metrics.tls_client_handshakes.clone(),
    };
    if proxy.ktls() {
        let tls = dial.wrap(ktls::CorkStream::new(tcp)).await?;
        return match ktls::config_ktls_client(tls).await {
            Ok(k) => {
                proxy.metrics.ktls_connections.inc();
                Ok(Dialled::Ktls(Box::new(k)))
            }
            Err(e) => {
                ktls_refused(proxy, &e);
                Err(std::io::Error::other(format!(
                    "handing the connection to kTLS: {e}"
                )))
            }
        };
    }
    Ok(Dialled::Tls(Box::new(dial.wrap(tcp).await?)))
}

/// The ingress side: a caller on another host, authenticated and
/// authorized (by [`super::ingress`]), to the entry's local app.
pub(super) async fn ingress<S>(stream: S, route: Arc<AliasRoute>, proxy: Arc<Proxy>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(ep) = route.endpoints.first() else {
        return;
    };
    proxy.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let _live = LiveGuard(proxy.clone());
    let app = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(app = %ep.addr, error = %e, "tunnel ingress: the app refused");
            return;
        }
        Err(_) => {
            debug!(app = %ep.addr, "tunnel ingress: connecting to the app timed out");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let r = splice(stream, app, route.idle_timeout).await;
    debug!(app = %ep.addr, result = ?r, "tunnel ingress closed");
}
