//! A service's limits (`services[].limits`) as the proxy applies them to
//! the traffic it sends to that service, like Envoy's cluster circuit
//! breakers.
//!
//! - A *lane* is one request on an upstream connection (HTTP/1.1: the
//!   connection itself, busy until its response is read; HTTP/2: one
//!   stream). `maxConnections` lanes exist; a request takes one per attempt.
//! - When all are taken a request waits for one, if fewer than
//!   `maxPendingRequests` already wait (first come, first served); else it
//!   is refused at once (503).
//! - HTTP/1.1 connections, busy or idle, are counted too ([`OpenConn`]): the
//!   pool closes an idle one before it dials past `maxConnections`.
//!
//! One [`Limits`] per L7 alias, shared by its egress and ingress routes and
//! kept across route tables; re-applying the service changes it in place.
//! A request costs a semaphore try-acquire and an atomic load on release;
//! waiting and resizing are the slow paths.
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use proxy_config::LimitsSpec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request got no lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLane {
    /// Every lane taken and `maxPendingRequests` requests already waiting.
    Overflow,
    /// The per-request timeout passed while waiting.
    TimedOut,
}

pub struct Limits {
    lanes: Arc<Semaphore>,
    /// `maxConnections` now.
    max_connections: AtomicUsize,
    /// Lanes to retire as they come back, after `maxConnections` shrank
    /// below the lanes in use.
    debt: AtomicUsize,
    /// Serializes [`Limits::set`] (the engine's, rare).
    resize: Mutex<()>,
    /// Requests waiting for a lane.
    pending: AtomicUsize,
    max_pending: AtomicUsize,
    /// `u64::MAX`: no limit.
    max_request_bytes: AtomicU64,
    max_header_bytes: AtomicUsize,
    /// HTTP/1.1 connections open (busy, idle, or being dialed).
    open: AtomicUsize,
    /// Upgraded tunnels open, by client task (cgroup id).
    tunnels: Mutex<std::collections::HashMap<u64, usize>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self::new(&LimitsSpec::default())
    }
}

impl Limits {
    pub fn new(spec: &LimitsSpec) -> Self {
        let max = spec.max_connections() as usize;
        let l = Self {
            lanes: Arc::new(Semaphore::new(max)),
            max_connections: AtomicUsize::new(max),
            debt: AtomicUsize::new(0),
            resize: Mutex::new(()),
            pending: AtomicUsize::new(0),
            max_pending: AtomicUsize::new(0),
            max_request_bytes: AtomicU64::new(u64::MAX),
            max_header_bytes: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            tunnels: Mutex::default(),
        };
        l.set(spec);
        l
    }

    /// Take on a (re-applied) service's limits. Requests in flight keep
    /// their lanes: a smaller `maxConnections` holds as they finish.
    pub fn set(&self, spec: &LimitsSpec) {
        self.max_pending
            .store(spec.max_pending_requests() as usize, Ordering::Relaxed);
        self.max_request_bytes.store(
            spec.max_request_bytes().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.max_header_bytes
            .store(spec.max_header_bytes() as usize, Ordering::Relaxed);
        let _g = self.resize.lock().unwrap_or_else(|p| p.into_inner());
        let new = spec.max_connections() as usize;
        let old = self.max_connections.swap(new, Ordering::AcqRel);
        if new > old {
            // Cancel debt first, then add the rest.
            let mut grow = new - old;
            let _ = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    let paid = d.min(new - old);
                    grow = new - old - paid;
                    Some(d - paid)
                });
            self.lanes.add_permits(grow);
        } else if new < old {
            let gone = self.lanes.forget_permits(old - new);
            self.debt.fetch_add(old - new - gone, Ordering::AcqRel);
        }
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// `maxRequestBytes`; `None`: no limit.
    pub fn max_request_bytes(&self) -> Option<u64> {
        match self.max_request_bytes.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes.load(Ordering::Relaxed)
    }

    /// HTTP/1.1 connections open to the service's endpoints.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests waiting for a lane now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// A lane: at once when one is free; else after waiting (until
    /// `deadline`) when fewer than `maxPendingRequests` wait already.
    pub async fn lane(
        self: &Arc<Self>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Lane, NoLane> {
        if let Ok(p) = self.lanes.clone().try_acquire_owned() {
            return Ok(Lane::new(p, self.clone()));
        }
        let max = self.max_pending.load(Ordering::Relaxed);
        if self.pending.fetch_add(1, Ordering::AcqRel) >= max {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(NoLane::Overflow);
        }
        let _waiting = Waiting(&self.pending);
        let acquire = self.lanes.clone().acquire_owned();
        let got = match deadline {
            Some(d) => tokio::time::timeout_at(d, acquire)
                .await
                .map_err(|_| NoLane::TimedOut)?,
            None => acquire.await,
        };
        // The semaphore is never closed.
        got.map(|p| Lane::new(p, self.clone()))
            .map_err(|_| NoLane::Overflow)
    }

    /// Count an HTTP/1.1 connection as open until the token drops. The
    /// pool decides whether there is room ([`Limits::open`]).
    pub fn open_conn(self: &Arc<Self>) -> OpenConn {
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenConn(self.clone())
    }
}

impl Limits {
    /// The most upgraded tunnels one client task may hold open to the
    /// service: half of `maxConnections` (at least one), so that one task
    /// can never take every lane and starve the other clients.
    pub fn tunnel_share(&self) -> usize {
        (self.max_connections() / 2).max(1)
    }

    /// Count a tunnel of client task `client` (its cgroup id) while the
    /// token lives; `None` when the task holds its share already.
    pub fn tunnel(self: &Arc<Self>, client: u64) -> Option<Tunnel> {
        let share = self.tunnel_share();
        let mut t = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(client).or_default();
        if *n >= share {
            return None;
        }
        *n += 1;
        Some(Tunnel {
            limits: self.clone(),
            client,
        })
    }

