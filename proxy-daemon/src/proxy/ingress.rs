//! Ingress listeners: one per services[] entry of each L7 task port, where
//! other hosts' egress sends requests for that entry of this host's task
//! (same-host traffic goes straight to the app). Each forwards to its local
//! app with the proxy's request path, under its entry's route (timeouts,
//! limits, metrics' discovery name).
use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{AliasRoute, Proxy, forward};

/// Longest TLS handshake another host may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection from another host to an entry with `tls`: mutual TLS with
/// the service's identity; the client must present an identity of the
/// same trust domain and namespace. Then served like any other (TCP:
/// spliced to the local app, through kTLS when the daemon uses it).
async fn serve_tls(s: tokio::net::TcpStream, route: Arc<AliasRoute>, proxy: Arc<Proxy>) {
    if !route.protocol.is_l7() && proxy.ktls() {
        let Some(tls) = accept(ktls::CorkStream::new(s), &route, &proxy).await else {
            return;
        };
        match ktls::config_ktls_server(tls).await {
            Ok(k) => {
                proxy.metrics.ktls_connections.inc();
                super::tunnel::ingress(k, route, proxy).await;
            }
            Err(e) => {
                super::tunnel::ktls_refused(&proxy, &e);
                debug!(service = %route.service, error = %e, "ingress: handing a connection to kTLS");
            }
        }
        return;
    }
    let Some(tls) = accept(s, &route, &proxy).await else {
        return;
    };
    if route.protocol.is_l7() {
        forward::serve_connection(tls, forward::Target::Fixed(route), proxy).await;
    } else {
        super::tunnel::ingress(tls, route, proxy).await;
    }
}

/// The handshake and the checks of a connection to `route`'s ingress: the
/// stream, or None when it was refused (counted; an L7 caller that
/// `allowedClients` leaves out has been answered 403 on it).
async fn accept<IO>(
    s: IO,
    route: &Arc<AliasRoute>,
    proxy: &Arc<Proxy>,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let ns = &route.target.namespace;
    let count = |cause: crate::tls::Cause| {
        proxy
            .metrics
            .tls_target_errors
            .get_or_create(&crate::metrics::TlsTargetLabels {
                namespace: ns.clone(),
                service: route.service.clone(),
                discovery_name: route.discovery_name.clone(),
                cause: cause.label().to_owned(),
            })
            .inc();
    };
    let Some(identity) = proxy.tls.get(ns, &route.service) else {
        // Nothing to present yet: the caller sees its handshake fail.
        count(crate::tls::Cause::NoCertificate);
        debug!(service = %route.service, "ingress: no identity yet for a mutual TLS connection");
        return None;
    };
    let accept = tokio_rustls::TlsAcceptor::from(identity.server.clone()).accept(s);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(t)) => {
            proxy.metrics.tls_server_handshakes.inc();
            t
        }
        Ok(Err(e)) => {
            let cause = crate::tls::cause_of(&e);
            count(cause);
            debug!(service = %route.service, cause = cause.label(), error = %e, "ingress: TLS handshake");
            return None;
        }
        Err(_) => {
            count(crate::tls::Cause::Other);
            return None;
        }
    };
    let sans = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| crate::tls::uri_sans(c))
        .unwrap_or_default();
    let same_namespace = matches!(
        sans.as_slice(),
        [one] if crate::tls::parse_spiffe_id(&proxy.tls.trust_domain, one)
            .is_some_and(|(n, _)| n == ns)
    );
    if !same_namespace {
        count(crate::tls::Cause::SanMismatch);
        debug!(service = %route.service, peer = ?sans, "ingress: a client identity not of this namespace");
        return None;
    }
    // allowedClients, by the caller's certificate.
    let client = sans
        .first()
        .and_then(|s| crate::tls::parse_spiffe_id(&proxy.tls.trust_domain, s))
        .map(|(_, svc)| svc);
    if !route.authorize(client, "ingress", &proxy.metrics.authorization_denied) {
        if route.protocol.is_l7() {
            forward::serve_denied(tls).await;
        }
        // TCP: closed.
        return None;
    }
    Some(tls)
}

/// (task id, discovery name): one entry's listener for one task.
pub type IngressKey = (String, String);

