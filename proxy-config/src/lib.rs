//! knit's inputs, parsed and validated.
//!
//! - [`plan`] reads the ECS JSON given to `knit apply` (the same files as
//!   `aws ecs register-task-definition --cli-input-json`, `aws ecs
//!   create-service --cli-input-json`, `aws ecs create-cluster` and `aws
//!   servicediscovery create-http-namespace`), checks it with ECS's rules
//!   against what the registry already holds ([`Existing`]), and returns an
//!   [`ApplyPlan`] of resolved [`TaskDefinition`]s and [`ServiceSpec`]s, or
//!   every problem as [`ApplyErrors`] (file, JSON path, message, fix).
//! - [`load_daemon_config`] reads the daemon's knit.toml into a
//!   [`DaemonConfig`].
//!
//! Nothing here does I/O except reading knit.toml.

mod daemon;
mod ecs;
mod error;
mod model;
pub mod names;
mod parse;
mod plan;
#[cfg(test)]
mod test_support;
mod validate;

pub use daemon::{
    AdminConfig, DEFAULT_ADMIN_LISTEN, DEFAULT_BASE_EJECTION_MS, DEFAULT_BPF_PIN_DIR,
    DEFAULT_CGROUP, DEFAULT_CONFIG_PATH, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_DRAIN_TIMEOUT_MS,
    DEFAULT_ETCD_ENDPOINT, DEFAULT_HOST_ADDRESS, DEFAULT_HOSTS_FILE, DEFAULT_MAX_EJECTION_MS,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_OUTLIER_INTERVAL_MS, DEFAULT_SOCKET, DEFAULT_STATE_DIR,
    DaemonConfig, DatapathSection, HostConfig, LogConfig, LogFormat, OutlierConfig, ProxyConfig,
    RegistryBackend, RegistryConfig, Reload, load_daemon_config, parse_daemon_config,
};
pub use error::{ApplyError, ApplyErrors, ConfigError};
pub use model::{
    AccessLogFormat, AccessLogSpec, AppProtocol, ApplyPlan, DEFAULT_NAMESPACE, EndpointSpec,
    Existing, HealthCheck, LimitsSpec, NotUsed, OutlierSpec, PortMapping, ServiceSpec, Source,
    TaskDefinition, TestTrafficRule,
};
pub use parse::MAX_OBJECTS_PER_APPLY;
pub use plan::plan;
