//! Serde shapes of the ECS JSON knit reads: `register-task-definition`,
//! `create-service`, `create-cluster` (camelCase) and Cloud Map
//! `create-http-namespace` (PascalCase) inputs.
//!
//! Only the fields knit uses are declared;
//! every other field is accepted, and `parse` lists it as not used.
//! Everything is optional here so that `validate` can say precisely what is
//! missing, and numbers are read as [`Int`] so that an out-of-range port gets
//! a plain message instead of serde's.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Visitor};

/// Any JSON integer, kept wide so that range checks happen in `validate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int(pub(crate) i128);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;
        impl Visitor<'_> for IntVisitor {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(i128::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                Ok(Int(i128::from(v)))
            }
        }
        deserializer.deserialize_any(IntVisitor)
    }
}

/// `aws ecs register-task-definition --cli-input-json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TaskDefinitionJson {
    pub(crate) family: Option<String>,
    pub(crate) container_definitions: Option<Vec<ContainerJson>>,
}

/// `containerDefinitions[]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ContainerJson {
    pub(crate) port_mappings: Option<Vec<PortMappingJson>>,
    pub(crate) entry_point: Option<Vec<String>>,
    pub(crate) command: Option<Vec<String>>,
    pub(crate) health_check: Option<HealthCheckJson>,
    pub(crate) stop_timeout: Option<Int>,
}

/// `containerDefinitions[].portMappings[]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PortMappingJson {
    pub(crate) name: Option<String>,
    pub(crate) container_port: Option<Int>,
    pub(crate) protocol: Option<String>,
    pub(crate) app_protocol: Option<String>,
}

/// `containerDefinitions[].healthCheck`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HealthCheckJson {
    pub(crate) command: Option<Vec<String>>,
    pub(crate) interval: Option<Int>,
    pub(crate) timeout: Option<Int>,
    pub(crate) retries: Option<Int>,
    pub(crate) start_period: Option<Int>,
}

/// `aws ecs create-service --cli-input-json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceJson {
    pub(crate) service_name: Option<String>,
    pub(crate) task_definition: Option<String>,
    pub(crate) service_connect_configuration: Option<ServiceConnectJson>,
}

/// `serviceConnectConfiguration`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceConnectJson {
    pub(crate) enabled: Option<bool>,
    pub(crate) namespace: Option<String>,
    pub(crate) services: Option<Vec<ServiceConnectServiceJson>>,
    pub(crate) access_log_configuration: Option<AccessLogJson>,
}

/// `serviceConnectConfiguration.accessLogConfiguration`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AccessLogJson {
    pub(crate) format: Option<String>,
    pub(crate) include_query_parameters: Option<String>,
}

/// `serviceConnectConfiguration.services[]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceConnectServiceJson {
    pub(crate) port_name: Option<String>,
    pub(crate) discovery_name: Option<String>,
    pub(crate) client_aliases: Option<Vec<ClientAliasJson>>,
    pub(crate) ingress_port_override: Option<Int>,
    pub(crate) timeout: Option<TimeoutJson>,
    /// knit's extension (ECS has no such field): outlier detection per service.
    pub(crate) outlier_detection: Option<OutlierJson>,
    /// knit's extension: limits on the traffic to an L7 service.
    pub(crate) limits: Option<LimitsJson>,
    /// ECS's TLS between Service Connect proxies: mutual TLS between hosts
    /// here (checked in `validate::service::tls_block`).
    pub(crate) tls: Option<serde_json::Value>,
    /// knit's extension: the client services that may call this entry.
    pub(crate) allowed_clients: Option<Vec<String>>,
    /// knit's extension: `ENFORCE` (default) or `AUDIT` (count, refuse nothing).
    pub(crate) allowed_clients_mode: Option<String>,
}

/// `serviceConnectConfiguration.services[].limits` (knit only).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LimitsJson {
    pub(crate) max_connections: Option<Int>,
    pub(crate) max_pending_requests: Option<Int>,
    pub(crate) max_request_bytes: Option<Int>,
    pub(crate) max_header_bytes: Option<Int>,
}

/// `serviceConnectConfiguration.services[].outlierDetection` (knit only).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OutlierJson {
    pub(crate) consecutive_failures: Option<Int>,
    pub(crate) base_ejection_seconds: Option<Int>,
    pub(crate) max_ejection_seconds: Option<Int>,
    pub(crate) max_ejection_percent: Option<Int>,
}

/// `serviceConnectConfiguration.services[].clientAliases[]`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientAliasJson {
    pub(crate) port: Option<Int>,
    pub(crate) dns_name: Option<String>,
    pub(crate) test_traffic_rules: Option<TestTrafficRulesJson>,
}

/// `clientAliases[].testTrafficRules` (ECS blue/green deployments).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TestTrafficRulesJson {
    pub(crate) header: Option<TestTrafficHeaderJson>,
}

/// `testTrafficRules.header`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TestTrafficHeaderJson {
    pub(crate) name: Option<String>,
    pub(crate) value: Option<TestTrafficValueJson>,
}

/// `testTrafficRules.header.value`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TestTrafficValueJson {
    pub(crate) exact: Option<String>,
}

/// `serviceConnectConfiguration.services[].timeout`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TimeoutJson {
    pub(crate) idle_timeout_seconds: Option<Int>,
    pub(crate) per_request_timeout_seconds: Option<Int>,
}

/// `aws ecs create-cluster --cli-input-json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterJson {
    pub(crate) cluster_name: Option<String>,
    pub(crate) service_connect_defaults: Option<ServiceConnectDefaultsJson>,
}

/// `serviceConnectDefaults`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceConnectDefaultsJson {
    pub(crate) namespace: Option<String>,
}

/// `aws servicediscovery create-http-namespace --cli-input-json`.
#[derive(Debug, Deserialize)]
pub(crate) struct NamespaceJson {
    #[serde(rename = "Name")]
    pub(crate) name: Option<String>,
}
