//! The resolved, validated shapes `plan` hands to the daemon: task
//! definitions, services and their Service Connect endpoints, what already
//! exists in the registry, and the plan of one `knit apply`.
//!
//! Every type here is plain data (Serialize/Deserialize) so the daemon can
//! store it as JSON. Nothing in here refers back to the ECS JSON it came from.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// The namespace used when neither the service nor a cluster names one
/// (ECS: the cluster's `serviceConnectDefaults.namespace`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// What a port mapping speaks: ECS `appProtocol`, absent = plain TCP.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// No `appProtocol`: bytes only, no L7 telemetry, no per-request timeout.
    #[default]
    Tcp,
    /// `"http"`: HTTP/1.1.
    Http,
    /// `"http2"`: HTTP/2.
    Http2,
    /// `"grpc"`: gRPC over HTTP/2.
    Grpc,
}

impl AppProtocol {
    /// The lowercase name, as in the JSON (`tcp` for the absent case).
    pub fn as_str(self) -> &'static str {
        match self {
            AppProtocol::Tcp => "tcp",
            AppProtocol::Http => "http",
            AppProtocol::Http2 => "http2",
            AppProtocol::Grpc => "grpc",
        }
    }

    /// True for the HTTP family (http, http2, grpc): knit terminates requests.
    pub fn is_l7(self) -> bool {
        self != AppProtocol::Tcp
    }

    /// Parses an ECS `appProtocol` value (`http`, `http2`, `grpc`; exact case).
    /// `tcp` is not an ECS value: plain TCP is spelled by leaving it out.
    pub fn from_ecs(value: &str) -> Option<Self> {
        match value {
            "http" => Some(AppProtocol::Http),
            "http2" => Some(AppProtocol::Http2),
            "grpc" => Some(AppProtocol::Grpc),
            _ => None,
        }
    }
}

impl fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One named TCP port mapping of a task definition
/// (`containerDefinitions[].portMappings[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `name`: `[a-z0-9_-]`, at most 64 characters, unique in the task definition.
    pub name: String,
    /// `containerPort`; 0 means knit picks a free port when the task starts.
    pub container_port: u16,
    /// `appProtocol`; `tcp` when absent (also when reading stored JSON).
    #[serde(default)]
    pub app_protocol: AppProtocol,
}

/// A container health check (`containerDefinitions[].healthCheck`), with the
/// ECS defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// As given, e.g. `["CMD-SHELL", "curl -f http://localhost/ || exit 1"]`
    /// or `["CMD", "/bin/check", "--fast"]`: always at least two elements,
    /// the first `CMD` (the rest is the argv to exec) or `CMD-SHELL` (the
    /// rest, joined with spaces, is run by `/bin/sh -c`), as Docker does.
    pub command: Vec<String>,
    /// `interval`, seconds between checks (ECS: 5..=300, default 30).
    pub interval_s: u32,
    /// `timeout`, seconds before one check counts as failed (ECS: 2..=120, default 5).
    pub timeout_s: u32,
    /// `retries`, consecutive failures before unhealthy (ECS: 1..=10, default 3).
    pub retries: u32,
    /// `startPeriod`, grace seconds after start when failures do not count
    /// (ECS: 0..=300, default 0).
    pub start_period_s: u32,
}

impl HealthCheck {
    /// ECS default for `interval`.
    pub const DEFAULT_INTERVAL_S: u32 = 30;
    /// ECS default for `timeout`.
    pub const DEFAULT_TIMEOUT_S: u32 = 5;
    /// ECS default for `retries`.
    pub const DEFAULT_RETRIES: u32 = 3;
    /// ECS default for `startPeriod`.
    pub const DEFAULT_START_PERIOD_S: u32 = 0;
}

