//! Prometheus metrics with ECS Service Connect's names, made recognisable
//! (`RequestCount` -> `knit_request_count`, `HTTPCode_Target_2XX_Count` ->
//! `knit_httpcode_target_2xx_count`, ...), labelled with `discovery_name`
//! (inbound to the tasks of a discovery name) or `target_discovery_name`
//! (as seen by clients), plus `namespace` and `service`.
//!
//! The proxy counts requests as they happen ([`ProxyMetrics`]); connection
//! figures come from the kernel's counters, read at each scrape.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Server side (ECS dimension `DiscoveryName`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub namespace: String,
    pub service: String,
    pub discovery_name: String,
}

/// Client side (ECS dimension `TargetDiscoveryName`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub namespace: String,
    pub service: String,
    pub target_discovery_name: String,
}

/// Client side, per client service (ECS dimension set `TargetDiscoveryName,
/// ServiceName`: traffic to a target from one client service).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientTargetLabels {
    pub namespace: String,
    pub service: String,
    pub target_discovery_name: String,
    /// The service whose tasks sent the requests.
    pub client_service: String,
}

/// An edge of the service graph: requests a service's tasks sent to
/// another service, seen by the egress proxy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EdgeLabels {
    pub source_service: String,
    pub target_service: String,
}

/// A failed TLS handshake with another host, by cause (client side: this
/// host's egress dialled `target_discovery_name`'s ingress on another host).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsClientLabels {
    pub namespace: String,
    pub service: String,
    pub target_discovery_name: String,
    /// [`crate::tls::Cause::label`].
    pub cause: String,
}

/// A failed TLS handshake with another host, by cause (target side: this
/// host's ingress listener of `discovery_name` was dialled).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsTargetLabels {
    pub namespace: String,
    pub service: String,
    pub discovery_name: String,
    pub cause: String,
}

/// A caller that a service's `allowedClients` leaves out.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeniedLabels {
    pub namespace: String,
    pub service: String,
    pub target_discovery_name: String,
    /// The calling service (`-`: not known).
    pub client_service: String,
    /// `connect` (the caller's host's kernel), `egress` (the caller's
    /// host's proxy) or `ingress` (the target's host, by the caller's
    /// certificate).
    pub at: String,
    /// `enforce` (refused) or `audit` (counted and served).
    pub mode: String,
}

/// One identity of this host (its SPIFFE id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    pub identity: String,
}

/// A request the proxy refused because a limit of its target was reached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OverflowLabels {
    pub namespace: String,
    pub service: String,
    pub target_discovery_name: String,
    /// [`Overflow::as_str`].
    pub reason: String,
}

/// Which limit refused a request (`reason` label, and the proxy's
/// `x-knit-overflow` answer header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// `maxPendingRequests`: 503.
    Pending = 0,
    /// `maxRequestBytes`: 413.
    RequestBytes = 1,
    /// `maxHeaderBytes`: 431.
    HeaderBytes = 2,
    /// A client task's share of the upgraded tunnels (half of
    /// `maxConnections`): 503.
    ClientShare = 3,
}

impl Overflow {
    pub const ALL: [Overflow; 4] = [
        Overflow::Pending,
        Overflow::RequestBytes,
        Overflow::HeaderBytes,
        Overflow::ClientShare,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::Pending => "pending",
            Overflow::RequestBytes => "request_bytes",
            Overflow::HeaderBytes => "header_bytes",
            Overflow::ClientShare => "client_share",
        }
    }
}

/// A path of the admin listener.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: String,
}

/// One endpoint of a target.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: String,
    pub service: String,
    pub target_discovery_name: String,
    pub task: String,
    pub endpoint: String,
}

/// The response time histograms' bucket bounds, in milliseconds (0.1 ms
/// to 100 s; above: the +Inf bucket).
pub const LATENCY_BOUNDS_MS: [f64; 17] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10_000.0, 100_000.0,
];

