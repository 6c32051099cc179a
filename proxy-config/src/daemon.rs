//! The daemon's own configuration, `/etc/knit/knit.toml`.
//!
//! Every key is optional; the defaults below are what a missing key (or a
//! missing file, unless the operator named it) means. Unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use crate::names;

/// Where the daemon looks for its configuration unless told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/knit/knit.toml";
/// `default_namespace`: the cluster's `serviceConnectDefaults.namespace`.
pub const DEFAULT_NAMESPACE: &str = crate::model::DEFAULT_NAMESPACE;
/// `state_dir`: the embedded registry and other state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/knit";
/// `bpf_pin_dir`: where eBPF maps and links are pinned (on bpffs).
pub const DEFAULT_BPF_PIN_DIR: &str = "/sys/fs/bpf/knit";
/// `cgroup`: the knit cgroup, relative to the cgroup2 mount.
pub const DEFAULT_CGROUP: &str = "knit";
/// `socket`: the CLI's unix socket (root only).
pub const DEFAULT_SOCKET: &str = "/run/knit/knit.sock";
/// `hosts_file`: where knit keeps its managed block of client names.
pub const DEFAULT_HOSTS_FILE: &str = "/etc/hosts";
/// `admin.listen`: admin HTTP (metrics, API, dashboard, health).
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);
/// `registry.endpoints` for the etcd backend.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// `registry.prefix`: the etcd key prefix of one knit cluster.
pub const DEFAULT_ETCD_PREFIX: &str = "/knit";
/// `registry.lease_ttl_s`: a host's endpoints outlive its daemon this long.
pub const DEFAULT_LEASE_TTL_S: u64 = 10;
/// `registry.timeout_ms`: longest wait for one etcd request.
pub const DEFAULT_ETCD_TIMEOUT_MS: u64 = 5_000;
/// `host.address`: where other hosts reach this host's ingress listeners.
pub const DEFAULT_HOST_ADDRESS: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// `outlier.consecutive_failures`: failures in a row that eject a target.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// `outlier.base_ejection_ms`: first ejection; the n-th lasts n times this
/// (as Envoy), up to `max_ejection_ms`.
pub const DEFAULT_BASE_EJECTION_MS: u64 = 30_000;
/// `outlier.max_ejection_ms`: longest ejection.
pub const DEFAULT_MAX_EJECTION_MS: u64 = 300_000;
/// `outlier.max_ejection_percent`: share of a service's targets that may be
/// ejected at once.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;
/// `outlier.interval_ms`: how often the daemon reads the kernel's counters.
pub const DEFAULT_OUTLIER_INTERVAL_MS: u64 = 100;
/// `proxy.drain_timeout_ms`: how long a draining endpoint's requests and
/// connections may take before it is deregistered anyway (ECS's agent waits
/// 20 s, `LISTENER_DRAIN_WAIT_TIME_S`).
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 20_000;

/// knit.toml. Every key is optional; [`Default`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Namespace for services that name none (ECS: the cluster's
    /// `serviceConnectDefaults.namespace`). Default `"default"`.
    pub default_namespace: String,
    /// State directory. Default `/var/lib/knit`.
    pub state_dir: PathBuf,
    /// bpffs directory for pinned maps and links. Default `/sys/fs/bpf/knit`.
    pub bpf_pin_dir: PathBuf,
    /// knit's cgroup, relative to the cgroup2 mount; tasks live in
    /// `<mount>/<cgroup>/<service>/<task>`. Default `knit`.
    pub cgroup: String,
    /// The CLI's unix socket. Default `/run/knit/knit.sock`.
    pub socket: PathBuf,
    /// The hosts file holding knit's managed block. Default `/etc/hosts`.
    pub hosts_file: PathBuf,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[registry]`.
    pub registry: RegistryConfig,
    /// `[host]`.
    pub host: HostConfig,
    /// `[outlier]`.
    pub outlier: OutlierConfig,
    /// `[proxy]`.
    pub proxy: ProxyConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// `[datapath]`.
    pub datapath: DatapathSection,
    /// `[tls]`.
    pub tls: TlsConfig,
}

/// `tls.trust_domain`: the SPIFFE trust domain of service identities.
pub const DEFAULT_TRUST_DOMAIN: &str = "knit.local";
/// `tls.certificate_ttl_s` (the signer's): how long an issued certificate is valid.
pub const DEFAULT_CERTIFICATE_TTL_S: u64 = 24 * 3600;

/// `[tls]`: mutual TLS between hosts. A services[] entry with ECS's `tls`
/// block is reached over mutual TLS from other hosts; every host's daemon
/// then holds an identity (an X.509 certificate with URI SAN
/// `spiffe://<trust_domain>/ns/<namespace>/svc/<service>`) for each
/// service it runs, issued by `knit signer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The SPIFFE trust domain: the same on every host and the signer.
    /// Default `knit.local`.
    pub trust_domain: String,
    /// How long the certificates `knit signer` issues are valid, in
    /// seconds (daemons renew them at half life). Default 86400 (24 h).
    pub certificate_ttl_s: u64,
    /// Namespaces whose every services[] entry is reached over mutual TLS
    /// from other hosts, as if each had ECS's `tls` block (the daemon-wide
    /// switch; give every host the same list). Default none.
    pub namespaces: Vec<String>,
    /// TCP between hosts: after the handshake, hand the keys to the
    /// kernel's TLS (kTLS) when the kernel has it. Default true.
    pub ktls: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            certificate_ttl_s: DEFAULT_CERTIFICATE_TTL_S,
            namespaces: Vec::new(),
            ktls: true,
        }
    }
}

