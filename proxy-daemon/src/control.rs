//! The CLI <-> daemon protocol: one JSON object per line over the daemon's
//! root-only unix socket. A request gets exactly one response line;
//! `knit run` keeps its connection for the task's life.
use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Validate and store ECS documents: (file name, contents).
    Apply {
        files: Vec<(String, String)>,
    },
    Services,
    Endpoints {
        service: Option<String>,
    },
    Status,
    /// Prepare a task of `service`: ids, ports, cgroup.
    TaskStart {
        service: String,
        /// `FAMILY:N` (or `N`): another revision than the service's pinned
        /// one (the newest when it pins none).
        #[serde(default)]
        task_definition: Option<String>,
    },
    /// The task's process runs (already inside its cgroup).
    TaskRunning {
        task_id: String,
        pid: u32,
    },
    /// The task's process exited.
    TaskExited {
        task_id: String,
        status: i32,
    },
    /// `knit delete`: a service (drained and stopped everywhere, then
    /// gone), a task definition revision, or an empty namespace.
    Delete {
        target: crate::registry::state::DeleteTarget,
    },
    /// Take endpoints out of rotation and deregister them.
    Drain {
        service: Option<String>,
        task: Option<String>,
    },
    /// Set the log filter.
    SetLogLevel {
        filter: String,
    },
    /// Cumulative counters per service and per edge (for `knit top`).
    Stats,
    /// A new daemon takes over (`knit daemon --takeover`): this one sends
    /// its listening sockets, closes its state store, stops changing
    /// anything and drains.
    Handover,
}

/// Exit code the CLI should use for an error: bad input or usage.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Response {
    Ok { body: serde_json::Value },
    Error { code: i32, message: String },
}

impl Response {
    pub fn ok<T: Serialize>(body: &T) -> Self {
        match serde_json::to_value(body) {
            Ok(body) => Response::Ok { body },
            Err(e) => Response::Error {
                code: EXIT_FAILURE,
                message: format!("encoding the answer: {e}"),
            },
        }
    }

    pub fn bad_input(message: impl Into<String>) -> Self {
        Response::Error {
            code: EXIT_BAD_INPUT,
            message: message.into(),
        }
    }

    pub fn failure(message: impl Into<String>) -> Self {
        Response::Error {
            code: EXIT_FAILURE,
            message: message.into(),
        }
    }
}

/// The answer to `TaskStart`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TaskPlan {
    pub task_id: String,
    /// The task's cgroup2 directory; the child joins it before exec.
    pub cgroup: PathBuf,
    /// Environment for the task (`KNIT_PORT_<NAME>` and friends).
    pub env: BTreeMap<String, String>,
    /// entryPoint + command of the task definition (used when no CMD is given).
    pub command: Vec<String>,
    /// The task's namespace's view of the hosts file, and the hosts file it
    /// is bind-mounted over for the task.
    #[serde(default)]
    pub hosts_view: Option<(PathBuf, PathBuf)>,
}

impl Request {
    /// The request's kind, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Apply { .. } => "apply",
            Request::Services => "services",
            Request::Endpoints { .. } => "endpoints",
            Request::Status => "status",
            Request::TaskStart { .. } => "task-start",
            Request::TaskRunning { .. } => "task-running",
            Request::TaskExited { .. } => "task-exited",
            Request::Drain { .. } => "drain",
            Request::Delete { .. } => "delete",
            Request::SetLogLevel { .. } => "set-log-level",
            Request::Stats => "stats",
            Request::Handover => "handover",
        }
    }
}

/// Cumulative counters at one moment; rates come from two of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatsReport {
    /// When the counters were read (ms since the epoch).
    pub at_unix_ms: u64,
    /// The response time buckets' upper bounds (ms) of every service's
    /// `latency_buckets` (its last bucket: above them all).
    #[serde(default)]
    pub latency_bounds_ms: Vec<f64>,
    pub services: Vec<ServiceStats>,
    /// The service graph: requests between services, from real traffic.
    pub edges: Vec<EdgeStats>,
}

/// One client alias's counters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServiceStats {
    pub service: String,
    pub namespace: String,
    pub discovery_name: String,
    pub dns_name: String,
    pub port: u16,
    pub protocol: String,
    pub healthy: usize,
    pub endpoints: usize,
    /// HTTP/gRPC requests through the proxy (0 for TCP services).
    pub requests: u64,
    /// Responses 2xx, 3xx, 4xx, 5xx from targets.
    pub codes: [u64; 4],
    pub retries: u64,
    /// Sum (µs) and count of response times.
    pub latency_sum_us: u64,
    pub latency_count: u64,
    /// Response times per bucket of the report's `latency_bounds_ms` (not
    /// cumulative): percentiles over an interval from two reports.
    #[serde(default)]
    pub latency_buckets: Vec<u64>,
    /// Kernel counters (TCP and the task side of L7).
    pub new_connections: u64,
    pub active_connections: u64,
    pub bytes: u64,
}

/// One edge of the service graph: what tasks of `source` sent to
/// `target`, on this host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EdgeStats {
    pub source: String,
    pub target: String,
    /// HTTP/gRPC requests (through the proxy).
    pub requests: u64,
    /// TCP connections to its TCP aliases (counted in the kernel).
    #[serde(default)]
    pub connections: u64,
    /// TCP connects that failed.
    #[serde(default)]
    pub failed_connections: u64,
    /// Bytes of those TCP connections, both ways (added as they close).
    #[serde(default)]
    pub bytes: u64,
}

