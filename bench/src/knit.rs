//! The `knit` a benchmark measures: a release build of this checkout (or
//! the binary $KNIT_BIN names), its daemon started with
//! `knit_tests::Knit::start_full`, the version line for the report, and
//! switching the daemon's same-host acceleration (sk_msg) on and off.
use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use knit_tests::{Knit, wait_for};

use crate::{build, util};

/// Which `knit` binary, and whether it came from $KNIT_BIN.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    pub from_env: bool,
}

/// The binary of this `cargo xtask bench`: built once, whichever and
/// however many benchmarks it runs.
static BINARY: OnceLock<Binary> = OnceLock::new();

/// Build the release `knit` (eBPF programs included) and return its path;
/// or, when $KNIT_BIN is set, measure that binary without building (another
/// build, or a tree that does not build). Built once per process.
pub fn binary() -> Result<Binary> {
    if let Some(b) = BINARY.get() {
        return Ok(b.clone());
    }
    let b = find_or_build()?;
    Ok(BINARY.get_or_init(|| b).clone())
}

/// The test peers (`knit-testbin`), built beside `knit`.
pub fn testbin(bin: &Binary) -> Result<PathBuf> {
    bin.path
        .parent()
        .map(|d| d.join("knit-testbin"))
        .filter(|p| p.exists())
        .context(
            "knit-testbin is not next to the knit binary (cargo xtask build --release builds both)",
        )
}

fn find_or_build() -> Result<Binary> {
    if let Some(bin) = std::env::var_os("KNIT_BIN") {
        let path = PathBuf::from(bin);
        ensure!(path.exists(), "KNIT_BIN={} does not exist", path.display());
        println!("measuring KNIT_BIN={} (not building)", path.display());
        return Ok(Binary {
            path,
            from_env: true,
        });
    }
    build::all(true)?;
    let path = util::root().join("target/release/knit");
    ensure!(path.exists(), "{} was not built", path.display());
    Ok(Binary {
        path,
        from_env: false,
    })
}

/// A daemon of the benchmark's own (cgroup, pins, state, socket and hosts
/// file under a temp dir), running `bin` for the daemon and every CLI call.
/// Dropped, it prints the tail of its log, so that a benchmark that fails
/// shows what the daemon said: a benchmark turns that off
/// (`show_log_on_drop(false)`) once it has measured.
pub fn start(name: &str, extra_toml: &str, bin: &Binary) -> Result<Knit> {
    let mut k = Knit::start_full(name, extra_toml, None, bin.path.clone())?;
    k.show_log_on_drop(true);
    Ok(k)
}

/// The daemon's version, and where it came from: this checkout's git
/// commit, or the binary named by $KNIT_BIN.
pub fn version(k: &Knit, bin: &Binary) -> Result<String> {
    let v = k.json(&["status"])?;
    let version = v["version"].as_str().unwrap_or("?");
    Ok(if bin.from_env {
        format!("{version} (binary {})", bin.path.display())
    } else {
        format!("{version}{}", git_describe())
    })
}

/// " (git abc1234, uncommitted changes)" or "" outside a git checkout.
fn git_describe() -> String {
    let git =
        |args: &[&str]| util::output(Command::new("git").current_dir(util::root()).args(args)).ok();
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.trim().is_empty());
            let note = if dirty { ", uncommitted changes" } else { "" };
            format!(" (git {}{note})", rev.trim())
        }
        None => String::new(),
    }
}

/// `knit services --json`: one row per alias.
pub struct Aliases(serde_json::Value);

impl Aliases {
    pub fn read(k: &Knit) -> Result<Self> {
        Ok(Self(k.json(&["services"])?))
    }

    fn row(&self, alias: &str) -> Result<&serde_json::Value> {
        self.0
            .as_array()
            .and_then(|a| a.iter().find(|r| r["dns_name"] == alias))
            .with_context(|| format!("no alias {alias} in `knit services --json`: {}", self.0))
    }

    /// New connections the kernel counted on `alias` (its connect hook).
    pub fn new_connections(&self, alias: &str) -> Result<u64> {
        self.row(alias)?["new_connections"]
            .as_u64()
            .with_context(|| format!("no new_connections for alias {alias}"))
    }

    /// `alias`'s VIP, checked to be in 127.255.0.0/16 (benchmarks send
    /// nowhere else).
    pub fn vip(&self, alias: &str) -> Result<String> {
        let vip = self.row(alias)?["vip"]
            .as_str()
            .with_context(|| format!("alias {alias} has no VIP"))?
            .to_string();
        ensure!(
            vip.starts_with("127.255."),
            "VIP {vip} of {alias} is outside 127.255.0.0/16"
        );
        Ok(vip)
    }
}

/// Same-host acceleration as `knit status --json` reports it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accel {
    pub enabled: bool,
    /// Bytes the sk_msg program handed socket to socket since the maps
    /// were made (pinned: they survive a daemon restart).
    pub redirected_bytes: u64,
    /// Sockets of the sockhash whose first send found no peer there, and
    /// so kept TCP/IP (a send that raced the peer's handshake).
    pub tcp_fallback: u64,
}

impl Accel {
    /// sk_msg's bytes since `before`, an earlier reading.
    pub fn redirected_since(&self, before: &Accel) -> Result<u64> {
        self.redirected_bytes
            .checked_sub(before.redirected_bytes)
            .context("the sk_msg byte counter went down: were the pinned maps made anew?")
    }