/// A response-time histogram (milliseconds, over [`LATENCY_BOUNDS_MS`])
/// that a response counts into with two atomic adds: prometheus_client's
/// own takes a write lock per observation, and cannot be read back. Its
/// buckets are what `knit top`, the dashboard and the stats API take
/// percentiles from; its sum (µs) and count their means.
#[derive(Debug, Clone, Default)]
pub struct ResponseTimes {
    buckets: LatencyBuckets,
    sum_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl ResponseTimes {
    /// A response after `ms` milliseconds, in bucket `i` (see
    /// [`LatencyBuckets::bucket`]).
    fn observe_at(&self, i: usize, ms: f64) {
        self.buckets.add(i);
        self.sum_us
            .fetch_add((ms * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn observe(&self, ms: f64) {
        self.observe_at(LatencyBuckets::bucket(ms), ms);
    }

    /// The sum of the response times, in µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn buckets(&self) -> &LatencyBuckets {
        &self.buckets
    }
}

impl prometheus_client::metrics::TypedMetric for ResponseTimes {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for ResponseTimes {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let counts = self.buckets.counts();
        let count = counts.iter().sum();
        // The last bucket's bound is +Inf (prometheus_client writes
        // f64::MAX as such, as for its own histograms).
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_MS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts)
            .collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.sum_us() as f64 / 1000.0,
            count,
            &buckets,
            None,
        )
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

/// Response times per bucket of [`LATENCY_BOUNDS_MS`] (the last one:
/// above them all), readable back (the Prometheus histogram is not): what
/// `knit top` and the dashboard take percentiles from.
#[derive(Debug, Clone, Default)]
pub struct LatencyBuckets(
    std::sync::Arc<[std::sync::atomic::AtomicU64; LATENCY_BOUNDS_MS.len() + 1]>,
);

impl LatencyBuckets {
    /// The bucket `ms` falls in (found once per response, however many
    /// sets of buckets count it).
    fn bucket(ms: f64) -> usize {
        LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len())
    }

    fn add(&self, i: usize) {
        self.0[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each bucket's count (not cumulative).
    pub fn counts(&self) -> Vec<u64> {
        self.0
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    }
}

/// The `q` quantile (0..=1) of response times whose per-bucket counts are
/// `counts` (of [`LATENCY_BOUNDS_MS`] and +Inf), interpolated linearly in
/// its bucket as Prometheus' `histogram_quantile` does; `None` without any.
pub fn quantile_ms(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        if *c > 0 && (seen + c) as f64 >= rank {
            let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                // Above the last bound: that bound is all that is known.
                return LATENCY_BOUNDS_MS.last().copied();
            };
            let lower = if i == 0 {
                0.0
            } else {
                LATENCY_BOUNDS_MS[i - 1]
            };
            let within = (rank - seen as f64) / *c as f64;
            return Some(lower + (upper - lower) * within);
        }
        seen += c;
    }
    LATENCY_BOUNDS_MS.last().copied()
}

/// What the L7 proxy counts per request.
#[derive(Default)]
pub struct ProxyMetrics {
    pub request_count: Family<ServiceLabels, Counter>,
    pub grpc_request_count: Family<ServiceLabels, Counter>,
    /// `HTTPCode_Target_{2,3,4,5}XX_Count`, index 0..4.
    pub http_code: [Family<TargetLabels, Counter>; 4],
    pub request_count_per_target: Family<EndpointLabels, Counter>,
    pub target_processed_bytes: Family<TargetLabels, Counter>,
    pub target_response_time: Family<TargetLabels, ResponseTimes>,
    pub retries: Family<TargetLabels, Counter>,
    /// Retries the retry budget refused.
    pub budget_exhausted: Family<TargetLabels, Counter>,
    /// Requests refused by a target's limits, by reason.
    pub overflow: Family<OverflowLabels, Counter>,
    /// Access log lines the writer could not keep up with.
    pub access_log_dropped: Counter,
    /// Downstream connections closed because a request head came too
    /// slowly (slowloris).
    pub slow_heads: Counter,
    /// The service graph, from real requests.
    pub service_graph: Family<EdgeLabels, Counter>,
    /// Per target and client service: requests, 2xx..5xx, response time.
    pub client_requests: Family<ClientTargetLabels, Counter>,
    pub client_http_code: [Family<ClientTargetLabels, Counter>; 4],
    pub client_response_time: Family<ClientTargetLabels, ResponseTimes>,
    /// Requests to the admin listener, by path.
    pub admin_requests: Family<PathLabels, Counter>,
    /// ECS's `ClientTLSNegotiationErrorCount`, by cause.
    pub tls_client_errors: Family<TlsClientLabels, Counter>,
    /// ECS's `TargetTLSNegotiationErrorCount`, by cause.
    pub tls_target_errors: Family<TlsTargetLabels, Counter>,
    /// Callers that `allowedClients` leaves out.
    pub authorization_denied: Family<DeniedLabels, Counter>,
    /// When each identity's certificate expires (seconds since the epoch).
    pub tls_expiry: Family<IdentityLabels, Gauge>,
    /// Certificates installed (first ones and renewals).
    pub tls_rotations: Counter,
    /// Mutual TLS handshakes completed: this host's egress dialling
    /// another host (client), and other hosts dialling its ingress (server).
    pub tls_client_handshakes: Counter,
    pub tls_server_handshakes: Counter,
    /// TCP connections between hosts handed to the kernel's TLS (kTLS)
    /// after their handshake, both sides; and those that could not be.
    pub ktls_connections: Counter,
    pub ktls_failures: Counter,
    /// 1 while TCP between hosts goes to kTLS after the handshake.
    pub ktls_enabled: Gauge,
    /// Certificate requests that failed (refused by the signer, or a bad answer).
    pub tls_request_failures: Counter,
    /// The graph's edges seen so far (the family cannot be listed).
    edges: std::sync::RwLock<std::collections::BTreeMap<(String, String), Counter>>,
}

/// One client service's series for one target, looked up once per
/// downstream connection.
#[derive(Debug, Clone)]
pub struct ClientCounters {
    pub requests: Counter,
    pub codes: [Counter; 4],
    pub response_time: ResponseTimes,
}

impl ClientCounters {
    /// A response head with `status` after `ms` milliseconds.
    pub fn answered(&self, status: u16, ms: f64) {
        if (200..600).contains(&status) {
            self.codes[(status / 100 - 2) as usize].inc();
        }
        self.response_time.observe(ms);
    }
}

/// One alias's series, looked up once when its route is built, so that a
/// request only does atomic adds (no label hashing on the hot path).
#[derive(Debug, Clone)]
pub struct AliasCounters {
    pub requests: Counter,
    pub grpc_requests: Counter,
    /// 2xx..5xx responses from targets.
    pub codes: [Counter; 4],
    pub bytes: Counter,
    /// Kept across route rebuilds (its family holds it): what the stats
    /// read their rates, means and percentiles from.
    pub response_time: ResponseTimes,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    /// By [`Overflow`] (its discriminant).
    pub overflow: [Counter; 4],
}

impl AliasCounters {
    /// A response head after `ms` milliseconds.
    /// A response time, for the alias and (when known) the endpoint that
    /// answered.
    pub fn latency(&self, ms: f64, endpoint: Option<&LatencyBuckets>) {
        let i = LatencyBuckets::bucket(ms);
        self.response_time.observe_at(i, ms);
        if let Some(e) = endpoint {
            e.add(i);
        }
    }

    /// A request refused by a limit.
    pub fn overflow(&self, o: Overflow) {
        self.overflow[o as usize].inc();
    }

    /// A response from an endpoint with `status`.
    pub fn code(&self, status: u16) {
        if (200..600).contains(&status) {
            self.codes[(status / 100 - 2) as usize].inc();
        }
    }
}

impl ProxyMetrics {
    /// The series of an alias (server side `s`, client side `t`).
    pub fn for_alias(&self, s: &ServiceLabels, t: &TargetLabels) -> AliasCounters {
        AliasCounters {
            requests: self.request_count.get_or_create(s).clone(),
            grpc_requests: self.grpc_request_count.get_or_create(s).clone(),
            codes: std::array::from_fn(|i| self.http_code[i].get_or_create(t).clone()),
            bytes: self.target_processed_bytes.get_or_create(t).clone(),
            response_time: self.target_response_time.get_or_create(t).clone(),
            retries: self.retries.get_or_create(t).clone(),
            budget_exhausted: self.budget_exhausted.get_or_create(t).clone(),
            overflow: Overflow::ALL.map(|o| {
                self.overflow
                    .get_or_create(&OverflowLabels {
                        namespace: t.namespace.clone(),
                        service: t.service.clone(),
                        target_discovery_name: t.target_discovery_name.clone(),
                        reason: o.as_str().to_string(),
                    })
                    .clone()
            }),
        }
    }

    /// The series of target `t` as client service `client` sees it.
    pub fn for_client(&self, t: &TargetLabels, client: &str) -> ClientCounters {
        let l = ClientTargetLabels {
            namespace: t.namespace.clone(),
            service: t.service.clone(),
            target_discovery_name: t.target_discovery_name.clone(),
            client_service: client.to_string(),
        };
        ClientCounters {
            requests: self.client_requests.get_or_create(&l).clone(),
            codes: std::array::from_fn(|i| self.client_http_code[i].get_or_create(&l).clone()),
            response_time: self.client_response_time.get_or_create(&l).clone(),
        }
    }

    /// The request counter of an edge of the service graph.
    pub fn edge(&self, source: &str, target: &str) -> Counter {
        let key = (source.to_string(), target.to_string());
        if let Some(c) = self
            .edges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return c.clone();
        }
        let c = self
            .service_graph
            .get_or_create(&EdgeLabels {
                source_service: key.0.clone(),
                target_service: key.1.clone(),
            })
            .clone();
        self.edges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, c.clone());
        c
    }