/// Whether `td` is a valid SPIFFE trust domain name: lower-case letters,
/// digits, `.`, `-` and `_`, 1..=255 characters.
pub fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
        })
}

/// `[datapath]`: what the kernel side does beyond routing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatapathSection {
    /// Same-host acceleration: sockets of knit's paths whose two ends are
    /// on this host (task -> egress listener, daemon -> local task, a
    /// task's TCP connection to a local task) go into a sockhash, and an
    /// sk_msg program hands each send straight to the peer socket, skipping
    /// the TCP/IP stack. Default `true`. `knit daemon --no-accelerate`
    /// turns it off whatever the file says. Applies to new connections; a
    /// connection keeps the path it started on.
    pub accelerate: bool,
}

impl Default for DatapathSection {
    fn default() -> Self {
        DatapathSection { accelerate: true }
    }
}

/// `log.level`: the daemon's log filter.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: the daemon's own logs (on stderr; journald under systemd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info` (default), `debug`, `knit=debug,warn`...
    /// $KNIT_LOG wins over it. SIGHUP applies a new one.
    pub level: String,
    /// `"text"` (default) or `"json"`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `[proxy]`: the L7 proxy and draining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Longest drain, in milliseconds. Default 20000.
    pub drain_timeout_ms: u64,
    /// Data-plane threads: each runs a single-threaded runtime that serves
    /// its own egress listener of the SO_REUSEPORT group and its share of
    /// the ingress listeners, and nothing else (the control plane runs
    /// elsewhere). 0 (the default): one per CPU the daemon may use, at most
    /// [`ProxyConfig::MAX_THREADS`]. Read at start.
    pub threads: usize,
}

impl ProxyConfig {
    /// The most data-plane threads (and egress listeners) a daemon runs.
    pub const MAX_THREADS: usize = 64;

    /// The data-plane threads to run: `threads`, or with 0, `cpus` (the
    /// CPUs the daemon may use), within 1..=MAX_THREADS.
    pub fn threads_for(&self, cpus: usize) -> usize {
        let n = if self.threads == 0 {
            cpus
        } else {
            self.threads
        };
        n.clamp(1, Self::MAX_THREADS)
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            drain_timeout_ms: DEFAULT_DRAIN_TIMEOUT_MS,
            threads: 0,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            default_namespace: DEFAULT_NAMESPACE.to_owned(),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            bpf_pin_dir: PathBuf::from(DEFAULT_BPF_PIN_DIR),
            cgroup: DEFAULT_CGROUP.to_owned(),
            socket: PathBuf::from(DEFAULT_SOCKET),
            hosts_file: PathBuf::from(DEFAULT_HOSTS_FILE),
            admin: AdminConfig::default(),
            registry: RegistryConfig::default(),
            host: HostConfig::default(),
            outlier: OutlierConfig::default(),
            proxy: ProxyConfig::default(),
            log: LogConfig::default(),
            datapath: DatapathSection::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// `[admin]`: the admin HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address and port. Default `127.0.0.1:9901`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: DEFAULT_ADMIN_LISTEN,
        }
    }
}

/// Which registry holds namespaces, services and endpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryBackend {
    /// A store in `state_dir`: one host.
    #[default]
    Embedded,
    /// etcd at `endpoints`: many hosts.
    Etcd,
}

