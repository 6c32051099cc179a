//! Typed access to the pinned maps, and the one place that writes them:
//! [`Maps::sync`] turns the daemon's desired routing into map entries in an
//! order that keeps every concurrent connect routable.
use std::sync::{Arc, Mutex};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, SockHash, SockMap,
        sock::SockMapFd,
    },
};
use proxy_common::maps::{
    AccelCounters, Backend, BackendKey, CFG_ACCELERATE, CFG_LISTENER, ConnInfo, Counters,
    DatapathConfig, DenyEntry, EdgeKey, MAP_ACCEL_STATS, MAP_BACKEND_STATS, MAP_BACKENDS,
    MAP_CONFIG, MAP_CONNS, MAP_DENY, MAP_EDGES, MAP_LISTEN, MAP_ORIG, MAP_SERVICE_STATS,
    MAP_SERVICES, MAP_SOCKS, MAP_TASK_NS, OrigKey, ServiceEntry, SockKey, VipKey,
};

use super::{
    DatapathError,
    reconcile::{self, DesiredAlias, Op, Written},
};

/// `knit status` stops counting tracked connections here.
pub const MAX_COUNTED_CONNS: usize = 10_000;

/// BPF_NOEXIST: create only; an existing entry (an adopted counter) is kept.
const BPF_NOEXIST: u64 = 1;

pub struct Maps {
    services: HashMap<MapData, VipKey, ServiceEntry>,
    backends: HashMap<MapData, BackendKey, Backend>,
    svc_stats: HashMap<MapData, u32, Counters>,
    be_stats: HashMap<MapData, u32, Counters>,
    conns: HashMap<MapData, u64, ConnInfo>,
    /// `KNIT_CONFIG`, shared with the [`Heartbeat`] task.
    config: ConfigMap,
    task_ns: HashMap<MapData, u64, u32>,
    socks: SockHash<MapData, SockKey>,
    listen: SockMap<MapData>,
    accel: PerCpuArray<MapData, AccelCounters>,
    /// The service graph's L4 edges (the reader's [`EdgeBook`] uses a
    /// handle of its own).
    ///
    /// [`EdgeBook`]: crate::daemon::edges::EdgeBook
    edges: HashMap<MapData, EdgeKey, Counters>,
    /// (task, alias) pairs `allowedClients` leaves out.
    deny: HashMap<MapData, EdgeKey, DenyEntry>,
    /// Handed to the L7 proxy once (it reads it on every accept).
    orig: Option<HashMap<MapData, OrigKey, ConnInfo>>,
    /// What the routing maps hold (read once at start, then kept in step):
    /// [`Maps::sync`] writes only what differs from it.
    written: Written,
    /// Map entries written or removed by [`Maps::sync`] since start.
    writes: u64,
}

/// `KNIT_CONFIG` (one entry: the egress listener, flags, the heartbeat),
/// written from the control plane and from the heartbeat task. Each write
/// is a read-modify-write of the one entry, so the two share a lock, held
/// only for the two map syscalls.
#[derive(Clone)]
struct ConfigMap(Arc<Mutex<Array<MapData, DatapathConfig>>>);

impl ConfigMap {
    fn update(&self, change: impl FnOnce(&mut DatapathConfig)) -> Result<(), DatapathError> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut cfg = map.get(&0, 0).unwrap_or_default();
        change(&mut cfg);
        map.set(0, cfg, 0).map_err(map_err(MAP_CONFIG))
    }
}

/// Writes the heartbeat the connect hook checks before it sends a task's
/// L7 connect to the egress listener (stale after 1.5 s: L7 services fail
/// open to direct connections). Cheap to clone; safe from any thread.
#[derive(Clone)]
pub struct Heartbeat(ConfigMap);

impl Heartbeat {
    /// The daemon is alive: CLOCK_MONOTONIC now, as the kernel's
    /// `bpf_ktime_get_ns` reads it. `false` writes 0: it is gone (clean
    /// shutdown), and L7 connects go straight to endpoints at once.
    pub fn beat(&self, alive: bool) -> Result<(), DatapathError> {
        let now = if alive {
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
                .unwrap_or(0)
        } else {
            0
        };
        self.0.update(|cfg| cfg.heartbeat_ns = now)
    }

    /// How old the heartbeat in the map is (`None`: none, or unreadable).
    pub fn age(&self) -> Option<std::time::Duration> {
        let beat = {
            let map = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&0, 0).ok()?.heartbeat_ns
        };
        if beat == 0 {
            return None;
        }
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).ok()?;
        let now = now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64;
        Some(std::time::Duration::from_nanos(now.saturating_sub(beat)))
    }
}