    /// Every edge and its requests so far.
    pub fn edges(&self) -> Vec<(String, String, u64)> {
        self.edges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((s, t), c)| (s.clone(), t.clone(), c.get()))
            .collect()
    }

    /// The request counter of one endpoint.
    pub fn for_endpoint(&self, e: &EndpointLabels) -> Counter {
        self.request_count_per_target.get_or_create(e).clone()
    }

    /// Register the proxy's families (clones share the counts).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "request_count",
            "Requests processed by the proxy, inbound per discovery name (ECS RequestCount)",
            self.request_count.clone(),
        );
        r.register(
            "grpc_request_count",
            "gRPC requests processed (ECS GrpcRequestCount)",
            self.grpc_request_count.clone(),
        );
        for (i, f) in self.http_code.iter().enumerate() {
            r.register(
                format!("httpcode_target_{}xx_count", i + 2),
                format!(
                    "{}xx responses from targets (ECS HTTPCode_Target_{}XX_Count)",
                    i + 2,
                    i + 2
                ),
                f.clone(),
            );
        }
        r.register(
            "request_count_per_target",
            "Requests per target endpoint (ECS RequestCountPerTarget)",
            self.request_count_per_target.clone(),
        );
        r.register(
            "target_processed_bytes",
            "Request and response body bytes to and from targets (ECS TargetProcessedBytes)",
            self.target_processed_bytes.clone(),
        );
        r.register(
            "target_response_time_milliseconds",
            "From sending a request to a target to its response head (ECS TargetResponseTime)",
            self.target_response_time.clone(),
        );
        r.register(
            "retries",
            "Requests retried on another endpoint",
            self.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Retries a target's retry budget refused (the request failed instead)",
            self.budget_exhausted.clone(),
        );
        r.register(
            "limit_overflow",
            "Requests refused because a limit of the target service was reached, by reason \
             (pending: maxPendingRequests, 503; request_bytes: maxRequestBytes, 413; \
             header_bytes: maxHeaderBytes, 431)",
            self.overflow.clone(),
        );
        r.register(
            "client_tls_negotiation_error_count",
            "TLS handshakes this host's egress failed with other hosts' ingress, by cause \
             (ECS ClientTLSNegotiationErrorCount)",
            self.tls_client_errors.clone(),
        );
        r.register(
            "target_tls_negotiation_error_count",
            "TLS handshakes other hosts failed with this host's ingress listeners, by cause \
             (ECS TargetTLSNegotiationErrorCount)",
            self.tls_target_errors.clone(),
        );
        r.register(
            "authorization_denied_count",
            "Calls from a client service that the target's allowedClients leaves out, by where \
             they were seen (connect: the caller's host's kernel, per connect, EPERM; egress: the \
             caller's host's proxy, per request; ingress: the target's host, by certificate) and \
             mode (enforce: refused: EPERM, 403, gRPC PERMISSION_DENIED or closed; audit: served)",
            self.authorization_denied.clone(),
        );
        r.register(
            "tls_certificate_expiry_seconds",
            "When each of this host's service identities expires (Unix time)",
            self.tls_expiry.clone(),
        );
        r.register(
            "tls_client_handshakes",
            "Mutual TLS handshakes this host's egress completed with other hosts' ingress \
             (a new pooled connection each)",
            self.tls_client_handshakes.clone(),
        );
        r.register(
            "tls_server_handshakes",
            "Mutual TLS handshakes other hosts completed with this host's ingress listeners",
            self.tls_server_handshakes.clone(),
        );
        r.register(
            "tls_ktls_connections",
            "TCP connections between hosts handed to the kernel's TLS (kTLS) after their mutual \
             TLS handshake (either side)",
            self.ktls_connections.clone(),
        );
        r.register(
            "tls_ktls_enabled",
            "1 while TCP connections between hosts are handed to the kernel's TLS (kTLS) after \
             their handshake (the start-up probe passed, and kTLS refused none since), else 0",
            self.ktls_enabled.clone(),
        );
        r.register(
            "tls_ktls_failures",
            "TCP connections between hosts that kTLS refused after their handshake (closed)",
            self.ktls_failures.clone(),
        );
        r.register(
            "tls_certificate_rotations",
            "Service certificates installed (first ones and renewals)",
            self.tls_rotations.clone(),
        );
        r.register(
            "tls_certificate_request_failures",
            "Certificate requests refused by the signer or answered with an unusable certificate",
            self.tls_request_failures.clone(),
        );
        r.register(
            "service_graph_request_count",
            "Requests from one service's tasks to another service (egress)",
            self.service_graph.clone(),
        );
        r.register(
            "client_request_count",
            "Requests to a target from one client service's tasks (ECS dimensions \
             TargetDiscoveryName, ServiceName)",
            self.client_requests.clone(),
        );
        for (i, f) in self.client_http_code.iter().enumerate() {
            r.register(
                format!("client_httpcode_target_{}xx_count", i + 2),
                format!(
                    "{}xx responses from a target to one client service's tasks \
                     (ECS HTTPCode_Target_{}XX_Count by TargetDiscoveryName, ServiceName)",
                    i + 2,
                    i + 2
                ),
                f.clone(),
            );
        }
        r.register(
            "client_target_response_time_milliseconds",
            "TargetResponseTime of one client service's requests to a target",
            self.client_response_time.clone(),
        );
        r.register(
            "admin_requests",
            "Requests to the admin listener (dashboard, API, metrics), by path",
            self.admin_requests.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access log lines dropped because the writer fell behind",
            self.access_log_dropped.clone(),
        );
        r.register(
            "downstream_slow_heads",
            "Connections closed because a request head did not arrive whole within 10 s of its first byte (slowloris)",
            self.slow_heads.clone(),
        );
    }
}

