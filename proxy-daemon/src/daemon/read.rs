//! What the admin API, `/metrics`, the dashboard and the CLI's reads see,
//! without waiting for the engine: a plain-data model the engine publishes
//! after every change ([`ReadModel`], behind an `ArcSwap`), the kernel's
//! counters read at the moment through map handles of their own
//! ([`LiveCounters`]), and the proxy's own counters (already lock-free).
//! A read never takes the engine's lock, so a scrape or `knit services`
//! answers while an apply waits on etcd or a reconcile runs.
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use arc_swap::ArcSwap;

use crate::{
    control::{
        AccelStatus, EdgeStats, EndpointRow, EndpointState, ServiceRow, ServiceStats, StatsReport,
        StatusReport,
    },
    datapath::LiveCounters,
    metrics::{
        AccelSample, EdgeLabels, EndpointLabels, EndpointSample, ServiceLabels, ServiceSample,
        Snapshot, TcpEdgeSample,
    },
    proxy::Proxy,
    registry::etcd::Etcd,
};

/// The state's read side, as of the engine's last change, kept compact
/// (names shared, rows and labels built at each read): with 10,000
/// endpoints it is a few MB. Counter fields in its rows are zero:
/// [`Reader`] fills them at each read.
#[derive(Default)]
pub struct ReadModel {
    /// One per client alias, in the order of `knit services` (a
    /// client-only service has one row without an alias).
    pub aliases: Vec<AliasView>,
    /// Every endpoint, this host's and other hosts'.
    pub endpoints: Vec<EndpointView>,
    /// What `knit status` says of the daemon and its state.
    pub status: Option<StatusReport>,
}

/// One client alias (or a client-only service's row).
pub struct AliasView {
    pub row: ServiceRow,
    /// The kernel's id of the alias (keys its counters and its route);
    /// `None` for a client-only service.
    pub service_id: Option<u32>,
    pub labels: Option<ServiceLabels>,
    /// Its endpoints, labelled as the proxy labels them.
    pub endpoints: Vec<AliasEndpoint>,
}

/// One endpoint of an alias, for `/metrics`.
pub struct AliasEndpoint {
    pub task: Arc<str>,
    /// As the proxy labels it (another host's L7 endpoint: its ingress
    /// listener).
    pub address: SocketAddr,
    pub backend_id: u32,
    pub in_rotation: bool,
    pub ejections: u64,
}

/// One endpoint, for `knit endpoints`.
pub struct EndpointView {
    pub service: Arc<str>,
    pub task: Arc<str>,
    pub revision: u32,
    pub port_name: Arc<str>,
    pub host: Arc<str>,
    pub backend_id: u32,
    pub address: SocketAddr,
    pub state: EndpointState,
    pub ejections: u32,
    pub ingress_port: Option<u16>,
    /// Each services[] entry's ingress listener, by discovery name.
    pub ingress_ports: std::collections::BTreeMap<String, u16>,
    /// Its response times through this host's proxy (L7 endpoints).
    pub latency: Option<crate::metrics::LatencyBuckets>,
}

/// The read side: the published model, live counters, the proxy.
pub struct Reader {
    model: ArcSwap<ReadModel>,
    live: LiveCounters,
    heartbeat: crate::datapath::Heartbeat,
    proxy: Arc<Proxy>,
    etcd: Option<Arc<Etcd>>,
    started: Instant,
    retired: AtomicBool,
    /// The last 15 minutes of every alias (filled by a task of its own).
    pub history: super::history::History,
    /// The service graph's L4 edges, from the kernel's counts.
    edges: std::sync::Mutex<super::edges::EdgeBook>,
}

impl Reader {
    pub fn new(
        live: LiveCounters,
        edges: super::edges::EdgeBook,
        heartbeat: crate::datapath::Heartbeat,
        proxy: Arc<Proxy>,
        etcd: Option<Arc<Etcd>>,
    ) -> Self {
        Self {
            model: ArcSwap::from_pointee(ReadModel::default()),
            live,
            heartbeat,
            proxy,
            etcd,
            started: Instant::now(),
            retired: AtomicBool::new(false),
            history: super::history::History::default(),
            edges: std::sync::Mutex::new(edges),
        }
    }

