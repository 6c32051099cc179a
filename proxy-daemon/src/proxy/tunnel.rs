//! TCP services with `tls` between hosts. Same-host connections stay in
//! the kernel (there is no wire to protect); a task's connect that the
//! kernel routes to another host's endpoint comes to the egress listener
//! instead ([`proxy_common::maps::CONN_TUNNEL`], with the endpoint it
//! chose). The daemon dials that host's ingress listener of the entry over
//! mutual TLS, presenting the task's service identity and accepting only
//! the target service's, then copies the bytes both ways in userspace. The
//! other host's ingress checks the caller ([`ingress`]) and connects to its
//! local app.
use std::{sync::Arc, time::Duration};

use proxy_common::maps::ConnInfo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tracing::debug;

use super::{
    AliasRoute, Endpoint, Proxy,
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

/// How the data path of TCP with tls between hosts runs on this kernel,
/// for the daemon's start-up line.
pub fn path() -> String {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    let ktls = if ulps.split_whitespace().any(|u| u == "tls") {
        "this kernel has kTLS (the tls ULP), not used yet"
    } else {
        "this kernel has no kTLS (no tls ULP in /proc/sys/net/ipv4/tcp_available_ulp)"
    };
    format!("mutual TLS in the daemon, bytes copied in userspace; {ktls}")
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
