//! Ingress listeners: other hosts reach this host's L7 tasks through them.
use super::*;

impl Engine {
    /// Start ingress listeners for a task's L7 ports (once per port).
    pub(super) fn start_ingress(&mut self, task_id: &str) {
        let Some(t) = self.state.tasks.get(task_id).cloned() else {
            return;
        };
        let Some(s) = self
            .state
            .services
            .iter()
            .find(|s| s.spec.name == t.service)
        else {
            return;
        };
        let addr = self.cfg.host.address;
        let mut changed = false;
        let mut ports = t.ports.clone();
        let mut assigned: Vec<u16> = Vec::new();
        for p in &mut ports {
            let Some(a) = s
                .aliases
                .iter()
                .find(|a| a.spec.port_name == p.name && is_l7(a))
            else {
                continue;
            };
            let app = SocketAddr::from((addr, p.port));
            let route = build_route(
                s,
                a,
                &[(t.id.clone(), app, p.backend_id)],
                // The sending host chose this task (test lane or not).
                &[],
                RouteParts {
                    health: &mut self.health,
                    budget: self.budgets.entry(a.service_id).or_default().clone(),
                    // Its own cursor: one endpoint, nothing to rotate.
                    cursor: Arc::default(),
                    test_cursor: Arc::default(),
                    pool: self.pools.entry(a.service_id).or_default().clone(),
                    outlier: &self.cfg.outlier,
                    metrics: &self.proxy.metrics,
                },
            );
            // Keep the port a task had (a restarted daemon listens again there).
            let want = match p.ingress_port.or(a.spec.ingress_port_override) {
                Some(port) => port,
                None => match self.alloc_port(&assigned) {
                    Ok(port) => port,
                    Err(e) => {
                        warn!(task = %t.id, error = %e, "no free port for an ingress listener");
                        continue;
                    }
                },
            };
            match self.ingress.start(
                &t.id,
                &p.name,
                SocketAddr::from((addr, want)),
                route,
                self.proxy.clone(),
            ) {
                Ok(port) => {
                    changed |= p.ingress_port != Some(port);
                    p.ingress_port = Some(port);
                    assigned.push(port);
                }
                Err(e) => {
                    warn!(task = %t.id, port = %p.name, error = %e, "could not start the ingress listener")
                }
            }
        }
        if changed && let Some(rec) = self.state.tasks.get_mut(task_id) {
            rec.ports = ports;
            let rec = rec.clone();
            if let Err(e) = self.save_task(&rec) {
                warn!(task = %task_id, error = %e, "recording the ingress port");
            }
        }
    }
}
