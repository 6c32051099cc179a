//! knit.toml: defaults, a full file, and the errors an operator sees.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::*;

fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
    parse_daemon_config(text, Path::new("/etc/knit/knit.toml"))
}

/// The (line, key, message, fix) of an `Invalid` error.
fn invalid(text: &str) -> (Option<usize>, String, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid {
            line,
            key,
            message,
            fix,
            ..
        }) => (line, key, message, fix),
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c, DaemonConfig::default());
    assert_eq!(c.default_namespace, "default");
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/knit"));
    assert_eq!(c.bpf_pin_dir, PathBuf::from("/sys/fs/bpf/knit"));
    assert_eq!(c.cgroup, "knit");
    assert_eq!(c.socket, PathBuf::from("/run/knit/knit.sock"));
    assert_eq!(c.hosts_file, PathBuf::from("/etc/hosts"));
    assert_eq!(
        c.admin.listen,
        "127.0.0.1:9901"
            .parse::<SocketAddr>()
            .unwrap_or(DEFAULT_ADMIN_LISTEN)
    );
    assert_eq!(c.registry.backend, RegistryBackend::Embedded);
    assert_eq!(c.registry.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(c.host.address, Ipv4Addr::new(127, 0, 0, 1));
    let o = &c.outlier;
    assert_eq!(
        (
            o.consecutive_failures,
            o.base_ejection_ms,
            o.max_ejection_ms,
            o.max_ejection_percent,
            o.interval_ms
        ),
        (5, 30_000, 300_000, 10, 100)
    );
}

#[test]
fn missing_file_gives_defaults_unless_it_must_exist() {
    let path = Path::new("/nonexistent/knit-test/knit.toml");
    assert_eq!(
        load_daemon_config(path, false).ok(),
        Some(DaemonConfig::default())
    );
    match load_daemon_config(path, true) {
        Err(e @ ConfigError::Read { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("/nonexistent/knit-test/knit.toml")
                    && text.contains("fix: create the file"),
                "{text}"
            );
        }
        other => panic!("expected a read error, got {other:?}"),
    }
}

#[test]
fn full_file() {
    let text = r#"
default_namespace = "service-connect"
state_dir   = "/tmp/knit/state"
bpf_pin_dir = "/sys/fs/bpf/knit-test"
cgroup      = "system.slice/knit"
socket      = "/tmp/knit/knit.sock"
hosts_file  = "/tmp/knit/hosts"

[admin]
listen = "0.0.0.0:19901"

[registry]
backend   = "etcd"
endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]

[host]
address = "10.0.0.7"

[outlier]
consecutive_failures = 3
base_ejection_ms     = 1000
max_ejection_ms      = 8000
max_ejection_percent = 50
interval_ms          = 250
"#;
    let c = parse(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.default_namespace, "service-connect");
    assert_eq!(c.cgroup, "system.slice/knit");
    assert_eq!(c.hosts_file, PathBuf::from("/tmp/knit/hosts"));
    assert_eq!(c.admin.listen.port(), 19901);
    assert_eq!(c.registry.backend, RegistryBackend::Etcd);
    assert_eq!(c.registry.endpoints.len(), 2);
    assert_eq!(c.host.address, Ipv4Addr::new(10, 0, 0, 7));
    assert_eq!(
        c.outlier,
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection_ms: 1000,
            max_ejection_ms: 8000,
            max_ejection_percent: 50,
            interval_ms: 250
        }
    );
    // The daemon can print its effective configuration as TOML and read it back.
    let again = toml::to_string(&c)
        .map_err(|e| e.to_string())
        .and_then(|t| parse(&t).map_err(|e| e.to_string()));
    assert_eq!(again, Ok(c));
}

#[test]
fn unknown_key_is_an_error_with_line_and_key() {
    let (line, key, message, fix) =
        invalid("cgroup = \"knit\"\n\n[admin]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n");
    assert_eq!((line, key.as_str()), (Some(5), "admin.listn"));
    assert!(
        message.contains("unknown field `listn`") && message.contains("listen"),
        "{message}"
    );
    assert!(fix.contains("spelling"), "{fix}");
    let (line, key, _, _) = invalid("stat_dir = \"/x\"\n");
    assert_eq!((line, key.as_str()), (Some(1), "stat_dir"));
    let (_, key, _, _) = invalid("[admn]\nlisten = \"127.0.0.1:1\"\n");
    assert_eq!(key, "admn");
}

#[test]
fn wrong_types_name_the_key() {
    let (line, key, message, fix) = invalid("\n[admin]\nlisten = \"localhost\"\n");
    assert_eq!((line, key.as_str()), (Some(3), "admin.listen"));
    assert!(message.contains("invalid socket address"), "{message}");
    assert!(fix.contains("admin.listen"), "{fix}");
    let (_, key, message, _) = invalid("[registry]\nbackend = \"consul\"\n");
    assert_eq!(key, "registry.backend");
    assert!(
        message.contains("embedded") && message.contains("etcd"),
        "{message}"
    );
    let (line, key, _, _) = invalid("[outlier]\ninterval_ms = -1\n");
    assert_eq!((line, key.as_str()), (Some(2), "outlier.interval_ms"));
    let (line, _, _, fix) = invalid("cgroup = \n");
    assert_eq!(line, Some(1));
    assert!(fix.contains("TOML"), "{fix}");
}