/// `[registry]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// `"embedded"` (default) or `"etcd"`.
    pub backend: RegistryBackend,
    /// etcd endpoints (etcd backend only). Default `["http://127.0.0.1:2379"]`.
    pub endpoints: Vec<String>,
    /// Key prefix of this knit cluster in etcd. Default `/knit`.
    pub prefix: String,
    /// Lease of this host's endpoints in etcd, in seconds: a host whose
    /// daemon stops keeping it alive leaves every other host's view this
    /// long after. Default 10.
    pub lease_ttl_s: u64,
    /// Longest wait for one etcd request (apply, task start), in
    /// milliseconds. Default 5000.
    pub timeout_ms: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            backend: RegistryBackend::Embedded,
            endpoints: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
            prefix: DEFAULT_ETCD_PREFIX.to_owned(),
            lease_ttl_s: DEFAULT_LEASE_TTL_S,
            timeout_ms: DEFAULT_ETCD_TIMEOUT_MS,
        }
    }
}

/// `[host]`: this host as other hosts see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostConfig {
    /// Where other hosts reach this host's ingress listeners. Default `127.0.0.1`.
    pub address: Ipv4Addr,
    /// This host's name in the registry (unique in the fleet). Default:
    /// the machine's host name.
    pub name: Option<String>,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            address: DEFAULT_HOST_ADDRESS,
            name: None,
        }
    }
}

/// `[outlier]`: outlier detection (ECS: not configurable; knit: here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failures that eject a target; at least 1. Default 5.
    pub consecutive_failures: u32,
    /// First ejection, in milliseconds; the n-th lasts n times this. Default 30000.
    pub base_ejection_ms: u64,
    /// Longest ejection, in milliseconds; at least `base_ejection_ms`. Default 300000.
    pub max_ejection_ms: u64,
    /// Most targets of one service ejected at once, in percent (0..=100). Default 10.
    pub max_ejection_percent: u32,
    /// How often the daemon reads the kernel counters, in milliseconds; at
    /// least 1. Default 100.
    pub interval_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: DEFAULT_CONSECUTIVE_FAILURES,
            base_ejection_ms: DEFAULT_BASE_EJECTION_MS,
            max_ejection_ms: DEFAULT_MAX_EJECTION_MS,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
            interval_ms: DEFAULT_OUTLIER_INTERVAL_MS,
        }
    }
}

/// Reads knit.toml at `path`. A missing file gives the defaults unless
/// `must_exist` (the operator named the file explicitly).
pub fn load_daemon_config(path: &Path, must_exist: bool) -> Result<DaemonConfig, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_daemon_config(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
            Ok(DaemonConfig::default())
        }
        Err(e) => {
            let fix = if e.kind() == std::io::ErrorKind::NotFound {
                "create the file (every key is optional; an empty file gives the \
                        defaults), or name another with --config"
                    .to_owned()
            } else {
                "make the file readable by the daemon's user, or name another with --config"
                    .to_owned()
            };
            Err(ConfigError::Read {
                path: path.to_owned(),
                source: e,
                fix,
            })
        }
    }
}

/// Parses and validates knit.toml text; `path` is only used in errors.
pub fn parse_daemon_config(text: &str, path: &Path) -> Result<DaemonConfig, ConfigError> {
    let config: DaemonConfig = serde_path_to_error::deserialize(toml::Deserializer::new(text))
        .map_err(|e| toml_error(text, path, &e))?;
    validate(&config).map_err(|(key, message, fix)| ConfigError::Invalid {
        path: path.to_owned(),
        line: key_line(text, key),
        key: key.to_owned(),
        message,
        fix,
    })?;
    Ok(config)
}

fn toml_error(
    text: &str,
    path: &Path,
    e: &serde_path_to_error::Error<toml::de::Error>,
) -> ConfigError {
    let inner = e.inner();
    let message = inner.message().trim().replace('\n', "; ");
    let mut key = e.path().to_string();
    if key == "." || key == "?" {
        key.clear();
    }
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
        && !key.ends_with(field)
    {
        key = if key.is_empty() {
            field.to_owned()
        } else {
            format!("{key}.{field}")
        };
    }
    let line = inner
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let fix = if message.starts_with("unknown field") {
        "remove the key or correct its spelling; the expected keys are listed above".to_owned()
    } else if key.is_empty() {
        "fix the TOML syntax there".to_owned()
    } else {
        format!("give `{key}` a value of the right type (see the defaults in the knit.toml docs)")
    };
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        key,
        message,
        fix,
    }
}

