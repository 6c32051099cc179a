//! ECS's rules for what one object may say on its own: names, ranges,
//! required fields. Rules that need other objects (does the task definition
//! have that port? is the discovery name free?) live in `plan`.
//!
//! Each function reports every problem it finds and still returns what it
//! could make sense of, so that later stages do not add follow-up noise
//! (e.g. "unknown task definition" for one whose port mapping was bad).

use std::collections::BTreeSet;

use crate::ecs::Int;
use crate::model::TaskDefinition;
use crate::parse::{Loc, Report};

mod service;
mod task_definition;

pub(crate) use service::{cluster, namespace, service};
pub(crate) use task_definition::task_definition;

/// A task definition, checked on its own.
#[derive(Debug)]
pub(crate) struct LocalTaskDefinition {
    pub(crate) loc: Loc,
    pub(crate) td: TaskDefinition,
    /// Named `udp` port mappings: not carried by knit, named in errors.
    pub(crate) udp: BTreeSet<String>,
}

/// A service, checked on its own; `None` fields were missing or invalid
/// (and reported).
#[derive(Debug)]
pub(crate) struct LocalService {
    pub(crate) loc: Loc,
    pub(crate) name: String,
    pub(crate) family: Option<String>,
    /// `family:N`: the revision the service pins (`None`: the newest).
    pub(crate) revision: Option<u32>,
    /// The explicit `serviceConnectConfiguration.namespace`, if any.
    pub(crate) namespace: Option<String>,
    pub(crate) entries: Vec<LocalEntry>,
    pub(crate) access_log: Option<crate::model::AccessLogSpec>,
    /// False for `"enabled": false`: not in Service Connect.
    pub(crate) enabled: bool,
}

/// One `serviceConnectConfiguration.services[]` entry, checked on its own.
#[derive(Debug)]
pub(crate) struct LocalEntry {
    /// JSON path suffix of the entry, `.serviceConnectConfiguration.services[i]`.
    pub(crate) at: String,
    pub(crate) port_name: String,
    /// `Some` when given (and valid); `None` = defaults to `port_name`.
    pub(crate) discovery_name: Option<String>,
    /// `Err(())` when the alias was given but unusable (already reported).
    pub(crate) alias: Result<Option<Alias>, ()>,
    pub(crate) ingress_port_override: Option<u16>,
    pub(crate) idle_timeout_s: Option<u32>,
    pub(crate) per_request_timeout_s: Option<u32>,
    pub(crate) outlier: Option<crate::model::OutlierSpec>,
    pub(crate) limits: Option<crate::model::LimitsSpec>,
    /// ECS's `tls` block was given (and is well formed).
    pub(crate) tls: bool,
    pub(crate) allowed_clients: Option<Vec<String>>,
    pub(crate) allowed_clients_audit: bool,
}

/// `clientAliases[0]`.
#[derive(Debug)]
pub(crate) struct Alias {
    pub(crate) port: u16,
    pub(crate) dns_name: Option<String>,
    /// `testTrafficRules`, checked.
    pub(crate) test_traffic: Option<crate::model::TestTrafficRule>,
}

pub(crate) const PORT_FIX: &str = "use a port between 1 and 65535";

/// A number in `range`, or an "is out of range" error at `at`.
pub(crate) fn ranged<T: TryFrom<i128>>(
    value: Int,
    range: std::ops::RangeInclusive<i128>,
    what: &str,
    fix: &str,
    loc: &Loc,
    at: &str,
    report: &mut Report,
) -> Option<T> {
    if range.contains(&value.0) {
        T::try_from(value.0).ok()
    } else {
        report.error(loc, at, format!("{what} {} is out of range", value.0), fix);
        None
    }
}
