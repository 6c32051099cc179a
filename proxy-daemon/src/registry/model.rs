//! Records the registry keeps (JSON values in the store).
use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use proxy_config::{EndpointSpec, ServiceSpec};
use serde::{Deserialize, Serialize};

/// One client alias of a service, with what the registry assigned to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub spec: EndpointSpec,
    /// The kernel's id for this alias (indexes the round-robin cursors).
    pub service_id: u32,
    /// The alias's VIP in 127.255.0.0/16, shared by all ports of one dnsName.
    pub vip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub spec: ServiceSpec,
    /// The kernel's id for the service's namespace (1 and up).
    #[serde(default)]
    pub ns_id: u32,
    pub aliases: Vec<AliasRecord>,
    /// `knit delete service`: out of Service Connect, its tasks draining
    /// on every host; removed once none is left.
    #[serde(default)]
    pub deleting: bool,
    /// When it was deleted (ms since the epoch; 0: not deleted).
    #[serde(default)]
    pub deleted_unix_ms: u64,
}

/// A port of a running task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskPort {
    /// The port mapping's name.
    pub name: String,
    /// Where the task listens (on the host's address).
    pub port: u16,
    /// The kernel's id for this endpoint (keys its counters).
    pub backend_id: u32,
    /// The port accepted a connection: the endpoint may get traffic.
    #[serde(default)]
    pub ready: bool,
    /// For an L7 port: the daemon's ingress listener of the port's first
    /// services[] entry (what daemons before per-entry listeners read).
    #[serde(default)]
    pub ingress_port: Option<u16>,
    /// For an L7 port: each services[] entry's own ingress listener, by
    /// discovery name (other hosts' requests for that entry arrive there).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ingress: BTreeMap<String, u16>,
}

impl TaskPort {
    /// Where another host sends requests for entry `discovery_name` of this
    /// port: its own listener; for a task of an older daemon (no per-entry
    /// listeners), the port's one listener.
    pub fn ingress_for(&self, discovery_name: &str) -> Option<u16> {
        if self.ingress.is_empty() {
            self.ingress_port
        } else {
            self.ingress.get(discovery_name).copied()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service: String,
    /// The task's cgroup2 directory.
    pub cgroup: PathBuf,
    pub pid: Option<u32>,
    pub ports: Vec<TaskPort>,
    pub started_unix_ms: u64,
    /// Drained: out of rotation, waiting for its connections to end.
    #[serde(default)]
    pub draining: bool,
    /// When the drain began (ms since the epoch; 0: not draining).
    #[serde(default)]
    pub drain_started_unix_ms: u64,
    /// The health check's verdict, for a task definition with one.
    #[serde(default)]
    pub health: Option<crate::health::Status>,
    /// The task definition revision it runs (0: recorded before revisions
    /// were; it runs the newest).
    #[serde(default)]
    pub revision: u32,
}

/// A task as the fleet sees it: which host runs it and where that host is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostedTask {
    pub host: String,
    pub address: Ipv4Addr,
    pub task: TaskRecord,
}