    /// An endpoint's service, task and address (by backend id), as of the
    /// last published state.
    pub fn endpoint_of(&self, backend_id: u32) -> Option<(String, String, SocketAddr)> {
        let m = self.model.load();
        m.endpoints
            .iter()
            .find(|e| e.backend_id == backend_id)
            .map(|e| (e.service.to_string(), e.task.to_string(), e.address))
    }

    /// The tasks allowed to connect now (cgroup id -> service), before
    /// the kernel lets them: the edge book names their connections even if
    /// they end before its next read.
    pub fn remember_sources(
        &self,
        sources: &std::collections::BTreeMap<u64, Arc<crate::proxy::access::Source>>,
    ) {
        self.edges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(sources);
    }

    /// The service graph's TCP edges: (client service, target service) ->
    /// connections, failed connects and bytes so far, counted by the kernel
    /// per connecting task.
    pub fn tcp_edges(&self) -> super::edges::Edges {
        let m = self.model.load();
        let names: std::collections::HashMap<u32, Arc<str>> = m
            .aliases
            .iter()
            .filter_map(|a| Some((a.service_id?, Arc::<str>::from(a.row.service.as_str()))))
            .collect();
        let sources = self.proxy.sources.load();
        self.edges
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read(&sources, |id| names.get(&id).cloned())
    }

    /// The daemon handed over: its state is a new daemon's now.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// Whether the daemon handed over (reads then point to the new one).
    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// The engine's new state, for every read from now on.
    pub fn publish(&self, model: ReadModel) {
        self.model.store(Arc::new(model));
    }

    /// `knit services`: each alias with its kernel counters now.
    pub fn service_rows(&self) -> Vec<ServiceRow> {
        let m = self.model.load();
        m.aliases
            .iter()
            .map(|a| {
                let mut row = a.row.clone();
                if let Some(c) = a.service_id.and_then(|id| self.live.service(id)) {
                    row.new_connections = c.new_conns;
                    row.active_connections = c.active;
                    row.failed_connects = c.failed;
                }
                row
            })
            .collect()
    }

