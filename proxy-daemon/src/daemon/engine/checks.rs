//! Health checks: which are due, and their verdicts.
use super::*;

impl Engine {
    /// The health check of a task's task definition revision, if it has one.
    pub(super) fn health_spec(&self, t: &TaskRecord) -> Option<HealthCheck> {
        self.task_definition_of(t)?.health_check.clone()
    }

    /// Health checks to run now: (task, check, cgroup, environment).
    pub fn due_health_checks(
        &mut self,
    ) -> Vec<(String, HealthCheck, PathBuf, BTreeMap<String, String>)> {
        let now = Instant::now();
        let due: Vec<(String, HealthCheck)> = self
            .health_checks
            .iter_mut()
            .filter_map(|(id, h)| h.start_if_due(now).then(|| (id.clone(), h.spec.clone())))
            .collect();
        due.into_iter()
            .filter_map(|(id, spec)| {
                let t = self.state.tasks.get(&id)?;
                Some((id, spec, t.cgroup.clone(), self.task_env(t)))
            })
            .collect()
    }

    /// A check's result; a change of verdict changes the rotation.
    pub fn record_health(&mut self, task_id: &str, passed: bool) -> anyhow::Result<()> {
        if self.retired {
            return Ok(());
        }
        let Some(h) = self.health_checks.get_mut(task_id) else {
            return Ok(());
        };
        if !h.record(passed, Instant::now()) {
            return Ok(());
        }
        let status = h.status;
        if let Some(t) = self.state.tasks.get_mut(task_id) {
            t.health = Some(status);
            let rec = t.clone();
            self.save_task(&rec)?;
        }
        info!(task = %task_id, ?status, "health check verdict");
        self.reconcile()
    }
}