    /// Tunnels client task `client` holds open.
    #[cfg(test)]
    pub fn tunnels_of(&self, client: u64) -> usize {
        let t = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        t.get(&client).copied().unwrap_or(0)
    }
}

/// One upgraded tunnel of a client task, counted until dropped.
pub struct Tunnel {
    limits: Arc<Limits>,
    client: u64,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let mut t = self
            .limits
            .tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.client);
            }
        }
    }
}

/// Counts a request as pending while it waits (also when its wait is
/// cancelled: the client went away).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request's right to an upstream connection (HTTP/1.1) or stream
/// (HTTP/2); freed when dropped.
pub struct Lane {
    permit: Option<OwnedSemaphorePermit>,
    limits: Arc<Limits>,
}

impl Lane {
    fn new(permit: OwnedSemaphorePermit, limits: Arc<Limits>) -> Self {
        Self {
            permit: Some(permit),
            limits,
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        let Some(p) = self.permit.take() else {
            return;
        };
        // After a shrink, a returning lane retires instead.
        let retired = self
            .limits
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if retired {
            p.forget();
        }
    }
}

/// An open HTTP/1.1 connection to one of the service's endpoints.
pub struct OpenConn(Arc<Limits>);

impl Drop for OpenConn {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(conns: u32, pending: u32) -> LimitsSpec {
        LimitsSpec {
            max_connections: Some(conns),
            max_pending_requests: Some(pending),
            ..LimitsSpec::default()
        }
    }

    fn soon() -> Option<tokio::time::Instant> {
        Some(tokio::time::Instant::now() + std::time::Duration::from_millis(50))
    }

    #[tokio::test]
    async fn lanes_then_pending_then_overflow() {
        let l = Arc::new(Limits::new(&spec(2, 1)));
        let a = l.lane(None).await;
        let b = l.lane(None).await;
        assert!(a.is_ok() && b.is_ok());
        // The third waits (one may), the fourth is refused at once.
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.lane(None).await.ok() }
        });
        while l.pending() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
        drop(a);
        let c = waiter.await.ok().flatten();
        assert!(c.is_some(), "the waiter got the lane freed");
        assert_eq!(l.pending(), 0);
        // Waiting ends at the deadline (both lanes still taken).
        assert_eq!(l.lane(soon()).await.err(), Some(NoLane::TimedOut));
        assert_eq!(l.pending(), 0);
    }

    #[tokio::test]
    async fn zero_pending_never_waits() {
        let l = Arc::new(Limits::new(&spec(1, 0)));
        let _a = l.lane(None).await;
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
    }

    #[tokio::test]
    async fn shrinking_retires_lanes_as_they_return_and_growing_cancels_that() {
        let l = Arc::new(Limits::new(&spec(3, 0)));
        let lanes: Vec<Lane> = [l.lane(None).await, l.lane(None).await]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(lanes.len(), 2);
        // 3 -> 1 with 2 in use: one free lane goes now, one on return.
        l.set(&spec(1, 0));
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
        let mut lanes = lanes.into_iter();
        drop(lanes.next());
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
        drop(lanes.next());
        let one = l.lane(None).await;
        assert!(one.is_ok());
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
        drop(one);
        // 1 -> 1 again changes nothing; 1 -> 2 adds one.
        l.set(&spec(1, 0));
        l.set(&spec(2, 0));
        let (x, y) = (l.lane(None).await, l.lane(None).await);
        assert!(x.is_ok() && y.is_ok());
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
    }

    #[tokio::test]
    async fn growing_while_in_debt_pays_the_debt_first() {
        let l = Arc::new(Limits::new(&spec(2, 0)));
        let (a, b) = (l.lane(None).await, l.lane(None).await);
        l.set(&spec(1, 0)); // debt 1
        l.set(&spec(3, 0)); // pays it, adds one
        let c = l.lane(None).await;
        assert!(c.is_ok());
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
        drop((a, b, c));
        let all: Vec<Lane> = [l.lane(None).await, l.lane(None).await, l.lane(None).await]
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(l.lane(None).await.err(), Some(NoLane::Overflow));
    }

    #[test]
    fn a_client_task_gets_half_the_tunnels() {
        let l = Arc::new(Limits::new(&spec(3, 0)));
        assert_eq!(l.tunnel_share(), 1);
        let a = l.tunnel(7);
        assert!(a.is_some());
        assert!(l.tunnel(7).is_none(), "task 7 holds its share");
        let b = l.tunnel(8);
        assert!(b.is_some(), "another task has its own");
        drop(a);
        assert_eq!(l.tunnels_of(7), 0);
        assert!(l.tunnel(7).is_some());
        l.set(&spec(10, 0));
        assert_eq!(l.tunnel_share(), 5);
        let l1 = Arc::new(Limits::new(&spec(1, 0)));
        assert_eq!(l1.tunnel_share(), 1);
    }

    #[test]
    fn sizes_and_open_connections() {
        let l = Arc::new(Limits::default());
        assert_eq!(
            (
                l.max_connections(),
                l.max_request_bytes(),
                l.max_header_bytes()
            ),
            (1024, None, 65536)
        );
        l.set(&LimitsSpec {
            max_request_bytes: Some(10),
            max_header_bytes: Some(2048),
            ..LimitsSpec::default()
        });
        assert_eq!(
            (l.max_request_bytes(), l.max_header_bytes()),
            (Some(10), 2048)
        );
        let c = l.open_conn();
        assert_eq!(l.open(), 1);
        drop(c);
        assert_eq!(l.open(), 0);
    }
}