/// The rules serde cannot express: (key, message, fix) of the first broken one.
fn validate(c: &DaemonConfig) -> Result<(), (&'static str, String, String)> {
    if let Err(problem) = names::check_namespace(&c.default_namespace) {
        return Err((
            "default_namespace",
            format!("{:?} {problem}", c.default_namespace),
            "use a name such as \"default\" or \"service-connect\"".to_owned(),
        ));
    }
    let cgroup = Path::new(&c.cgroup);
    if c.cgroup.is_empty()
        || cgroup.is_absolute()
        || cgroup
            .components()
            .any(|p| !matches!(p, std::path::Component::Normal(_)))
    {
        return Err((
            "cgroup",
            format!(
                "{:?} is not a relative path below the cgroup2 mount",
                c.cgroup
            ),
            "use a relative path without \"..\", such as \"knit\" or \"system.slice/knit\""
                .to_owned(),
        ));
    }
    let o = &c.outlier;
    if o.consecutive_failures == 0 {
        return Err((
            "outlier.consecutive_failures",
            "is 0; a target would be ejected before any failure".to_owned(),
            "use 1 or more (default 5)".to_owned(),
        ));
    }
    if o.max_ejection_percent > 100 {
        return Err((
            "outlier.max_ejection_percent",
            format!("is {}; a percentage is at most 100", o.max_ejection_percent),
            "use 0 to 100 (default 10)".to_owned(),
        ));
    }
    if o.max_ejection_ms < o.base_ejection_ms {
        return Err((
            "outlier.max_ejection_ms",
            format!(
                "is {} ms, less than base_ejection_ms ({} ms)",
                o.max_ejection_ms, o.base_ejection_ms
            ),
            "make max_ejection_ms at least base_ejection_ms".to_owned(),
        ));
    }
    if o.interval_ms == 0 {
        return Err((
            "outlier.interval_ms",
            "is 0".to_owned(),
            "use 1 or more milliseconds (default 100)".to_owned(),
        ));
    }
    if !valid_trust_domain(&c.tls.trust_domain) {
        return Err((
            "tls.trust_domain",
            format!("{:?} is not a SPIFFE trust domain", c.tls.trust_domain),
            "use lower-case letters, digits, '.', '-' and '_', such as \"knit.local\" or \"prod.example.org\" (the same on every host)".to_owned(),
        ));
    }
    if !(60..=366 * 86400).contains(&c.tls.certificate_ttl_s) {
        return Err((
            "tls.certificate_ttl_s",
            format!("is {} seconds", c.tls.certificate_ttl_s),
            "use 60 (a minute) to 31622400 (a year); default 86400 (24 h)".to_owned(),
        ));
    }
    for ns in &c.tls.namespaces {
        if let Err(problem) = crate::names::check_namespace(ns) {
            return Err((
                "tls.namespaces",
                format!("{ns:?} {problem}"),
                "list namespace names, such as [\"prod\"] (the same on every host)".to_owned(),
            ));
        }
    }
    if c.proxy.threads > ProxyConfig::MAX_THREADS {
        return Err((
            "proxy.threads",
            format!("is {}", c.proxy.threads),
            format!(
                "use 1 to {} data-plane threads, or 0 (the default) for one per CPU",
                ProxyConfig::MAX_THREADS
            ),
        ));
    }
    if c.log.level.trim().is_empty() {
        return Err((
            "log.level",
            "is empty".to_owned(),
            "use a level such as \"info\" or \"debug\" (default \"info\")".to_owned(),
        ));
    }
    if c.registry.lease_ttl_s < 2 {
        return Err((
            "registry.lease_ttl_s",
            format!("is {}", c.registry.lease_ttl_s),
            "use 2 seconds or more (default 10): the lease is renewed every third of it".to_owned(),
        ));
    }
    if c.registry.timeout_ms == 0 {
        return Err((
            "registry.timeout_ms",
            "is 0".to_owned(),
            "use 1 or more milliseconds (default 5000)".to_owned(),
        ));
    }
    if !c.registry.prefix.starts_with('/') || c.registry.prefix.ends_with('/') {
        return Err((
            "registry.prefix",
            format!("is {:?}", c.registry.prefix),
            "start it with / and do not end it with /, e.g. \"/knit\"".to_owned(),
        ));
    }
    if let Some(name) = &c.host.name
        && (name.is_empty()
            || name.len() > 253
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')))
    {
        return Err((
            "host.name",
            format!("is {name:?}"),
            "use 1 to 253 letters, digits, '-', '_' or '.'".to_owned(),
        ));
    }
    if c.registry.backend == RegistryBackend::Etcd && c.registry.endpoints.is_empty() {
        return Err((
            "registry.endpoints",
            "is empty, but backend is \"etcd\"".to_owned(),
            format!("list at least one endpoint, e.g. [\"{DEFAULT_ETCD_ENDPOINT}\"]"),
        ));
    }
    Ok(())
}

/// 1-based line where `key` (`a` or `table.a`) is set, if it can be found by
/// a plain scan of `[table]` headers and `key = ...` lines.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().to_owned();
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let k = k.trim().trim_matches('"');
        let full = if current.is_empty() {
            k.to_owned()
        } else {
            format!("{current}.{k}")
        };
        if full == key || (current == table && k == leaf) {
            return Some(i + 1);
        }
    }
    None
}