/// A row of `knit services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRow {
    pub service: String,
    /// `FAMILY:N`: the task definition revision its new tasks run (the one
    /// it pins, else the newest).
    #[serde(default)]
    pub task_definition: String,
    pub namespace: String,
    pub discovery_name: String,
    pub dns_name: String,
    pub port: u16,
    pub vip: String,
    pub protocol: String,
    /// False for a service applied with `"enabled": false`: not in Service
    /// Connect (no names, no routes for its tasks).
    #[serde(default = "yes")]
    pub service_connect: bool,
    pub healthy: usize,
    pub endpoints: usize,
    pub new_connections: u64,
    pub active_connections: u64,
    pub failed_connects: u64,
}

fn yes() -> bool {
    true
}

/// Where an endpoint stands (`knit endpoints`' STATE; lower-case in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Running, ready, healthy, not ejected: in rotation.
    Healthy,
    /// Not running yet, its port not accepting yet, or its first health
    /// check not passed yet.
    Starting,
    /// Its health check failed.
    Unhealthy,
    /// Ejected by outlier detection, for now.
    Ejected,
    /// Leaving: no new traffic, in-flight work finishing.
    Draining,
}

impl std::fmt::Display for EndpointState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Healthy => "healthy",
            Self::Starting => "starting",
            Self::Unhealthy => "unhealthy",
            Self::Ejected => "ejected",
            Self::Draining => "draining",
        })
    }
}

/// A row of `knit endpoints`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointRow {
    pub service: String,
    pub task: String,
    /// The task definition revision the task runs.
    #[serde(default)]
    pub revision: u32,
    pub port_name: String,
    /// The host that runs the task (its registry name).
    #[serde(default)]
    pub host: String,
    /// The kernel's id of this endpoint (keys its counters).
    #[serde(default)]
    pub backend_id: u32,
    pub address: String,
    pub state: EndpointState,
    pub new_connections: u64,
    pub active_connections: u64,
    pub failed_connects: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub ejections: u32,
    /// The ingress listener of an L7 port's first services[] entry (other
    /// hosts' requests arrive there).
    pub ingress_port: Option<u16>,
    /// Each services[] entry's ingress listener, by discovery name.
    #[serde(default)]
    pub ingress_ports: BTreeMap<String, u16>,
    /// Response times through this host's proxy per bucket of
    /// `StatsReport::latency_bounds_ms` (not cumulative; L7 endpoints this
    /// host sent requests to): percentiles over an interval from two reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency_buckets: Vec<u64>,
}

/// The answer to `Status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    pub datapath: String,
    pub pin_dir: String,
    pub cgroup: String,
    pub state_dir: String,
    pub hosts_file: String,
    pub services: usize,
    pub aliases: usize,
    pub tasks: usize,
    /// Other hosts' tasks this host routes to (etcd).
    #[serde(default)]
    pub remote_tasks: usize,
    /// `embedded`, or etcd with this host's name and the session's state.
    #[serde(default)]
    pub registry: String,
    pub tracked_connections: usize,
    /// Routing map entries written or removed since the daemon started
    /// (a reconcile writes only what changed).
    #[serde(default)]
    pub map_writes: u64,
    /// Same-host acceleration.
    #[serde(default)]
    pub acceleration: AccelStatus,
    /// The admin HTTP address (metrics, read-only API).
    #[serde(default)]
    pub admin: String,
    /// The L7 proxy's data plane.
    #[serde(default)]
    pub proxy: ProxyStatus,
    /// Mutual TLS with other hosts: this host's identities and the trust bundle.
    #[serde(default)]
    pub tls: TlsStatus,
    /// The configuration in effect (after SIGHUP reloads).
    #[serde(default)]
    pub config: Option<proxy_config::DaemonConfig>,
}

/// `knit status`: mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsStatus {
    pub trust_domain: String,
    /// The trust bundle's roots (subject, expiry); empty until the signer
    /// published one.
    pub roots: Vec<CertStatus>,
    /// This host's service identities.
    pub identities: Vec<CertStatus>,
    /// Services this host runs that have no identity yet.
    pub pending: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertStatus {
    /// The SPIFFE id (identities) or the subject (roots).
    pub name: String,
    /// Expiry, seconds since the epoch.
    pub expires_unix: u64,
}

/// `knit status`: the L7 proxy's data plane.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Data-plane threads (`[proxy] threads`).
    pub threads: usize,
    /// The egress listener (where the connect hook sends tasks' L7
    /// connects), and the sockets of its SO_REUSEPORT group.
    pub egress: String,
    pub egress_sockets: usize,
}

/// `knit status`: same-host acceleration (sockhash + sk_msg).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelStatus {
    /// New connections are accelerated (`[datapath] accelerate`, not
    /// `--no-accelerate`).
    pub enabled: bool,
    /// The daemon's own paths too (its cgroup has knit's sockops program);
    /// otherwise why not.
    pub daemon_paths: String,
    /// Sockets in the sockhash now (counted up to 10000).
    pub sockets: usize,
    /// Sockets put into the sockhash since the maps were created.
    pub inserted: u64,
    /// Sends and bytes handed socket to socket.
    pub redirected_messages: u64,
    pub redirected_bytes: u64,
    /// Sockets whose first send found no peer in the sockhash.
    pub tcp_fallback: u64,
}
