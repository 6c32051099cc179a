//! The L7 proxy: HTTP/1.1, HTTP/2 (cleartext) and gRPC through the daemon.
//!
//! The connect hook sends a task's connect to an L7 VIP to the egress
//! listener; on accept the proxy reads the VIP the task dialed from
//! `KNIT_ORIG` (keyed by the task's end of the connection) and serves the
//! connection with that alias's route: round-robin per request, retries,
//! outlier reports, timeouts, draining and the service's limits. Ingress listeners (one per L7
//! task port) take traffic from other hosts to the local app.
pub mod access;
mod body;
mod budget;
pub mod dataplane;
mod forward;
pub use forward::fuzz_request_head;
mod idle;
mod ingress;
mod limits;
mod pool;
mod routes;
mod tlsdial;
mod tunnel;
mod upgrade;
use crate::datapath::SockRemover;
pub use tunnel::choose_path as choose_tunnel_path;

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use aya::maps::{HashMap, MapData};
pub use ingress::{IngressKey, IngressListeners};
use proxy_common::maps::{CONN_TUNNEL, ConnInfo, OrigKey};
pub use routes::{AliasRoute, Endpoint, EndpointHealth, RouteTable, TestLane};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tracing::{debug, warn};

pub use self::budget::RetryBudget;
pub use self::dataplane::DataPlane;
pub use self::pool::ServicePool;

/// What the proxy tells the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyEvent {
    /// An endpoint reached the consecutive-failure threshold.
    Failing { backend_id: u32 },
}

/// Shared by every connection the proxy serves.
pub struct Proxy {
    pub routes: ArcSwap<RouteTable>,
    /// Local tasks by cgroup id: who sends what the egress listener takes.
    pub sources: ArcSwap<std::collections::BTreeMap<u64, Arc<access::Source>>>,
    pub access_log: access::AccessLog,
    pub metrics: crate::metrics::ProxyMetrics,
    orig: HashMap<MapData, OrigKey, ConnInfo>,
    events: mpsc::UnboundedSender<ProxyEvent>,
    /// Handed over to a new daemon: finish what is in flight, then close.
    retiring: std::sync::atomic::AtomicBool,
    retire_notify: tokio::sync::Notify,
    /// Downstream connections being served.
    live: std::sync::atomic::AtomicUsize,
    /// The threads that serve connections.
    pub dataplane: DataPlane,
    /// This host's service identities and the trust bundle (mutual TLS
    /// with other hosts).
    pub tls: Arc<crate::tls::Identities>,
    /// TCP between hosts is handed to the kernel's TLS after the handshake.
    ktls: std::sync::atomic::AtomicBool,
}

impl Proxy {
    pub fn new(
        orig: HashMap<MapData, OrigKey, ConnInfo>,
        events: mpsc::UnboundedSender<ProxyEvent>,
        dataplane: DataPlane,
        tls: Arc<crate::tls::Identities>,
    ) -> Self {
        let metrics = crate::metrics::ProxyMetrics::default();
        Self {
            routes: ArcSwap::from_pointee(RouteTable::default()),
            sources: ArcSwap::default(),
            access_log: access::AccessLog::start(metrics.access_log_dropped.clone()),
            metrics,
            orig,
            events,
            retiring: Default::default(),
            retire_notify: Default::default(),
            live: Default::default(),
            dataplane,
            tls,
            ktls: Default::default(),
        }
    }

    /// Whether TCP connections between hosts go to kTLS after their
    /// handshake (set once at start, from the config and the kernel).
    pub fn ktls(&self) -> bool {
        self.ktls.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_ktls(&self, on: bool) {
        self.ktls.store(on, std::sync::atomic::Ordering::Relaxed);
        self.metrics.ktls_enabled.set(i64::from(on));
    }

    /// A new daemon took over: HTTP/1.1 answers say `Connection: close`,
    /// idle connections close.
    pub fn retire(&self) {
        self.retiring
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.retire_notify.notify_waiters();
    }

    pub fn is_retiring(&self) -> bool {
        self.retiring.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once [`Proxy::retire`] was called.
    pub async fn retired(&self) {
        let n = self.retire_notify.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if self.is_retiring() {
            return;
        }
        n.await;
    }

    /// Downstream connections still being served.
    pub fn live(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The alias a task dialed (its kernel id), the endpoint the kernel
    /// chose (TCP with tls) and who the task is: the kernel's record of its
    /// connection, by the task's end of it.
    fn conn_info(&self, peer: SocketAddr) -> Option<ConnInfo> {
        let SocketAddr::V4(peer) = peer else {
            return None;
        };
        let key = OrigKey {
            ip: u32::from(*peer.ip()).to_be(),
            port: peer.port(),
            _pad: 0,
        };
        self.orig.get(&key, 0).ok()
    }

    /// The route of an L7 connection the kernel recorded as `info`.
    fn alias_of(&self, info: ConnInfo) -> Option<forward::Target> {
        let routes = self.routes.load();
        let route = routes.aliases.get(&info.service_id)?;
        let client = self.sources.load().get(&info.cgroup_id).map(|source| {
            Arc::new(access::Client {
                edge: self.metrics.edge(&source.service, &route.service),
                target: self.metrics.for_client(&route.target, &source.service),
                source: source.clone(),
            })
        });
        Some(forward::Target::Alias(
            info.service_id,
            client,
            info.cgroup_id,
            route.identity.clone(),
            Arc::new(arc_swap::ArcSwapOption::from(Some(route.clone()))),
        ))
    }
}

/// Serve the egress listeners (an SO_REUSEPORT group, nonblocking): each
/// on a data-plane thread of its own (round-robin when there are more
/// listeners than threads: every member of the group must be accepted on,
/// the kernel spreads connects over all of them). Abort the handles to
/// stop accepting.
pub fn start_egress(
    listeners: Vec<std::net::TcpListener>,
    proxy: &Arc<Proxy>,
) -> Vec<JoinHandle<()>> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let p = proxy.clone();
            proxy.dataplane.spawn_on(i, async move {
                // Registered with the reactor of the thread that serves it.
                match TcpListener::from_std(l) {
                    Ok(l) => serve_egress(l, p).await,
                    Err(e) => warn!(error = %e, "egress listener"),
                }
            })
        })
        .collect()
}

/// Accept on the egress listener until the task is dropped. The loop only
/// accepts and spawns: each connection's lookup (a map read, a syscall) runs
/// in its own task, so a burst of connects drains the accept queue at the
/// rate accept(2) allows rather than one lookup at a time.
async fn serve_egress(listener: TcpListener, proxy: Arc<Proxy>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "egress accept");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        // Counted from the accept: a daemon handing over waits for it even
        // before its task runs (else it could exit with it accepted).
        let accepted = forward::LiveGuard::count(&proxy);
        tokio::spawn(async move {
            let _accepted = accepted;
            let Some(info) = proxy.conn_info(peer) else {
                // Not a task's connection to a VIP.
                debug!(%peer, "egress: no VIP recorded for this connection; closing");
                return;
            };
            if info.flags & CONN_TUNNEL != 0 {
                let _ = stream.set_nodelay(true);
                tunnel::egress(stream, info, proxy).await;
                return;
            }
            let Some(target) = proxy.alias_of(info) else {
                // An alias we no longer route.
                debug!(%peer, "egress: the VIP of this connection is not routed; closing");
                return;
            };
            let _ = stream.set_nodelay(true);
            forward::serve_connection(stream, target, proxy).await;
        });
    }
}
