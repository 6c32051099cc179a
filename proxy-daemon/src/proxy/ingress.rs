//! Ingress listeners: one per L7 task port, where other hosts' egress sends
//! requests for this host's task (same-host traffic goes straight to the
//! app). Each forwards to its local app with the proxy's request path.
use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{info, warn};

use super::{AliasRoute, Proxy, forward};

#[derive(Default)]
pub struct IngressListeners {
    /// (task id, port name) -> the listener's task.
    running: HashMap<(String, String), JoinHandle<()>>,
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
        let l = std::net::TcpListener::bind(listen)?;
        l.set_nonblocking(true)?;
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
        self.running
            .insert((task.to_string(), port_name.to_string()), h);
        Ok(port)
    }

    /// Stop a task's listeners.
    pub fn stop(&mut self, task: &str) {
        self.running.retain(|(t, _), h| {
            if t == task {
                h.abort();
                false
            } else {
                true
            }
        });
    }
}
