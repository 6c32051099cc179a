//! The data plane's own threads: each runs a single-threaded tokio runtime
//! that serves proxied connections and nothing else. A connection, the
//! upstream connections its requests open, their timers and their wakeups
//! stay on the thread that accepted it: no work stealing, no cross-thread
//! wakeups, one timer wheel per thread. The control plane (the engine, the
//! registry, health checks, the admin listener) runs on the daemon's other
//! runtime, so nothing it does delays a request.
use std::{
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::{runtime::Handle, task::JoinHandle};

/// The data-plane threads, by handle.
pub struct DataPlane {
    handles: Vec<Handle>,
    /// Round-robin for work that has no thread of its own (an ingress
    /// listener's accept loop).
    next: AtomicUsize,
}

impl DataPlane {
    /// Start `threads` threads (`knit-proxy-<i>`), each driving its own
    /// current-thread runtime until the process exits.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("knit-proxy-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(Self {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    pub fn threads(&self) -> usize {
        self.handles.len()
    }

    /// Run `f` on thread `i` (modulo the thread count).
    pub fn spawn_on<F>(&self, i: usize, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handles[i % self.handles.len()].spawn(f)
    }

    /// Run `f` on the next thread, round-robin.
    pub fn spawn<F>(&self, f: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.spawn_on(i, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_on_its_own_thread() -> std::io::Result<()> {
        let dp = DataPlane::start(2)?;
        assert_eq!(dp.threads(), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let names = rt.block_on(async {
            let mut names = Vec::new();
            for i in 0..4 {
                let h = dp.spawn_on(i, async {
                    // Timers and I/O work there.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    std::thread::current().name().map(str::to_string)
                });
                names.push(h.await.ok().flatten());
            }
            names
        });
        let names: Vec<_> = names.iter().map(|n| n.as_deref()).collect();
        assert_eq!(
            names,
            [
                Some("knit-proxy-0"),
                Some("knit-proxy-1"),
                Some("knit-proxy-0"),
                Some("knit-proxy-1")
            ]
        );
        Ok(())
    }
}
