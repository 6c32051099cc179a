//! One L7 alias's proxy route: endpoints, timeouts, outlier settings,
//! labels, and the state that outlives route tables.
use super::*;

/// An alias's per-request timeout: its own, ECS's 15 s default, or none (0).
pub(super) fn request_timeout(a: &AliasRecord) -> Option<Duration> {
    match a.spec.per_request_timeout_s {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(u64::from(s))),
        None => Some(DEFAULT_REQUEST_TIMEOUT),
    }
}

/// What a route shares with the engine's longer-lived state.
pub(super) struct RouteParts<'a> {
    pub(super) health: &'a mut BTreeMap<u32, Arc<EndpointHealth>>,
    pub(super) budget: Arc<RetryBudget>,
    pub(super) cursor: Arc<AtomicUsize>,
    /// The test lane's round-robin cursor.
    pub(super) test_cursor: Arc<AtomicUsize>,
    pub(super) pool: Arc<ServicePool>,
    pub(super) outlier: &'a OutlierConfig,
    pub(super) metrics: &'a ProxyMetrics,
    /// This host's address (endpoints elsewhere are other hosts') and the
    /// trust domain of identities.
    pub(super) local: std::net::Ipv4Addr,
    pub(super) trust_domain: &'a str,
}

/// The L7 route of alias `a` of service `s` over `endpoints` (task, address,
/// backend id) and, with a test traffic rule, `test_endpoints`, with its
/// metric series looked up once.
pub(super) fn build_route(
    s: &ServiceRecord,
    a: &AliasRecord,
    endpoints: &[(String, SocketAddr, u32)],
    test_endpoints: &[(String, SocketAddr, u32)],
    parts: RouteParts<'_>,
) -> Arc<AliasRoute> {
    let (labels, target) = alias_labels(s, a);
    // Another host's endpoint of an entry with tls: mutual TLS, and the
    // service's identity expected.
    let server_id: Option<Arc<str>> = a
        .spec
        .tls
        .then(|| crate::tls::spiffe_id(parts.trust_domain, &s.spec.namespace, &s.spec.name).into());
    let local = parts.local;
    let mut endpoints_of = |list: &[(String, SocketAddr, u32)]| -> Vec<Endpoint> {
        list.iter()
            .map(|(task, addr, id)| Endpoint {
                backend_id: *id,
                addr: *addr,
                health: parts.health.entry(*id).or_default().clone(),
                requests: parts
                    .metrics
                    .for_endpoint(&endpoint_labels(&target, task, *addr)),
                tls: server_id
                    .clone()
                    .filter(|_| addr.ip() != std::net::IpAddr::V4(local)),
            })
            .collect()
    };
    let endpoints = endpoints_of(endpoints);
    // A rule whose header does not parse was refused at apply; a stored
    // one that no longer does routes nothing to the test lane.
    let test = a.spec.test_traffic.as_ref().and_then(|rule| {
        Some(crate::proxy::TestLane {
            name: hyper::header::HeaderName::from_bytes(rule.name.as_bytes()).ok()?,
            value: hyper::header::HeaderValue::from_str(&rule.value).ok()?,
            endpoints: endpoints_of(test_endpoints),
            cursor: parts.test_cursor.clone(),
        })
    });
    parts.pool.limits.set(&a.spec.limits.unwrap_or_default());
    Arc::new(AliasRoute {
        service: s.spec.name.clone(),
        counters: parts.metrics.for_alias(&labels, &target),
        dns_name: a.spec.dns_name.clone(),
        port: a.spec.port,
        protocol: a.spec.app_protocol,
        endpoints,
        request_timeout: request_timeout(a),
        failure_threshold: outlier_config(parts.outlier, a).consecutive_failures,
        idle_timeout: idle_timeout(a),
        cursor: parts.cursor,
        budget: parts.budget,
        pool: parts.pool,
        access_log: s.spec.access_log,
        discovery_name: a.spec.discovery_name.clone(),
        test,
        tls: a.spec.tls,
        allowed_clients: a.spec.allowed_clients.as_deref().map(Arc::from),
        allowed_audit: a.spec.allowed_clients_audit,
        identity: format!(
            "{}/{}/{}:{}",
            s.spec.namespace, s.spec.name, a.spec.dns_name, a.spec.port
        )
        .into(),
        target,
    })
}

/// An alias's metric labels: server side and client side.
pub(super) fn alias_labels(s: &ServiceRecord, a: &AliasRecord) -> (ServiceLabels, TargetLabels) {
    (
        ServiceLabels {
            namespace: s.spec.namespace.clone(),
            service: s.spec.name.clone(),
            discovery_name: a.spec.discovery_name.clone(),
        },
        TargetLabels {
            namespace: s.spec.namespace.clone(),
            service: s.spec.name.clone(),
            target_discovery_name: a.spec.discovery_name.clone(),
        },
    )
}

pub(super) fn endpoint_labels(t: &TargetLabels, task: &str, addr: SocketAddr) -> EndpointLabels {
    EndpointLabels {
        namespace: t.namespace.clone(),
        service: t.service.clone(),
        target_discovery_name: t.target_discovery_name.clone(),
        task: task.to_string(),
        endpoint: addr.to_string(),
    }
}

/// An alias's outlier detection: the daemon's `[outlier]`, overridden by
/// the service's `outlierDetection` where it sets a value.
pub(super) fn outlier_config(base: &OutlierConfig, a: &AliasRecord) -> OutlierConfig {
    let mut c = base.clone();
    if let Some(o) = &a.spec.outlier {
        c.consecutive_failures = o.consecutive_failures.unwrap_or(c.consecutive_failures);
        c.base_ejection_ms = o
            .base_ejection_s
            .map_or(c.base_ejection_ms, |s| u64::from(s) * 1000);
        c.max_ejection_ms = o
            .max_ejection_s
            .map_or(c.max_ejection_ms, |s| u64::from(s) * 1000);
        c.max_ejection_percent = o.max_ejection_percent.unwrap_or(c.max_ejection_percent);
    }
    c
}

/// An L7 alias's idle timeout: its own, ECS's 300 s default, or none (0).
pub(super) fn idle_timeout(a: &AliasRecord) -> Option<Duration> {
    match a.spec.idle_timeout_s {
        Some(0) => None,
        Some(s) => Some(Duration::from_secs(u64::from(s))),
        None => Some(DEFAULT_IDLE_TIMEOUT),
    }
}