/// A task definition as knit uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDefinition {
    /// `family`: `[A-Za-z0-9_-]`, 1..=255 characters.
    pub family: String,
    /// Always 0 from `plan`: the registry assigns revisions.
    pub revision: u32,
    /// The named TCP port mappings of all containers, in order. Port mappings
    /// without a `name` and `udp` ones are left out: knit can neither refer to
    /// nor carry them.
    pub port_mappings: Vec<PortMapping>,
    /// `entryPoint` followed by `command` of the first container that has
    /// either; empty when none has (then `knit run` needs a CMD).
    pub command: Vec<String>,
    /// The first container's `healthCheck` that has one; `None` when no
    /// container has one or its command is `["NONE"]`.
    pub health_check: Option<HealthCheck>,
    /// The largest `stopTimeout` of its containers (seconds): how long a
    /// stopping task has between SIGTERM and SIGKILL. `None`: ECS's
    /// default, [`TaskDefinition::DEFAULT_STOP_TIMEOUT_S`].
    #[serde(default)]
    pub stop_timeout_s: Option<u32>,
    /// Deleted (`knit delete task-definition`, ECS's INACTIVE): no new
    /// task or pin may use it, tasks running it go on, and its number is
    /// never given to another revision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inactive: bool,
}

impl TaskDefinition {
    /// ECS's default `stopTimeout`.
    pub const DEFAULT_STOP_TIMEOUT_S: u32 = 30;

    /// Seconds between SIGTERM and SIGKILL when a task of it stops.
    pub fn stop_timeout_s(&self) -> u32 {
        self.stop_timeout_s.unwrap_or(Self::DEFAULT_STOP_TIMEOUT_S)
    }

    /// The port mapping called `name`, if any.
    pub fn port_mapping(&self, name: &str) -> Option<&PortMapping> {
        self.port_mappings.iter().find(|p| p.name == name)
    }
}

/// One `serviceConnectConfiguration.services[]` entry, fully resolved against
/// the task definition and the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    /// `portName`: a port mapping name of the service's task definition.
    pub port_name: String,
    /// `discoveryName`, default `port_name`; unique in the namespace.
    pub discovery_name: String,
    /// `clientAliases[0].dnsName`, default `discoveryName.namespace`.
    pub dns_name: String,
    /// `clientAliases[0].port` (the port clients connect to), default the
    /// port mapping's `containerPort`.
    pub port: u16,
    /// The port mapping's `appProtocol`.
    #[serde(default)]
    pub app_protocol: AppProtocol,
    /// The port mapping's `containerPort` (0 = knit picks one per task).
    pub container_port: u16,
    /// `ingressPortOverride`; `None` when absent or 0.
    pub ingress_port_override: Option<u16>,
    /// `timeout.idleTimeoutSeconds` (0 = off); `None` = knit's default.
    pub idle_timeout_s: Option<u32>,
    /// `timeout.perRequestTimeoutSeconds` (0 = off); `None` = knit's default.
    /// Always `None` for TCP endpoints.
    pub per_request_timeout_s: Option<u32>,
    /// `outlierDetection` (a knit extension); `None` = the daemon's `[outlier]`.
    #[serde(default)]
    pub outlier: Option<OutlierSpec>,
    /// `limits` (a knit extension, L7 only); `None` = every default of
    /// [`LimitsSpec`].
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
    /// `clientAliases[0].testTrafficRules` (HTTP, HTTP/2 and gRPC only):
    /// requests that match go to tasks of a revision newer than the one
    /// the service pins, the others to the pinned revision's tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_traffic: Option<TestTrafficRule>,
    /// ECS's `tls` block: other hosts reach this entry over mutual TLS
    /// (each side presents its service's identity and checks the other's).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// `allowedClients` (a knit extension, with `tls` only): the client
    /// services that may call this entry; `None`: every service of its
    /// namespace. Sorted, without duplicates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_clients: Option<Vec<String>>,
    /// `allowedClientsMode: "AUDIT"`: callers not allowed are counted and
    /// served.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allowed_clients_audit: bool,
}

