//! The proxy's routing table: what each L7 alias routes to now. The engine
//! builds a new table on every change and swaps it in; per-alias cursors and
//! per-endpoint health live in `Arc`s that outlive table versions.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicUsize, Ordering},
    },
    time::Duration,
};

use proxy_config::AppProtocol;

use prometheus_client::metrics::counter::Counter;

use crate::metrics::AliasCounters;

/// One endpoint's passive health and load, shared across table versions.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// 5xx answers and connect failures in a row.
    pub consecutive_failures: AtomicU32,
    /// Requests in flight (until their response body ends).
    pub inflight: AtomicUsize,
    /// Its response times (the dashboard's per-endpoint p50 / p99).
    pub latency: crate::metrics::LatencyBuckets,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub backend_id: u32,
    pub addr: SocketAddr,
    pub health: Arc<EndpointHealth>,
    /// Requests answered by it (`request_count_per_target`).
    pub requests: Counter,
    /// Another host's ingress listener of a service with `tls`: reached
    /// over mutual TLS, and it must present this identity.
    pub tls: Option<Arc<str>>,
}

#[derive(Debug)]
pub struct AliasRoute {
    pub service: String,
    /// Its metric series.
    pub counters: AliasCounters,
    pub dns_name: String,
    pub port: u16,
    pub protocol: AppProtocol,
    /// Endpoints in rotation (healthy, not ejected, not draining).
    pub endpoints: Vec<Endpoint>,
    /// None: no per-request timeout.
    pub request_timeout: Option<Duration>,
    /// 5xx answers or failed connects in a row that report an endpoint.
    pub failure_threshold: u32,
    /// None: downstream connections may stay idle forever.
    pub idle_timeout: Option<Duration>,
    pub cursor: Arc<AtomicUsize>,
    /// This service's retry budget (one failing service cannot spend
    /// another's).
    pub budget: Arc<super::RetryBudget>,
    /// This service's connections and limits.
    pub pool: Arc<super::ServicePool>,
    /// The target service's access log (requests its ingress listeners take).
    pub access_log: Option<proxy_config::AccessLogSpec>,
    pub discovery_name: String,
    /// The alias's test traffic rule and where matching requests go.
    pub test: Option<TestLane>,
    /// Its client-side labels (per-client series are made from them).
    pub target: crate::metrics::TargetLabels,
    /// ECS's `tls`: other hosts reach this entry over mutual TLS (the
    /// ingress listener of a route with it accepts nothing else).
    pub tls: bool,
    /// `allowedClients` (sorted): who may call; `None`: the namespace.
    pub allowed_clients: Option<Arc<[String]>>,
    /// `allowedClientsMode: AUDIT`: count, refuse nothing.
    pub allowed_audit: bool,
    /// Which alias this is (`namespace/service/dnsName:port`): a
    /// connection accepted for one alias id never follows that id to
    /// another alias.
    pub identity: Arc<str>,
}

/// ECS blue/green test traffic: requests with header `name: value` go to
/// `endpoints` (tasks of a revision newer than the pinned one) while any
/// is in rotation; the others never do.
#[derive(Debug)]
pub struct TestLane {
    pub name: hyper::header::HeaderName,
    pub value: hyper::header::HeaderValue,
    pub endpoints: Vec<Endpoint>,
    pub cursor: Arc<AtomicUsize>,
}

/// The next endpoint of `endpoints` round-robin, skipping those already
/// `tried` while others are left.
fn round_robin<'a>(
    endpoints: &'a [Endpoint],
    cursor: &AtomicUsize,
    tried: &[u32],
) -> Option<&'a Endpoint> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    for _ in 0..n {
        let i = cursor.fetch_add(1, Ordering::Relaxed) % n;
        let e = &endpoints[i];
        if !tried.contains(&e.backend_id) {
            return Some(e);
        }
    }
    let i = cursor.fetch_add(1, Ordering::Relaxed) % n;
    endpoints.get(i)
}

impl AliasRoute {
    /// Whether `client` (`None`: not known) may call, counted in
    /// `denied` (labelled `at`) when it may not; true in audit mode.
    pub fn authorize(
        &self,
        client: Option<&str>,
        at: &str,
        denied: &prometheus_client::metrics::family::Family<crate::metrics::DeniedLabels, Counter>,
    ) -> bool {
        let Some(list) = &self.allowed_clients else {
            return true;
        };
        if client.is_some_and(|c| list.binary_search_by(|x| x.as_str().cmp(c)).is_ok()) {
            return true;
        }
        denied
            .get_or_create(&crate::metrics::DeniedLabels {
                namespace: self.target.namespace.clone(),
                service: self.service.clone(),
                target_discovery_name: self.discovery_name.clone(),
                client_service: client.unwrap_or("-").to_owned(),
                at: at.to_owned(),
                mode: if self.allowed_audit {
                    "audit"
                } else {
                    "enforce"
                }
                .to_owned(),
            })
            .inc();
        self.allowed_audit
    }

