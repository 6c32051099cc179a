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
use tracing::{info, warn};

use super::{AliasRoute, Proxy, forward};

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
                        tokio::spawn(forward::serve_connection(
                            s,
                            forward::Target::Fixed(route.clone()),
                            proxy.clone(),
                        ));
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
