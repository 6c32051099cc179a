//! The monitor's outlier pass: ejections from the kernel's and the proxy's
//! failure counts.
use super::*;

/// One alias as the outlier pass sees it.
struct Group<'a> {
    service: &'a str,
    cfg: OutlierConfig,
    /// Running, ready, not draining: in rotation or ejected.
    members: Vec<u32>,
    /// (backend id, failures in a row).
    counts: Vec<(u32, u64)>,
}

impl Engine {
    /// Failures in a row of an endpoint: for L7 the 5xx answers and failed
    /// connects the proxy saw, for L4 the failed connects the kernel saw.
    pub(super) fn consecutive_failures(&self, backend_id: u32, l7: bool) -> Option<u64> {
        if l7 {
            Some(self.health.get(&backend_id).map_or(0, |h| {
                u64::from(h.consecutive_failures.load(Ordering::Relaxed))
            }))
        } else {
            self.dp
                .maps
                .backend_counters(backend_id)
                .map(|c| c.consecutive_failures)
        }
    }

    /// An ejection or a return, for the dashboard's history.
    fn record_ejection(&self, backend_id: u32, event: &'static str, failures: u64, now: Instant) {
        let Some((service, task, endpoint)) = self.reader.endpoint_of(backend_id) else {
            return;
        };
        self.reader
            .history
            .ejection(crate::daemon::history::EjectionEvent {
                at_unix_ms: now_ms(),
                service,
                task,
                endpoint: endpoint.to_string(),
                event,
                failures,
                for_ms: self
                    .outliers
                    .out_for(backend_id, now)
                    .map_or(0, |d| d.as_millis() as u64),
            });
    }

    /// One pass of the monitor: task liveness, draining, outliers.
    pub fn tick(&mut self) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        self.count_denials();
        let now = Instant::now();
        let gone: Vec<(String, &'static str)> = self
            .state
            .tasks
            .values()
            .filter_map(|t| {
                if t.pid.is_some() && !cgroup::is_populated(&t.cgroup) {
                    Some((t.id.clone(), "its processes exited"))
                } else if t.pid.is_none()
                    && now_ms().saturating_sub(t.started_unix_ms) > START_GRACE_MS
                {
                    Some((t.id.clone(), "it never started"))
                } else if t.draining && self.drained(t) {
                    Some((t.id.clone(), "drained"))
                } else if t.draining
                    && now_ms().saturating_sub(t.drain_started_unix_ms)
                        > self.cfg.proxy.drain_timeout_ms
                {
                    Some((t.id.clone(), "its drain timed out"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in gone {
            self.task_gone(&id, why)?;
        }
        // etcd may be away: the rest of the tick goes on regardless.
        if let Err(e) = self.drain_deleted() {
            warn!(error = %format!("{e:#}"), "deleted services");
        }
        self.reap();
        let returning: Vec<u32> = self.outliers.due(now);
        for id in returning {
            // L7 counts restart from zero (the proxy reports the endpoint
            // again as it crosses the threshold); the kernel's L4 count is
            // not ours to reset, so new failures count from where it is.
            let c = match self.health.get(&id) {
                Some(h) => {
                    h.consecutive_failures.store(0, Ordering::Relaxed);
                    0
                }
                None => self.consecutive_failures(id, false).unwrap_or(0),
            };
            self.outliers.restore(id, c);
            self.record_ejection(id, "returned", 0, now);
        }
        let mut changed = false;
        let cfg = self.cfg.outlier.clone();
        // Per alias: its endpoints that are running, ready and not draining
        // (in rotation or ejected), and their failures in a row. An alias
        // with no failure anywhere is skipped: looking at it changes nothing.
        let mut groups: Vec<Group<'_>> = Vec::new();
        let all = self.state.members(self.cfg.host.address);
        for s in &self.state.services {
            let all = all.get(s.spec.name.as_str()).map_or(&[][..], |m| m);
            for a in &s.aliases {
                let members: Vec<u32> = all
                    .iter()
                    .filter(|m| m.task.pid.is_some() && !m.task.draining)
                    .flat_map(|m| {
                        m.task
                            .ports
                            .iter()
                            .filter(|p| p.name == a.spec.port_name && p.ready)
                    })
                    .map(|p| p.backend_id)
                    .collect();
                // A TCP alias whose failed connects did not grow since the
                // last pass has no endpoint whose failures grew: one
                // counter read instead of one per endpoint.
                if !is_l7(a) {
                    let failed = self
                        .dp
                        .maps
                        .service_counters(a.service_id)
                        .map_or(0, |c| c.failed);
                    let before = self.l4_failed_seen.insert(a.service_id, failed);
                    if before == Some(failed) && members.iter().all(|id| self.outliers.quiet(*id)) {
                        continue;
                    }
                }
                let counts: Vec<(u32, u64)> = members
                    .iter()
                    .filter_map(|id| Some((*id, self.consecutive_failures(*id, is_l7(a))?)))
                    .collect();
                if counts
                    .iter()
                    .all(|(id, c)| *c == 0 && self.outliers.quiet(*id))
                {
                    continue;
                }
                groups.push(Group {
                    service: &s.spec.name,
                    cfg: outlier_config(&cfg, a),
                    members,
                    counts,
                });
            }
        }
        let mut ejected_now = Vec::new();
        for Group {
            service,
            cfg,
            members,
            counts,
        } in groups
        {
            for (id, consecutive) in counts {
                let ejected = members
                    .iter()
                    .filter(|m| self.outliers.is_ejected(**m))
                    .count();
                if self
                    .outliers
                    .observe(&cfg, id, consecutive, members.len(), ejected, now)
                {
                    ejected_now.push((service.to_string(), id, consecutive));
                }
            }
        }
        for (service, id, consecutive) in ejected_now {
            warn!(backend = id, service = %service, failures = consecutive, "ejecting an endpoint that keeps failing");
            self.record_ejection(id, "ejected", consecutive, now);
            changed = true;
        }
        if changed || self.outliers.take_returned() {
            self.reconcile()?;
        }
        Ok(())
    }
}