/// Kernel-side and state figures, read at a scrape.
#[derive(Default)]
pub struct Snapshot {
    pub services: Vec<ServiceSample>,
    pub endpoints: Vec<EndpointSample>,
    pub accel: AccelSample,
    /// How old the kernel heartbeat is (`None`: none written); L7
    /// services fail open once it is 1.5 s old.
    pub heartbeat_age_s: Option<f64>,
    /// The service graph's TCP edges (the kernel's counts per client task).
    pub tcp_edges: Vec<TcpEdgeSample>,
}

/// One TCP edge of the service graph.
pub struct TcpEdgeSample {
    pub labels: EdgeLabels,
    pub connections: u64,
    pub failed: u64,
    pub bytes: u64,
}

/// One client alias: the kernel's counters of its connections.
pub struct ServiceSample {
    pub labels: ServiceLabels,
    pub active_connections: u64,
    pub new_connections: u64,
    /// Both ways.
    pub bytes: u64,
    pub failed_connects: u64,
}

/// One endpoint of an alias.
pub struct EndpointSample {
    pub labels: EndpointLabels,
    pub in_rotation: bool,
    pub ejections: u64,
    pub new_connections: u64,
    /// Both ways.
    pub bytes: u64,
}

/// Same-host acceleration.
#[derive(Default)]
pub struct AccelSample {
    /// New connections are accelerated.
    pub enabled: bool,
    /// Sockets in the sockhash now.
    pub sockets: usize,
    /// The kernel's totals.
    pub counters: proxy_common::maps::AccelCounters,
}