#[test]
fn validation_rules() {
    let (line, key, message, _) = invalid("default_namespace = \"a/b\"\n");
    assert_eq!((line, key.as_str()), (Some(1), "default_namespace"));
    assert!(message.contains("'/'"), "{message}");
    for bad in [
        "/sys/fs/cgroup/knit",
        "../knit",
        "knit/../../x",
        "",
        "./knit",
    ] {
        let (_, key, _, fix) = invalid(&format!("cgroup = {bad:?}\n"));
        assert_eq!(key, "cgroup", "{bad}");
        assert!(fix.contains("relative path without \"..\""), "{fix}");
    }
    assert!(parse("cgroup = \"system.slice/knit\"").is_ok());
    let (line, key, _, fix) = invalid("[outlier]\nmax_ejection_percent = 101\n");
    assert_eq!(
        (line, key.as_str()),
        (Some(2), "outlier.max_ejection_percent")
    );
    assert!(fix.contains("0 to 100"), "{fix}");
    assert!(parse("[outlier]\nmax_ejection_percent = 100\n").is_ok());
    let (_, key, _, fix) = invalid("[outlier]\nconsecutive_failures = 0\n");
    assert_eq!(key, "outlier.consecutive_failures");
    assert!(fix.contains("1 or more"), "{fix}");
    assert!(parse("[outlier]\nconsecutive_failures = 1\n").is_ok());
    let (_, key, _, _) = invalid("[outlier]\nbase_ejection_ms = 10\nmax_ejection_ms = 5\n");
    assert_eq!(key, "outlier.max_ejection_ms");
    let (_, key, _, _) = invalid("[registry]\nbackend = \"etcd\"\nendpoints = []\n");
    assert_eq!(key, "registry.endpoints");
    let (line, key, message, _) = invalid("[tls]\nnamespaces = [\"prod\", \"a/b\"]\n");
    assert_eq!((line, key.as_str()), (Some(2), "tls.namespaces"));
    assert!(message.contains("a/b"), "{message}");
    let c = parse("[tls]\nnamespaces = [\"prod\"]\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tls.namespaces, ["prod"]);
    let (line, key, _, fix) = invalid("[proxy]\nthreads = 65\n");
    assert_eq!((line, key.as_str()), (Some(2), "proxy.threads"));
    assert!(fix.contains("1 to 64"), "{fix}");
}

#[test]
fn data_plane_threads_default_to_the_cpus() {
    let c = parse("").expect("defaults");
    assert_eq!(c.proxy.threads, 0);
    assert_eq!(c.proxy.threads_for(6), 6);
    assert_eq!(c.proxy.threads_for(0), 1);
    assert_eq!(c.proxy.threads_for(500), ProxyConfig::MAX_THREADS);
    let c = parse("[proxy]\nthreads = 2\n").expect("two threads");
    assert_eq!(c.proxy.threads_for(6), 2);
    // Read at start only.
    let r = DaemonConfig::default().reload(&c, false);
    assert_eq!(r.need_restart, ["proxy.threads"]);
    assert_eq!(r.config.proxy.threads, 0);
}

#[test]
fn error_display_names_file_line_key_and_fix() {
    let text = match parse("[outlier]\nmax_ejection_percent = 200\n") {
        Err(e) => e.to_string(),
        Ok(c) => panic!("expected an error, got {c:?}"),
    };
    assert_eq!(
        text.lines().next(),
        Some(
            "/etc/knit/knit.toml:2: key `outlier.max_ejection_percent`: is 200; a percentage is at most 100"
        )
    );
    assert!(text.contains("\n  fix: use 0 to 100"), "{text}");
}

#[test]
fn reload_applies_what_can_change_live_and_keeps_the_rest() {
    let old = DaemonConfig::default();
    let new = parse(
        "default_namespace = \"prod\"\nstate_dir = \"/elsewhere\"\n[outlier]\nconsecutive_failures = 9\ninterval_ms = 50\n[log]\nlevel = \"debug\"\nformat = \"json\"\n[datapath]\naccelerate = false\n[tls]\nnamespaces = [\"prod\"]\n",
    )
    .expect("a valid config");
    let r = old.reload(&new, false);
    assert_eq!(
        r.applied,
        [
            "default_namespace",
            "outlier.consecutive_failures",
            "log.level",
            "datapath.accelerate"
        ]
    );
    assert_eq!(
        r.need_restart,
        ["outlier.interval_ms", "log.format", "state_dir", "tls"]
    );
    assert!(
        r.config.tls.namespaces.is_empty(),
        "tls waits for a restart"
    );
    assert_eq!(r.config.default_namespace, "prod");
    assert_eq!(r.config.outlier.consecutive_failures, 9);
    assert_eq!(r.config.log.level, "debug");
    assert!(!r.config.datapath.accelerate);
    // Kept at their running values until the next start.
    assert_eq!(r.config.outlier.interval_ms, old.outlier.interval_ms);
    assert_eq!(r.config.state_dir, old.state_dir);
    assert_eq!(r.config.log.format, old.log.format);
}

#[test]
fn reload_of_the_same_config_changes_nothing() {
    let cfg = DaemonConfig::default();
    let r = cfg.reload(&cfg, false);
    assert!(r.applied.is_empty() && r.need_restart.is_empty());
    assert_eq!(r.config, cfg);
}

#[test]
fn no_accelerate_on_the_command_line_outlives_a_reload() {
    let mut running = DaemonConfig::default();
    running.datapath.accelerate = false;
    let r = running.reload(&DaemonConfig::default(), true);
    assert!(!r.config.datapath.accelerate);
    assert!(r.applied.is_empty(), "{:?}", r.applied);
}