    /// The endpoint for a request with `headers`: round-robin over the
    /// test lane's endpoints when it matches the test traffic rule (and
    /// one is in rotation), else over the production ones; those already
    /// `tried` are skipped while others are left.
    pub fn pick(&self, headers: &hyper::HeaderMap, tried: &[u32]) -> Option<&Endpoint> {
        if let Some(t) = &self.test
            && !t.endpoints.is_empty()
            && headers.get_all(&t.name).iter().any(|v| v == t.value)
        {
            return round_robin(&t.endpoints, &t.cursor, tried);
        }
        round_robin(&self.endpoints, &self.cursor, tried)
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// By the kernel's alias id (`ConnInfo::service_id`).
    pub aliases: HashMap<u32, Arc<AliasRoute>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(n: u32) -> AliasRoute {
        AliasRoute {
            service: "s".into(),
            counters: crate::metrics::ProxyMetrics::default().for_alias(
                &crate::metrics::ServiceLabels {
                    namespace: "n".into(),
                    service: "s".into(),
                    discovery_name: "s".into(),
                },
                &crate::metrics::TargetLabels {
                    namespace: "n".into(),
                    service: "s".into(),
                    target_discovery_name: "s".into(),
                },
            ),
            dns_name: "s".into(),
            port: 80,
            protocol: AppProtocol::Http,
            access_log: None,
            discovery_name: "s".into(),
            endpoints: (0..n)
                .map(|i| Endpoint {
                    backend_id: i,
                    addr: SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    health: Arc::default(),
                    requests: Counter::default(),
                    tls: None,
                })
                .collect(),
            request_timeout: None,
            failure_threshold: 5,
            idle_timeout: None,
            cursor: Arc::default(),
            budget: Arc::default(),
            pool: Arc::default(),
            test: None,
            target: crate::metrics::TargetLabels {
                namespace: "n".into(),
                service: "s".into(),
                target_discovery_name: "s".into(),
            },
            identity: "n/s/s:80".into(),
            tls: false,
            allowed_clients: None,
            allowed_audit: false,
        }
    }

    #[test]
    fn round_robin_and_skips_tried() {
        let none = hyper::HeaderMap::new();
        let r = route(3);
        let picks: Vec<u32> = (0..6)
            .filter_map(|_| r.pick(&none, &[]).map(|e| e.backend_id))
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        let p = r.pick(&none, &[0]).map(|e| e.backend_id);
        assert!(p == Some(1) || p == Some(2));
        assert!(r.pick(&none, &[0, 1, 2]).is_some(), "all tried: still one");
        assert!(route(0).pick(&none, &[]).is_none());
    }

    #[test]
    fn test_traffic_goes_only_to_the_test_lane() {
        let none = hyper::HeaderMap::new();
        let mut r = route(2);
        let lane = |ids: &[u32]| TestLane {
            name: hyper::header::HeaderName::from_static("x-canary"),
            value: hyper::header::HeaderValue::from_static("1"),
            endpoints: route(3)
                .endpoints
                .into_iter()
                .filter(|e| ids.contains(&e.backend_id))
                .map(|mut e| {
                    e.backend_id += 10;
                    e
                })
                .collect(),
            cursor: Arc::default(),
        };
        r.test = Some(lane(&[2]));
        let mut canary = hyper::HeaderMap::new();
        canary.insert("x-canary", hyper::header::HeaderValue::from_static("1"));
        let mut other = hyper::HeaderMap::new();
        other.insert("x-canary", hyper::header::HeaderValue::from_static("2"));
        let ids = |r: &AliasRoute, h: &hyper::HeaderMap| -> Vec<u32> {
            (0..4)
                .filter_map(|_| r.pick(h, &[]).map(|e| e.backend_id))
                .collect()
        };
        assert_eq!(ids(&r, &canary), [12, 12, 12, 12]);
        assert!(ids(&r, &none).iter().all(|id| *id < 2));
        assert!(ids(&r, &other).iter().all(|id| *id < 2));
        // No test endpoint in rotation: matching requests go to production.
        r.test = Some(lane(&[]));
        assert!(ids(&r, &canary).iter().all(|id| *id < 2));
    }
}