    /// `knit endpoints [SERVICE]`: each endpoint with its kernel counters now.
    pub fn endpoint_rows(&self, service: Option<&str>) -> Vec<EndpointRow> {
        let m = self.model.load();
        m.endpoints
            .iter()
            .filter(|e| service.is_none_or(|s| &*e.service == s))
            .map(|e| {
                let c = self.live.backend(e.backend_id).unwrap_or_default();
                EndpointRow {
                    service: e.service.to_string(),
                    task: e.task.to_string(),
                    revision: e.revision,
                    port_name: e.port_name.to_string(),
                    host: e.host.to_string(),
                    backend_id: e.backend_id,
                    address: e.address.to_string(),
                    state: e.state,
                    new_connections: c.new_conns,
                    active_connections: c.active,
                    failed_connects: c.failed,
                    bytes_sent: c.bytes_sent,
                    bytes_received: c.bytes_received,
                    ejections: e.ejections,
                    ingress_port: e.ingress_port,
                    ingress_ports: e.ingress_ports.clone(),
                    latency_buckets: e
                        .latency
                        .as_ref()
                        .map(crate::metrics::LatencyBuckets::counts)
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// Kernel counters and endpoint states for a metrics scrape.
    pub fn metrics_snapshot(&self) -> Snapshot {
        let m = self.model.load();
        let mut snap = Snapshot {
            accel: AccelSample {
                enabled: m.status.as_ref().is_some_and(|s| s.acceleration.enabled),
                sockets: self.live.accelerated_sockets(),
                counters: self.live.accel(),
            },
            heartbeat_age_s: self.heartbeat.age().map(|d| d.as_secs_f64()),
            ..Snapshot::default()
        };
        for a in &m.aliases {
            let (Some(id), Some(labels)) = (a.service_id, &a.labels) else {
                continue;
            };
            let c = self.live.service(id).unwrap_or_default();
            snap.services.push(ServiceSample {
                labels: labels.clone(),
                active_connections: c.active,
                new_connections: c.new_conns,
                bytes: c.bytes_sent + c.bytes_received,
                failed_connects: c.failed,
            });
            for e in &a.endpoints {
                let c = self.live.backend(e.backend_id).unwrap_or_default();
                snap.endpoints.push(EndpointSample {
                    labels: EndpointLabels {
                        namespace: labels.namespace.clone(),
                        service: labels.service.clone(),
                        target_discovery_name: labels.discovery_name.clone(),
                        task: e.task.to_string(),
                        endpoint: e.address.to_string(),
                    },
                    in_rotation: e.in_rotation,
                    ejections: e.ejections,
                    new_connections: c.new_conns,
                    bytes: c.bytes_sent + c.bytes_received,
                });
            }
        }
        snap.tcp_edges = self
            .tcp_edges()
            .into_iter()
            .map(|((source, target), t)| TcpEdgeSample {
                labels: EdgeLabels {
                    source_service: source.to_string(),
                    target_service: target.to_string(),
                },
                connections: t.connections,
                failed: t.failed,
                bytes: t.bytes,
            })
            .collect();
        snap
    }

    /// Cumulative counters per alias and per edge of the service graph.
    pub fn stats(&self) -> StatsReport {
        let m = self.model.load();
        let routes = self.proxy.routes.load();
        let mut services = Vec::new();
        for a in &m.aliases {
            let Some(id) = a.service_id else {
                continue;
            };
            let c = self.live.service(id).unwrap_or_default();
            let r = &a.row;
            let mut st = ServiceStats {
                service: r.service.clone(),
                namespace: r.namespace.clone(),
                discovery_name: r.discovery_name.clone(),
                dns_name: r.dns_name.clone(),
                port: r.port,
                protocol: r.protocol.clone(),
                healthy: r.healthy,
                endpoints: r.endpoints,
                new_connections: c.new_conns,
                active_connections: c.active,
                bytes: c.bytes_sent + c.bytes_received,
                ..Default::default()
            };
            if let Some(route) = routes.aliases.get(&id) {
                let m = &route.counters;
                st.requests = m.requests.get();
                st.codes = std::array::from_fn(|i| m.codes[i].get());
                st.retries = m.retries.get();
                st.latency_buckets = m.response_time.buckets().counts();
                st.latency_sum_us = m.response_time.sum_us();
                st.latency_count = st.latency_buckets.iter().sum();
            }
            services.push(st);
        }
        let mut edges: std::collections::BTreeMap<(String, String), EdgeStats> = self
            .proxy
            .metrics
            .edges()
            .into_iter()
            .map(|(source, target, requests)| {
                (
                    (source.clone(), target.clone()),
                    EdgeStats {
                        source,
                        target,
                        requests,
                        ..EdgeStats::default()
                    },
                )
            })
            .collect();
        for ((source, target), t) in self.tcp_edges() {
            let e = edges
                .entry((source.to_string(), target.to_string()))
                .or_insert_with(|| EdgeStats {
                    source: source.to_string(),
                    target: target.to_string(),
                    ..EdgeStats::default()
                });
            e.connections = t.connections;
            e.failed_connections = t.failed;
            e.bytes = t.bytes;
        }
        StatsReport {
            at_unix_ms: super::engine::now_ms(),
            latency_bounds_ms: crate::metrics::LATENCY_BOUNDS_MS.to_vec(),
            services,
            edges: edges.into_values().collect(),
        }
    }

    /// `knit status`: the published state, the registry's and the kernel's
    /// figures now.
    pub fn status(&self) -> Option<StatusReport> {
        let m = self.model.load();
        let mut s = m.status.clone()?;
        s.uptime_s = self.started.elapsed().as_secs();
        s.registry = crate::registry::describe(self.etcd.as_deref());
        s.tracked_connections = self.live.tracked_connections();
        s.tls = crate::tls::status(&self.proxy.tls);
        let c = self.live.accel();
        s.acceleration = AccelStatus {
            sockets: self.live.accelerated_sockets(),
            inserted: c.inserted,
            redirected_messages: c.redirected_msgs,
            redirected_bytes: c.redirected_bytes,
            tcp_fallback: c.tcp_fallback,
            ..s.acceleration
        };
        Some(s)
    }
}