struct Running {
    accept: JoinHandle<()>,
    /// A copy of the socket (to hand over to a new daemon, or to keep it
    /// listening while its accept loop is replaced).
    socket: OwnedFd,
    port: u16,
    /// What its route was built from; another value restarts the accept
    /// loop with a new route on the same socket.
    route_of: String,
}

#[derive(Default)]
pub struct IngressListeners {
    running: HashMap<IngressKey, Running>,
    /// Listeners the previous daemon handed over, by (task id, discovery
    /// name) (a daemon before per-entry listeners named them by port name).
    pub inherited: HashMap<IngressKey, std::net::TcpListener>,
}

impl IngressListeners {
    /// Serve `route`'s one local endpoint on `listener` (bound and
    /// listening), on a data-plane thread. Returns the port listened on.
    pub fn start(
        &mut self,
        key: IngressKey,
        listener: std::net::TcpListener,
        route: Arc<AliasRoute>,
        route_of: String,
        proxy: Arc<Proxy>,
    ) -> std::io::Result<u16> {
        listener.set_nonblocking(true)?;
        let copy: OwnedFd = listener.try_clone()?.into();
        let port = listener.local_addr()?.port();
        info!(task = %key.0, discovery_name = %key.1, port, "ingress listener");
        let dataplane = proxy.clone();
        let accept = dataplane.dataplane.spawn(async move {
            // Registered with the reactor of the thread that serves it.
            let l = match TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    warn!(port, error = %e, "ingress listener");
                    return;
                }
            };
            loop {
                match l.accept().await {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        // Counted from the accept (see `serve_egress`).
                        let accepted = forward::LiveGuard::count(&proxy);
                        let (route, proxy) = (route.clone(), proxy.clone());
                        tokio::spawn(async move {
                            let _accepted = accepted;
                            if route.tls {
                                serve_tls(s, route, proxy).await;
                            } else {
                                forward::serve_connection(s, forward::Target::Fixed(route), proxy)
                                    .await;
                            }
                        });
                    }
                    Err(e) => {
                        warn!(error = %e, "ingress accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        if let Some(old) = self.running.insert(
            key,
            Running {
                accept,
                socket: copy,
                port,
                route_of,
            },
        ) {
            old.accept.abort();
        }
        Ok(port)
    }

    /// The port and route of each running listener.
    pub fn running(&self) -> BTreeMap<IngressKey, (u16, String)> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), (r.port, r.route_of.clone())))
            .collect()
    }

    /// Stop accepting on `key`'s listener and return its socket, still
    /// bound and listening (connections queued meanwhile are kept).
    pub fn take(&mut self, key: &IngressKey) -> Option<std::net::TcpListener> {
        let r = self.running.remove(key)?;
        r.accept.abort();
        Some(r.socket.into())
    }

    /// A socket the previous daemon handed over for `key` (or, from a
    /// daemon before per-entry listeners, one on `port`), made ready to
    /// listen again.
    pub fn take_inherited(
        &mut self,
        key: &IngressKey,
        port: Option<u16>,
    ) -> Option<std::net::TcpListener> {
        let port_of = |l: &std::net::TcpListener| l.local_addr().ok().map(|a| a.port());
        let found = match self.inherited.remove(key) {
            Some(l) if port.is_none() || port_of(&l) == port => Some(l),
            Some(other) => {
                // Its entry now wants another port: the socket is not reused.
                drop(other);
                None
            }
            None => None,
        };
        let found = found.or_else(|| {
            let port = port?;
            let k = self
                .inherited
                .iter()
                .find(|(_, l)| port_of(l) == Some(port))
                .map(|(k, _)| k.clone())?;
            self.inherited.remove(&k)
        })?;
        match crate::listen::widen(&found) {
            Ok(()) => Some(found),
            Err(e) => {
                warn!(error = %e, "an inherited ingress listener");
                None
            }
        }
    }

    /// Every listener's socket: `ingress/<task>/<discovery name>`.
    pub fn fds(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.running
            .iter()
            .map(|((t, d), r)| (format!("ingress/{t}/{d}"), r.socket.as_fd()))
            .collect()
    }

    /// Stop accepting everywhere (handed over).
    pub fn stop_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.accept.abort();
        }
    }

    /// Stop a task's listeners.
    pub fn stop(&mut self, task: &str) {
        self.running.retain(|(t, _), r| {
            if t == task {
                r.accept.abort();
                false
            } else {
                true
            }
        });
    }
}