/// Read-only handles of their own (duplicated descriptors) on the maps the
/// kernel counts in: readers that must not wait for the control plane (the
/// admin API, `/metrics`, the CLI's reads) read them while the engine
/// works. Safe from any thread.
pub struct LiveCounters {
    svc_stats: HashMap<MapData, u32, Counters>,
    be_stats: HashMap<MapData, u32, Counters>,
    conns: HashMap<MapData, u64, ConnInfo>,
    socks: SockHash<MapData, SockKey>,
    accel: PerCpuArray<MapData, AccelCounters>,
}

/// Takes sockets out of the sockhash: a socket in a sockmap cannot take
/// kTLS keys (the kernel refuses TLS on sockmap sockets), and the daemon's
/// own same-host connections go into it when accelerating.
pub struct SockRemover(SockHash<MapData, SockKey>);

impl SockRemover {
    /// Take out the socket whose end is `local` and whose peer is `remote`
    /// (IPv4), if it is in.
    pub fn remove(&mut self, local: std::net::SocketAddrV4, remote: std::net::SocketAddrV4) {
        let key = SockKey {
            local_ip: u32::from_ne_bytes(local.ip().octets()),
            remote_ip: u32::from_ne_bytes(remote.ip().octets()),
            local_port: u32::from(local.port()),
            remote_port: u32::from(remote.port()),
        };
        let _ = self.0.remove(&key);
    }
}

/// A second handle on a map: the same kernel object, its own descriptor.
fn dup<T: TryFrom<Map, Error = MapError>>(
    m: &MapData,
    name: &'static str,
) -> Result<T, DatapathError> {
    use std::os::fd::AsFd;
    let fd = m.fd().as_fd().try_clone_to_owned().map_err(|e| {
        map_err(name)(MapError::SyscallError(aya::sys::SyscallError {
            call: "dup",
            io_error: e,
        }))
    })?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    T::try_from(Map::from_map_data(data).map_err(map_err(name))?).map_err(map_err(name))
}

impl LiveCounters {
    /// Sockets in the sockhash now, counted up to [`MAX_COUNTED_CONNS`].
    pub fn accelerated_sockets(&self) -> usize {
        self.socks
            .keys()
            .take(MAX_COUNTED_CONNS)
            .filter_map(Result::ok)
            .count()
    }

    /// Connections the connect hook is tracking now, counted up to
    /// [`MAX_COUNTED_CONNS`] (each one is a syscall).
    pub fn tracked_connections(&self) -> usize {
        self.conns
            .keys()
            .take(MAX_COUNTED_CONNS)
            .filter_map(Result::ok)
            .count()
    }

    /// The kernel's counters of an alias (by service id).
    pub fn service(&self, service_id: u32) -> Option<Counters> {
        self.svc_stats.get(&service_id, 0).ok()
    }

    /// The kernel's counters of a backend (by backend id).
    pub fn backend(&self, backend_id: u32) -> Option<Counters> {
        self.be_stats.get(&backend_id, 0).ok()
    }

    /// The fast path's totals, summed over the CPUs.
    pub fn accel(&self) -> AccelCounters {
        let mut t = AccelCounters::default();
        if let Ok(per_cpu) = self.accel.get(&0, 0) {
            for c in per_cpu.iter() {
                t.inserted += c.inserted;
                t.redirected_msgs += c.redirected_msgs;
                t.redirected_bytes += c.redirected_bytes;
                t.tcp_fallback += c.tcp_fallback;
            }
        }
        t
    }
}

fn map_err(name: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |e| DatapathError::Map {
        name,
        source: Box::new(e),
    }
}

fn take<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, DatapathError> {
    let m = ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))?;
    HashMap::try_from(m).map_err(map_err(name))
}