    /// Sockets that fell back to TCP/IP since `before`.
    pub fn fallbacks_since(&self, before: &Accel) -> u64 {
        self.tcp_fallback.saturating_sub(before.tcp_fallback)
    }
}

pub fn accel(k: &Knit) -> Result<Accel> {
    let s = k.json(&["status"])?;
    let a = &s["acceleration"];
    Ok(Accel {
        enabled: a["enabled"]
            .as_bool()
            .with_context(|| format!("`knit status --json` has no acceleration.enabled: {s}"))?,
        redirected_bytes: a["redirected_bytes"]
            .as_u64()
            .context("`knit status --json` has no acceleration.redirected_bytes")?,
        tcp_fallback: a["tcp_fallback"]
            .as_u64()
            .context("`knit status --json` has no acceleration.tcp_fallback")?,
    })
}

/// What [`write_accelerate`] appends to the daemon's config; everything
/// from it on is its own.
const ACCEL_MARK: &str = "\n# cargo xtask bench: same-host acceleration\n";

/// `[datapath] accelerate = on` at the end of the daemon's config, in place
/// of what an earlier call wrote.
fn write_accelerate(k: &Knit, on: bool) -> Result<()> {
    let text = std::fs::read_to_string(&k.config)
        .with_context(|| format!("reading {}", k.config.display()))?;
    let base = text.split(ACCEL_MARK).next().unwrap_or_default();
    std::fs::write(
        &k.config,
        format!("{base}{ACCEL_MARK}[datapath]\naccelerate = {on}\n"),
    )
    .with_context(|| format!("writing {}", k.config.display()))
}

/// Wait until the daemon reports acceleration `on`.
fn wait_accelerate(k: &Knit, on: bool) -> Result<()> {
    wait_for(
        &format!("the daemon to report acceleration {on}"),
        Duration::from_secs(15),
        || (accel(k).ok()?.enabled == on).then_some(()),
    )
}

/// Switch acceleration for new connections without a restart: the config,
/// then SIGHUP (`[datapath] accelerate` is a live key). Sockets already
/// established keep their path: right for runs that open their own
/// connections through the L4 path, not for the L7 proxy's pooled upstream
/// connections (see [`restart_accelerate`]).
pub fn reload_accelerate(k: &Knit, on: bool) -> Result<()> {
    if accel(k)?.enabled == on {
        return Ok(());
    }
    write_accelerate(k, on)?;
    let pid = k.daemon_pid().context("the daemon is not running")?;
    // SAFETY: kill(2) on our own child, which has not been reaped (the
    // Knit holds it), so the pid is still the daemon's.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        bail!(
            "SIGHUP to the daemon ({pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    wait_accelerate(k, on)
}

/// Restart the daemon with acceleration `on` (kill -9, as a crash would:
/// the pinned datapath and the tasks stay and the new daemon adopts them),
/// so that every connection it makes afterwards, the proxy's pooled
/// upstream connections included, takes the new path. The daemon's pid and
/// admin address change: callers read them again.
pub fn restart_accelerate(k: &mut Knit, on: bool) -> Result<()> {
    write_accelerate(k, on)?;
    k.kill_daemon()?;
    k.start_daemon()?;
    wait_accelerate(k, on).with_context(|| k.daemon_log())
}

/// A pinned map of the daemon's datapath (`KNIT_BACKENDS`, ...), opened
/// from its pin dir (`<pin_dir>/<object id>/<name>`).
pub fn pinned_map<K: aya::Pod, V: aya::Pod>(
    k: &Knit,
    name: &str,
) -> Result<aya::maps::HashMap<aya::maps::MapData, K, V>> {
    let path = std::fs::read_dir(&k.pin_dir)
        .with_context(|| format!("reading {}", k.pin_dir.display()))?
        .flatten()
        .map(|e| e.path().join(name))
        .find(|p| p.exists())
        .with_context(|| format!("no pinned {name} under {}", k.pin_dir.display()))?;
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data))?)
}

/// Apply TCP services `names` (alias `NAME:9000`, port `tcp` of one shared
/// task definition `bulk`), 20 per `knit apply` (one etcd transaction each).
pub fn apply_tcp_services(k: &Knit, names: &[String]) -> Result<()> {
    k.apply(&[(
        "bulk-td.json",
        r#"{"family": "bulk", "containerDefinitions": [{"name": "app", "image": "unused",
            "portMappings": [{"name": "tcp"}]}]}"#,
    )])?;
    for (n, chunk) in names.chunks(SERVICES_PER_APPLY).enumerate() {
        let docs: Vec<String> = chunk
            .iter()
            .map(|name| {
                format!(
                    r#"{{"serviceName": "{name}", "taskDefinition": "bulk",
                        "serviceConnectConfiguration": {{"enabled": true,
                          "services": [{{"portName": "tcp", "discoveryName": "{name}",
                                         "clientAliases": [{{"dnsName": "{name}", "port": 9000}}]}}]}}}}"#
                )
            })
            .collect();
        k.apply(&[(&format!("bulk-{n}.json"), &format!("[{}]", docs.join(",")))])?;
    }
    Ok(())
}

/// Services per `knit apply` in [`apply_tcp_services`].
pub const SERVICES_PER_APPLY: usize = 20;

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}
