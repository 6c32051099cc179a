//! The maps, pinned by name under the daemon's bpffs dir so that a restarted
//! daemon (and the programs it left attached) share them.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockHash, SockMap},
};
use proxy_common::maps::{
    AccelCounters, Backend, BackendKey, ConnInfo, Counters, DatapathConfig, DenyEntry, EdgeKey,
    MAX_BACKEND_SLOTS, MAX_BACKENDS, MAX_CONNS, MAX_DENY, MAX_EDGES, MAX_SERVICES, MAX_SOCKS,
    MAX_TASKS, OrigKey, ServiceEntry, SockKey, SockState, VipKey,
};

/// VIP:port -> service (written by the daemon).
#[map]
pub static KNIT_SERVICES: HashMap<VipKey, ServiceEntry> = HashMap::pinned(MAX_SERVICES, 0);

/// (service, slot) -> backend address (written by the daemon).
#[map]
pub static KNIT_BACKENDS: HashMap<BackendKey, Backend> = HashMap::pinned(MAX_BACKEND_SLOTS, 0);

/// Round-robin cursor per service, shared by all CPUs (kernel only; atomic).
#[map]
pub static KNIT_RR: Array<u32> = Array::pinned(MAX_SERVICES, 0);

/// Socket cookie -> what connect decided (kernel writes, daemon may read).
#[map]
pub static KNIT_CONNS: LruHashMap<u64, ConnInfo> = LruHashMap::pinned(MAX_CONNS, 0);

/// Service id -> counters (daemon creates entries, kernel adds).
#[map]
pub static KNIT_SVC_STATS: HashMap<u32, Counters> = HashMap::pinned(MAX_SERVICES, 0);

/// Backend id -> counters (daemon creates entries, kernel adds).
#[map]
pub static KNIT_BE_STATS: HashMap<u32, Counters> = HashMap::pinned(MAX_BACKENDS, 0);

/// (task cgroup, TCP alias) -> counters: the service graph's L4 edges
/// (sockops creates and adds; the daemon reads, and removes the entries of
/// tasks that are gone).
#[map]
pub static KNIT_EDGES: LruHashMap<EdgeKey, Counters> = LruHashMap::pinned(MAX_EDGES, 0);

/// (task cgroup, alias) -> refuse or count: the pairs whose alias's
/// `allowedClients` leaves the task's service out (the daemon writes them
/// before the task may connect; the kernel counts).
#[map]
pub static KNIT_DENY: HashMap<EdgeKey, DenyEntry> = HashMap::pinned(MAX_DENY, 0);

/// [0]: the daemon's egress listener and heartbeat (written by the daemon).
#[map]
pub static KNIT_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Client end (address, port) of a connection to the egress listener -> the
/// VIP it dialed (kernel writes on establish, removes on close; daemon reads).
#[map]
pub static KNIT_ORIG: LruHashMap<OrigKey, ConnInfo> = LruHashMap::pinned(MAX_CONNS, 0);

/// A task's cgroup id -> its service's namespace (written by the daemon
/// before the task runs).
#[map]
pub static KNIT_TASK_NS: HashMap<u64, u32> = HashMap::pinned(MAX_TASKS, 0);

/// Same-host sockets of knit's paths, by their own end (sockops inserts them
/// when established; the kernel removes them on close). The sk_msg program
/// is attached here.
#[map]
pub static KNIT_SOCKS: SockHash<SockKey> = SockHash::pinned(MAX_SOCKS, 0);

/// What the sk_msg program decided for each socket in `KNIT_SOCKS`
/// (sockops creates the entry with the insert and removes it on close).
#[map]
pub static KNIT_SOCK_STATE: LruHashMap<SockKey, SockState> = LruHashMap::pinned(MAX_SOCKS, 0);

/// [0]: the fast path's totals, per CPU (kernel adds, daemon sums): no
/// cache line shared between CPUs on every send.
#[map]
pub static KNIT_ACCEL_STATS: PerCpuArray<AccelCounters> = PerCpuArray::pinned(1, 0);

/// [0]: the daemon's egress listener (the daemon inserts it; the kernel
/// removes it when the socket closes, i.e. when the daemon dies).
#[map]
pub static KNIT_LISTEN: SockMap = SockMap::pinned(1, 0);