impl Snapshot {
    /// Register the snapshot's figures (fresh families, set once).
    pub fn register(self, r: &mut Registry) {
        let active: Family<ServiceLabels, Gauge> = Family::default();
        let new: Family<ServiceLabels, Counter> = Family::default();
        let bytes: Family<ServiceLabels, Counter> = Family::default();
        let failed: Family<ServiceLabels, Counter> = Family::default();
        for x in &self.services {
            let l = &x.labels;
            active
                .get_or_create(l)
                .set(x.active_connections.min(i64::MAX as u64) as i64);
            new.get_or_create(l).inc_by(x.new_connections);
            bytes.get_or_create(l).inc_by(x.bytes);
            failed.get_or_create(l).inc_by(x.failed_connects);
        }
        r.register(
            "active_connection_count",
            "Open connections into the tasks of a discovery name (ECS ActiveConnectionCount)",
            active,
        );
        r.register(
            "new_connection_count",
            "Connections established (ECS NewConnectionCount)",
            new,
        );
        r.register(
            "processed_bytes",
            "Bytes of connections, both ways, added on close (ECS ProcessedBytes)",
            bytes,
        );
        r.register(
            "failed_connection_count",
            "Connects that never established",
            failed,
        );
        let healthy: Family<EndpointLabels, Gauge> = Family::default();
        let ejections: Family<EndpointLabels, Counter> = Family::default();
        let conns: Family<EndpointLabels, Counter> = Family::default();
        let ep_bytes: Family<EndpointLabels, Counter> = Family::default();
        for x in &self.endpoints {
            let l = &x.labels;
            healthy.get_or_create(l).set(i64::from(x.in_rotation));
            ejections.get_or_create(l).inc_by(x.ejections);
            conns.get_or_create(l).inc_by(x.new_connections);
            ep_bytes.get_or_create(l).inc_by(x.bytes);
        }
        r.register(
            "endpoint_healthy",
            "1 when the endpoint is in rotation",
            healthy,
        );
        r.register(
            "endpoint_ejections",
            "Times the endpoint was ejected by outlier detection",
            ejections,
        );
        r.register(
            "endpoint_new_connection_count",
            "Connections established to the endpoint (TCP services)",
            conns,
        );
        r.register(
            "endpoint_processed_bytes",
            "Bytes of the endpoint's connections, both ways (TCP services)",
            ep_bytes,
        );
        let edge_conns: Family<EdgeLabels, Counter> = Family::default();
        let edge_failed: Family<EdgeLabels, Counter> = Family::default();
        let edge_bytes: Family<EdgeLabels, Counter> = Family::default();
        for x in &self.tcp_edges {
            edge_conns.get_or_create(&x.labels).inc_by(x.connections);
            edge_failed.get_or_create(&x.labels).inc_by(x.failed);
            edge_bytes.get_or_create(&x.labels).inc_by(x.bytes);
        }
        r.register(
            "service_graph_tcp_connection_count",
            "TCP connections from one service's tasks to another service's TCP aliases (kernel)",
            edge_conns,
        );
        r.register(
            "service_graph_tcp_failed_connection_count",
            "TCP connects from one service's tasks to another service that never established",
            edge_failed,
        );
        r.register(
            "service_graph_tcp_processed_bytes",
            "Bytes of TCP connections from one service's tasks to another service, both ways, added on close",
            edge_bytes,
        );
        let AccelSample {
            enabled: on,
            sockets,
            counters: c,
        } = self.accel;
        let g = |v: i64| {
            let g: Gauge = Gauge::default();
            g.set(v);
            g
        };
        let n = |v: u64| {
            let c: Counter = Counter::default();
            c.inc_by(v);
            c
        };
        if let Some(age) = self.heartbeat_age_s {
            let g: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
            g.set(age);
            r.register(
                "datapath_heartbeat_age_seconds",
                "Age of the heartbeat the connect hook checks (L7 services fail open past 1.5 s)",
                g,
            );
        }
        r.register(
            "accel_enabled",
            "1 when same-host acceleration (sockhash + sk_msg) takes new connections",
            g(i64::from(on)),
        );
        r.register(
            "accel_sockets",
            "Sockets in the sockhash now",
            g(sockets as i64),
        );
        r.register(
            "accel_inserted_sockets",
            "Sockets put into the sockhash",
            n(c.inserted),
        );
        r.register(
            "accel_redirected_messages",
            "Sends handed socket to socket by sk_msg",
            n(c.redirected_msgs),
        );
        r.register(
            "accel_redirected_bytes",
            "Bytes handed socket to socket by sk_msg",
            n(c.redirected_bytes),
        );
        r.register(
            "accel_tcp_fallback_sockets",
            "Sockets in the sockhash whose first send found no peer there (TCP/IP throughout)",
            n(c.tcp_fallback),
        );
    }
}