impl EndpointSpec {
    /// Whether client service `client` may call this entry (true in audit
    /// mode too: see [`EndpointSpec::allows`] for what is counted).
    pub fn allows(&self, client: &str) -> bool {
        self.allowed_clients
            .as_ref()
            .is_none_or(|list| list.binary_search_by(|c| c.as_str().cmp(client)).is_ok())
    }
}

/// `testTrafficRules.header`: a request is test traffic when it has
/// header `name` (lower-case) with exactly `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestTrafficRule {
    pub name: String,
    pub value: String,
}

/// Outlier detection for one service; each `None` falls back to the
/// daemon's `[outlier]` setting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierSpec {
    /// `consecutiveFailures`: 1..=1000.
    pub consecutive_failures: Option<u32>,
    /// `baseEjectionSeconds`: 1..=86400.
    pub base_ejection_s: Option<u32>,
    /// `maxEjectionSeconds`: 1..=86400, at least the base.
    pub max_ejection_s: Option<u32>,
    /// `maxEjectionPercent`: 0..=100.
    pub max_ejection_percent: Option<u32>,
}

/// Limits on the traffic this host's daemon sends to one L7 service (like
/// Envoy's cluster circuit breakers); each `None` takes the default below.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsSpec {
    /// `maxConnections`: 1..=100000. Requests in flight to the service at
    /// once; over HTTP/1.1 also the connections held open to its endpoints.
    pub max_connections: Option<u32>,
    /// `maxPendingRequests`: 0..=100000. Requests that may wait for one of
    /// those; more are answered 503 at once.
    pub max_pending_requests: Option<u32>,
    /// `maxRequestBytes`: 0..=2^53-1. A larger request body is answered 413.
    pub max_request_bytes: Option<u64>,
    /// `maxHeaderBytes`: 1024..=65536. A larger request head is answered 431.
    pub max_header_bytes: Option<u32>,
}

impl LimitsSpec {
    /// `maxConnections` when absent: Envoy's circuit-breaker default, which
    /// is what ECS Service Connect's agent runs with.
    pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
    /// `maxPendingRequests` when absent: Envoy's default, as above.
    pub const DEFAULT_MAX_PENDING_REQUESTS: u32 = 1024;
    /// `maxHeaderBytes` when absent, and its maximum: the largest request
    /// head the daemon reads at all.
    pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
    /// `maxHeaderBytes`' minimum: below it ordinary requests would fail.
    pub const MIN_MAX_HEADER_BYTES: u32 = 1024;
    /// Upper bound of `maxConnections` and `maxPendingRequests`.
    pub const MAX_COUNT: u32 = 100_000;
    /// Upper bound of `maxRequestBytes`: the largest integer JSON tools
    /// keep exact (2^53 - 1).
    pub const MAX_REQUEST_BYTES: u64 = (1 << 53) - 1;

    /// `maxConnections`, or its default.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
            .unwrap_or(Self::DEFAULT_MAX_CONNECTIONS)
    }

    /// `maxPendingRequests`, or its default.
    pub fn max_pending_requests(&self) -> u32 {
        self.max_pending_requests
            .unwrap_or(Self::DEFAULT_MAX_PENDING_REQUESTS)
    }

    /// `maxRequestBytes`; `None`: no limit (the default).
    pub fn max_request_bytes(&self) -> Option<u64> {
        self.max_request_bytes
    }

    /// `maxHeaderBytes`, or its default.
    pub fn max_header_bytes(&self) -> u32 {
        self.max_header_bytes
            .unwrap_or(Self::DEFAULT_MAX_HEADER_BYTES)
    }
}

