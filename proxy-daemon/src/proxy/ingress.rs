//! Ingress listeners: one per L7 task port, where other hosts' egress sends
//! requests for this host's task (same-host traffic goes straight to the
//! app). Each forwards to its local app with the proxy's request path.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::Arc,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use super::{AliasRoute, Proxy, forward};

#[derive(Default)]
pub struct IngressListeners {
    /// (task id, port name) -> the listener's task, and a copy of its
    /// socket (to hand over to a new daemon).
    running: HashMap<(String, String), (JoinHandle<()>, OwnedFd)>,
    /// Listeners the previous daemon handed over, by (task id, port name).
    pub inherited: HashMap<(String, String), std::net::TcpListener>,
}

impl IngressListeners {
    /// Listen on `listen` (port 0: any free port) for `route`'s one local
    /// endpoint. Returns the port listened on.
    /// Must run inside the tokio runtime.
    pub fn start(
        &mut self,
        task: &str,
        port_name: &str,
        listen: SocketAddr,
        route: Arc<AliasRoute>,
        proxy: Arc<Proxy>,
    ) -> std::io::Result<u16> {
        let key = (task.to_string(), port_name.to_string());
        let l = match self.inherited.remove(&key) {
            Some(l) if listen.port() == 0 || l.local_addr()?.port() == listen.port() => {
                crate::listen::widen(&l)?;
                l
            }
            _ => crate::listen::tcp(listen)?,
        };
        l.set_nonblocking(true)?;
        let copy: OwnedFd = l.try_clone()?.into();
        let l = TcpListener::from_std(l)?;
        let port = l.local_addr()?.port();
        info!(task, port_name, port, "ingress listener");
        let h = tokio::spawn(async move {
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
        self.running.insert(key, (h, copy));
        Ok(port)
    }

    /// Every listener's socket: `ingress/<task>/<port name>`.
    pub fn fds(&self) -> Vec<(String, BorrowedFd<'_>)> {
        self.running
            .iter()
            .map(|((t, p), (_, fd))| (format!("ingress/{t}/{p}"), fd.as_fd()))
            .collect()
    }

    /// Stop accepting everywhere (handed over).
    pub fn stop_all(&mut self) {
        for (_, (h, _)) in self.running.drain() {
            h.abort();
        }
    }

    /// Stop a task's listeners.
    pub fn stop(&mut self, task: &str) {
        self.running.retain(|(t, _), (h, _)| {
            if t == task {
                h.abort();
                false
            } else {
                true
            }
        });
    }
}