/// What a reload (SIGHUP) changes: the keys whose new values take effect
/// now, those that wait for the next start, and the configuration in
/// effect from now on (the running values of the latter kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// Keys whose new values are in effect.
    pub applied: Vec<&'static str>,
    /// Keys that changed but take effect at the next start.
    pub need_restart: Vec<&'static str>,
    /// The configuration in effect.
    pub config: DaemonConfig,
}

impl DaemonConfig {
    /// Reload from `self` (running) to `new` (just read). `accelerate_forced_off`:
    /// the daemon was started with `--no-accelerate`, which no file overrides.
    pub fn reload(&self, new: &DaemonConfig, accelerate_forced_off: bool) -> Reload {
        let (old, mut applied, mut need_restart) = (self, Vec::new(), Vec::new());
        let accelerate = new.datapath.accelerate && !accelerate_forced_off;
        let keys: [(&'static str, bool, bool); 20] = [
            // (key, changed, takes effect while running)
            (
                "default_namespace",
                old.default_namespace != new.default_namespace,
                true,
            ),
            (
                "outlier.consecutive_failures",
                old.outlier.consecutive_failures != new.outlier.consecutive_failures,
                true,
            ),
            (
                "outlier.base_ejection_ms",
                old.outlier.base_ejection_ms != new.outlier.base_ejection_ms,
                true,
            ),
            (
                "outlier.max_ejection_ms",
                old.outlier.max_ejection_ms != new.outlier.max_ejection_ms,
                true,
            ),
            (
                "outlier.max_ejection_percent",
                old.outlier.max_ejection_percent != new.outlier.max_ejection_percent,
                true,
            ),
            (
                "outlier.interval_ms",
                old.outlier.interval_ms != new.outlier.interval_ms,
                false,
            ),
            (
                "proxy.drain_timeout_ms",
                old.proxy.drain_timeout_ms != new.proxy.drain_timeout_ms,
                true,
            ),
            (
                "proxy.threads",
                old.proxy.threads != new.proxy.threads,
                false,
            ),
            ("log.level", old.log.level != new.log.level, true),
            (
                "datapath.accelerate",
                old.datapath.accelerate != accelerate,
                true,
            ),
            ("log.format", old.log.format != new.log.format, false),
            ("state_dir", old.state_dir != new.state_dir, false),
            ("bpf_pin_dir", old.bpf_pin_dir != new.bpf_pin_dir, false),
            ("cgroup", old.cgroup != new.cgroup, false),
            ("socket", old.socket != new.socket, false),
            ("hosts_file", old.hosts_file != new.hosts_file, false),
            ("admin", old.admin != new.admin, false),
            ("registry", old.registry != new.registry, false),
            ("host", old.host != new.host, false),
            ("tls", old.tls != new.tls, false),
        ];
        for (key, changed, live) in keys {
            match (changed, live) {
                (true, true) => applied.push(key),
                (true, false) => need_restart.push(key),
                (false, _) => {}
            }
        }
        // What needs a restart keeps its running value.
        let mut config = old.clone();
        config.default_namespace = new.default_namespace.clone();
        config.outlier = OutlierConfig {
            interval_ms: old.outlier.interval_ms,
            ..new.outlier.clone()
        };
        config.proxy = ProxyConfig {
            threads: old.proxy.threads,
            ..new.proxy.clone()
        };
        config.log.level = new.log.level.clone();
        config.datapath.accelerate = accelerate;
        Reload {
            applied,
            need_restart,
            config,
        }
    }
}

#[cfg(test)]
mod tests;