/// A service (`aws ecs create-service` input) as knit uses it.
///
/// A service without `serviceConnectConfiguration` is stored with no
/// endpoints, exactly like a client-only service; its namespace is then the
/// default namespace (or the one it names). One with `"enabled": false` has
/// no endpoints either and `enabled` false: it is not in Service Connect
/// (its tasks resolve and reach nothing through knit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// `serviceName`: `[A-Za-z0-9_-]`, 1..=255 characters.
    pub name: String,
    /// The task definition family (`taskDefinition` without revision or ARN).
    pub task_definition: String,
    /// `taskDefinition: "family:N"`: the revision its tasks run (`knit run
    /// --service` starts it; with test traffic rules, newer revisions'
    /// tasks get only test requests). `None`: the family's newest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_definition_revision: Option<u32>,
    /// `serviceConnectConfiguration.namespace`, default the default namespace.
    pub namespace: String,
    /// The endpoints this service offers; empty = client-only.
    pub endpoints: Vec<EndpointSpec>,
    /// `serviceConnectConfiguration.accessLogConfiguration`: log every HTTP
    /// request this service's tasks send (and its ingress listeners take).
    #[serde(default)]
    pub access_log: Option<AccessLogSpec>,
    /// `serviceConnectConfiguration.enabled`; false: the service is not in
    /// Service Connect (no endpoints, and its tasks get no names and no
    /// routes). True for a service without `serviceConnectConfiguration`
    /// (client-only, as before) and for records stored before this field.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

/// `accessLogConfiguration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessLogSpec {
    pub format: AccessLogFormat,
    /// `includeQueryParameters` ENABLED: the path keeps its query string.
    pub include_query: bool,
}

/// `accessLogConfiguration.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessLogFormat {
    Text,
    Json,
}

/// What the registry holds before this apply; `plan` validates against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Existing {
    /// The daemon's `default_namespace` (or the last cluster default applied).
    /// It exists implicitly, whether or not it is in `namespaces`.
    pub default_namespace: String,
    /// Namespaces created earlier.
    pub namespaces: BTreeSet<String>,
    /// Latest task definition per family.
    pub task_definitions: BTreeMap<String, TaskDefinition>,
    /// Every active revision by `family:N` (a service pinned to one is
    /// checked against it, not against the newest).
    #[serde(default)]
    pub revisions: BTreeMap<String, TaskDefinition>,
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
}

impl Default for Existing {
    fn default() -> Self {
        Existing {
            default_namespace: DEFAULT_NAMESPACE.to_owned(),
            namespaces: BTreeSet::new(),
            task_definitions: BTreeMap::new(),
            revisions: BTreeMap::new(),
            services: BTreeMap::new(),
        }
    }
}

/// What one `knit apply` changes. Empty lists mean nothing to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPlan {
    /// Namespaces to create (not in `Existing::namespaces`), in the order found.
    pub namespaces: Vec<String>,
    /// A new default namespace, from a cluster's `serviceConnectDefaults`.
    pub default_namespace: Option<String>,
    /// Task definitions to register (a family already known is replaced).
    pub task_definitions: Vec<TaskDefinition>,
    /// Services to create or replace, in the order found; then existing
    /// services whose task definition this apply re-registers, re-resolved
    /// against it (`app_protocol` and `container_port` of their endpoints may
    /// change; names, aliases and ports stay).
    pub services: Vec<ServiceSpec>,
    /// Fields knit accepted but does not use (they change nothing about
    /// routing or security), per file: `knit apply` lists them once.
    #[serde(default)]
    pub not_used: Vec<NotUsed>,
    /// Where each service of this apply was given (by service name), so
    /// that a later step (binding its ingress listeners) can name the file
    /// and JSON path of what it refuses. Services re-resolved against a
    /// re-registered task definition are not in it.
    #[serde(default)]
    pub sources: BTreeMap<String, Source>,
}

/// Fields of one file that knit accepts and does not use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotUsed {
    /// The file name as given to `plan`.
    pub file: String,
    /// JSON paths such as `$.cpu` or `$[1].containerDefinitions[0].image`.
    pub paths: Vec<String>,
}

/// Where an object was given: its file and its JSON path (`$` or `$[i]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub file: String,
    pub path: String,
}