/// Ignore "already there" / "not there" answers where they are expected.
fn tolerate(r: Result<(), MapError>, name: &'static str) -> Result<(), DatapathError> {
    match r {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e))
            if matches!(e.io_error.raw_os_error(), Some(libc::EEXIST | libc::ENOENT)) =>
        {
            Ok(())
        }
        Err(e) => Err(map_err(name)(e)),
    }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            services: take(ebpf, MAP_SERVICES)?,
            backends: take(ebpf, MAP_BACKENDS)?,
            svc_stats: take(ebpf, MAP_SERVICE_STATS)?,
            be_stats: take(ebpf, MAP_BACKEND_STATS)?,
            conns: take(ebpf, MAP_CONNS)?,
            config: {
                let m = ebpf
                    .take_map(MAP_CONFIG)
                    .ok_or(DatapathError::MissingMap(MAP_CONFIG))?;
                ConfigMap(Arc::new(Mutex::new(
                    Array::try_from(m).map_err(map_err(MAP_CONFIG))?,
                )))
            },
            orig: Some(take(ebpf, MAP_ORIG)?),
            task_ns: take(ebpf, MAP_TASK_NS)?,
            socks: {
                let m = ebpf
                    .take_map(MAP_SOCKS)
                    .ok_or(DatapathError::MissingMap(MAP_SOCKS))?;
                SockHash::try_from(m).map_err(map_err(MAP_SOCKS))?
            },
            listen: {
                let m = ebpf
                    .take_map(MAP_LISTEN)
                    .ok_or(DatapathError::MissingMap(MAP_LISTEN))?;
                SockMap::try_from(m).map_err(map_err(MAP_LISTEN))?
            },
            accel: {
                let m = ebpf
                    .take_map(MAP_ACCEL_STATS)
                    .ok_or(DatapathError::MissingMap(MAP_ACCEL_STATS))?;
                PerCpuArray::try_from(m).map_err(map_err(MAP_ACCEL_STATS))?
            },
            edges: take(ebpf, MAP_EDGES)?,
            deny: take(ebpf, MAP_DENY)?,
            written: Written::default(),
            writes: 0,
        }
        .read_written())
    }

    /// What an adopted datapath's maps hold (empty for a new one).
    fn read_written(mut self) -> Self {
        self.written = Written {
            task_ns: self.task_ns.iter().filter_map(Result::ok).collect(),
            services: self.services.iter().filter_map(Result::ok).collect(),
            backends: self.backends.iter().filter_map(Result::ok).collect(),
            svc_stats: self.svc_stats.keys().filter_map(Result::ok).collect(),
            be_stats: self.be_stats.keys().filter_map(Result::ok).collect(),
            deny: self
                .deny
                .iter()
                .filter_map(Result::ok)
                .map(|(k, v)| (k, v.action))
                .collect(),
        };
        self
    }

    /// Map entries [`Maps::sync`] wrote or removed since start.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Handles of their own on the counting maps, for readers off the
    /// engine's lock.
    pub fn live_counters(&self) -> Result<LiveCounters, DatapathError> {
        Ok(LiveCounters {
            svc_stats: dup(self.svc_stats.map(), MAP_SERVICE_STATS)?,
            be_stats: dup(self.be_stats.map(), MAP_BACKEND_STATS)?,
            conns: dup(self.conns.map(), MAP_CONNS)?,
            socks: dup(
                IterableMap::<SockKey, std::os::fd::RawFd>::map(&self.socks),
                MAP_SOCKS,
            )?,
            accel: dup(self.accel.map(), MAP_ACCEL_STATS)?,
        })
    }

    /// A handle of its own on the sockhash, to take sockets out of it.
    pub fn sock_remover(&self) -> Result<SockRemover, DatapathError> {
        Ok(SockRemover(dup(
            IterableMap::<SockKey, std::os::fd::RawFd>::map(&self.socks),
            MAP_SOCKS,
        )?))
    }

    /// A handle of its own on `KNIT_EDGES`, for the reader's edge book
    /// (which also removes the pairs of tasks that are gone).
    pub fn edge_map(&self) -> Result<HashMap<MapData, EdgeKey, Counters>, DatapathError> {
        dup(self.edges.map(), MAP_EDGES)
    }

    /// The sockhash, for attaching sk_msg.
    pub(super) fn socks_fd(&self) -> &SockMapFd {
        self.socks.fd()
    }

    /// Publish the egress listener in `KNIT_LISTEN`: when it closes (this
    /// daemon dies), the kernel drops it and L7 connects fail open at once.
    pub fn publish_listener<F: std::os::fd::AsRawFd>(
        &mut self,
        listener: &F,
    ) -> Result<(), DatapathError> {
        self.listen
            .set(0, listener, 0)
            .map_err(map_err(MAP_LISTEN))?;
        self.config.update(|cfg| cfg.flags |= CFG_LISTENER)
    }

    /// Turn same-host acceleration on or off for connections established
    /// from now on (established ones keep their path).
    pub fn set_accelerate(&mut self, on: bool) -> Result<(), DatapathError> {
        self.config.update(|cfg| {
            if on {
                cfg.flags |= CFG_ACCELERATE;
            } else {
                cfg.flags &= !CFG_ACCELERATE;
            }
        })
    }

    /// The map of proxied connections' original VIPs, for the L7 proxy.
    pub fn take_orig(&mut self) -> Option<HashMap<MapData, OrigKey, ConnInfo>> {
        self.orig.take()
    }

    /// The daemon is alive (see [`Heartbeat::beat`]).
    pub fn heartbeat(&mut self, alive: bool) -> Result<(), DatapathError> {
        self.heartbeat_handle().beat(alive)
    }

    /// A handle that writes the heartbeat from a task of its own, so that
    /// nothing the control plane does (a lock held over a slow etcd, say)
    /// can make it stale while the proxy works.
    pub fn heartbeat_handle(&self) -> Heartbeat {
        Heartbeat(self.config.clone())
    }

    /// Tell the connect hook where the egress listener is.
    pub fn set_egress(&mut self, addr: std::net::SocketAddrV4) -> Result<(), DatapathError> {
        self.config.update(|cfg| {
            cfg.egress_ip = u32::from(*addr.ip()).to_be();
            cfg.egress_port = addr.port().to_be();
        })
    }

    /// Make the maps route exactly `desired`, and hold counters for exactly
    /// the aliases in `desired` and the backends in `backend_ids`.
    ///
    /// Order matters because connects run concurrently: a growing alias gets
    /// its new slots before its count; a shrinking one its count first, so a
    /// connect never picks a slot that is not (yet or any more) written.
    pub fn sync(
        &mut self,
        desired: &[DesiredAlias],
        rest: &reconcile::DesiredRest,
    ) -> Result<(), DatapathError> {
        for op in reconcile::plan(&self.written, desired, rest) {
            self.write(op)?;
            self.written.record(op);
            self.writes += 1;
        }
        Ok(())
    }

    /// One write of [`reconcile::plan`].
    fn write(&mut self, op: Op) -> Result<(), DatapathError> {
        match op {
            Op::PutTaskNs(cg, ns) => self.task_ns.insert(cg, ns, 0).map_err(map_err(MAP_TASK_NS)),
            Op::DelTaskNs(cg) => tolerate(self.task_ns.remove(&cg), MAP_TASK_NS),
            Op::NewBackendStats(id) => tolerate(
                self.be_stats.insert(id, Counters::default(), BPF_NOEXIST),
                MAP_BACKEND_STATS,
            ),
            Op::NewServiceStats(id) => tolerate(
                self.svc_stats.insert(id, Counters::default(), BPF_NOEXIST),
                MAP_SERVICE_STATS,
            ),
            Op::PutService(key, entry) => self
                .services
                .insert(key, entry, 0)
                .map_err(map_err(MAP_SERVICES)),
            Op::PutBackend(key, be) => self
                .backends
                .insert(key, be, 0)
                .map_err(map_err(MAP_BACKENDS)),
            Op::DelService(key) => tolerate(self.services.remove(&key), MAP_SERVICES),
            Op::DelBackend(key) => tolerate(self.backends.remove(&key), MAP_BACKENDS),
            Op::DelServiceStats(id) => tolerate(self.svc_stats.remove(&id), MAP_SERVICE_STATS),
            Op::DelBackendStats(id) => tolerate(self.be_stats.remove(&id), MAP_BACKEND_STATS),
            Op::PutDeny(key, action) => {
                // The count so far stays (a change of mode is not a reset).
                let count = self.deny.get(&key, 0).map_or(0, |e| e.count);
                let entry = DenyEntry {
                    action,
                    _pad: 0,
                    count,
                };
                self.deny.insert(key, entry, 0).map_err(map_err(MAP_DENY))
            }
            Op::DelDeny(key) => tolerate(self.deny.remove(&key), MAP_DENY),
        }
    }

    /// Each refused (or audited) (task, alias) pair's connects so far.
    pub fn denials(&self) -> Vec<(EdgeKey, DenyEntry)> {
        self.deny.iter().filter_map(Result::ok).collect()
    }

    /// The kernel's counters of an alias (by service id).
    pub fn service_counters(&self, service_id: u32) -> Option<Counters> {
        self.svc_stats.get(&service_id, 0).ok()
    }

    /// The kernel's counters of a backend (by backend id).
    pub fn backend_counters(&self, backend_id: u32) -> Option<Counters> {
        self.be_stats.get(&backend_id, 0).ok()
    }
}