/// The text exposition of everything.
pub fn render(proxy: &ProxyMetrics, snap: Snapshot) -> String {
    let mut r = Registry::with_prefix("knit");
    proxy.register(&mut r);
    snap.register(&mut r);
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = LatencyBuckets::default();
        assert_eq!(quantile_ms(&b.counts(), 0.5), None);
        // 100 answers between 5 and 10 ms, one over 100 s.
        for _ in 0..100 {
            b.add(LatencyBuckets::bucket(7.0));
        }
        b.add(LatencyBuckets::bucket(200_000.0));
        let c = b.counts();
        let p50 = quantile_ms(&c, 0.5).unwrap_or_default();
        assert!((5.0..=10.0).contains(&p50), "{p50}");
        assert_eq!(quantile_ms(&c, 1.0), Some(100_000.0));
        assert!(quantile_ms(&c, 0.99).is_some_and(|p| p <= 10.0));
    }

    #[test]
    fn response_times_are_a_prometheus_histogram() -> Result<(), std::fmt::Error> {
        let mut r = Registry::default();
        let f: Family<TargetLabels, ResponseTimes> = Family::default();
        r.register("rt_milliseconds", "Response times", f.clone());
        let t = f.get_or_create(&TargetLabels {
            namespace: "default".into(),
            service: "web".into(),
            target_discovery_name: "web".into(),
        });
        for ms in [0.05, 0.3, 0.3, 7.0, 200_000.0] {
            t.observe(ms);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r)?;
        let line = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("rt_milliseconds_{suffix}")))
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        };
        assert!(text.contains("# TYPE rt_milliseconds histogram"), "{text}");
        assert_eq!(line("count{").as_deref(), Some("5"));
        // 0.05 + 0.3 + 0.3 + 7 + 200000 ms, counted in µs.
        assert_eq!(line("sum{").as_deref(), Some("200007.65"));
        // Cumulative, each at its bound, all at +Inf.
        assert_eq!(line("bucket{le=\"0.1\",").as_deref(), Some("1"));
        assert_eq!(line("bucket{le=\"0.5\",").as_deref(), Some("3"));
        assert_eq!(line("bucket{le=\"10.0\",").as_deref(), Some("4"));
        assert_eq!(line("bucket{le=\"100000.0\",").as_deref(), Some("4"));
        assert_eq!(line("bucket{le=\"+Inf\",").as_deref(), Some("5"));
        assert_eq!(t.buckets().counts().iter().sum::<u64>(), 5);
        Ok(())
    }
}
