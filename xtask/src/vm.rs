//! `cargo xtask vm-test`: boot Debian 12's 6.1 kernel under qemu (TCG: this
//! machine has no KVM) with an initramfs that holds the integration test
//! binaries of `knit-tests`, run them inside, and judge the run from the
//! serial console.
//!
//! The steps, each in its own submodule:
//! - [`kernel`]: Debian's `linux-image-cloud-amd64`, fetched once with apt into
//!   `<target>/vm/kernel/` (or `--kernel`), plus the modules the tests need;
//! - [`workspace`]: build the binaries and collect the test executables;
//! - [`initramfs`] and [`init`]: a busybox userland plus the host's iproute2,
//!   util-linux and bpftool, the binaries at their host paths, their shared
//!   libraries, and an `/init` that runs the tests;
//! - [`qemu`]: boot, stream the console live, enforce the timeout;
//! - [`report`]: parse the libtest lines into a per-test summary and a verdict.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::util;

mod init;
mod initramfs;
pub mod kernel;
mod qemu;
mod report;
pub mod systemd;
mod workspace;

pub struct VmArgs {
    pub filter: Option<String>,
    pub kernel: Option<PathBuf>,
    /// Which Debian kernel, when `kernel` is not given.
    pub debian: kernel::Debian,
}

/// Overall limit for one boot, tests included; `KNIT_VM_TIMEOUT_SECS` overrides it.
// TCG emulation runs the suite at very different speeds on different host
// CPUs (about 25 minutes on a 2-CPU AMD EPYC host): room for the slowest.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// What to build and run: the workspace's test crate by default, or any other
/// crate (how the harness itself is tried out on a throwaway crate).
pub(crate) struct Spec<'a> {
    /// The workspace (or package) root `cargo` runs in.
    pub root: &'a Path,
    /// Packages whose binaries the tests spawn (`cargo build -p ... --bins`).
    pub bin_packages: &'a [&'a str],
    /// The package whose test executables run in the guest.
    pub test_package: &'a str,
    /// Its test targets that run on the host only (they need what the
    /// guest has not, e.g. a browser).
    pub host_only: &'a [&'a str],
}

/// What goes into the guest besides busybox: every path is absolute and lands
/// at the same path in the guest.
pub(crate) struct Payload {
    /// Test executables, run one after the other in this order.
    pub tests: Vec<PathBuf>,
    /// Other files (binaries the tests spawn, data); their libraries follow.
    pub files: Vec<PathBuf>,
    /// The test package's directory: cargo runs tests from there, so the
    /// guest does too (a copy of its sources, for tests that read fixtures).
    pub workdir: Option<PathBuf>,
}

pub fn run(args: &VmArgs) -> Result<()> {
    let root = util::root();
    run_spec(
        &Spec {
            root: &root,
            bin_packages: &["proxy-daemon", "knit-tests"],
            test_package: "knit-tests",
            // Headless Chromium is not in the initramfs; the demo (a binary,
            // whose test harness holds no test) runs on the host; the HTTP
            // edge's tests drive the proxy's parsing and limits (userspace,
            // no kernel feature of their own) with timings that assume real
            // hardware, not TCG emulation.
            host_only: &["dashboard", "knit-demo", "edge", "prometheus"],
        },
        args,
    )
}

pub(crate) fn run_spec(spec: &Spec, args: &VmArgs) -> Result<()> {
    let started = Instant::now();
    let timeout = timeout()?;
    let target = workspace::target_dir(spec.root)?;
    let vm_dir = target.join("vm");

    util::step("guest kernel");
    let kernel = match &args.kernel {
        Some(path) => kernel::Kernel::custom(path)?,
        None => kernel::debian(&vm_dir, args.debian)?,
    };
    eprintln!(
        "kernel: {} (modules: {})",
        kernel.image.display(),
        kernel
            .modules
            .as_deref()
            .map_or("none".into(), |m| m.display().to_string())
    );

    util::step(&format!("building {} and its binaries", spec.test_package));
    let payload = workspace::build(spec)?;

    util::step("building the initramfs");
    initramfs::remove_stale_work_dirs(&vm_dir);
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    // Under the target dir, so the big binaries can be hard-linked, not copied.
    let work = tempfile::Builder::new()
        .prefix(&initramfs::work_dir_prefix())
        .tempdir_in(&vm_dir)
        .with_context(|| format!("creating a work dir in {}", vm_dir.display()))?;
    let initrd = initramfs::build(work.path(), &kernel, &payload, args.filter.as_deref())?;

    util::step(&format!(
        "booting under qemu (TCG; timeout {} s, KNIT_VM_TIMEOUT_SECS to change)",
        timeout.as_secs()
    ));
    let boot = qemu::boot(&kernel.image, &initrd, timeout, qemu::APPEND)?;
    if let Some(status) = boot.status.filter(|s| !s.success()) {
        eprintln!("qemu exited with {status}");
    }
    // The verdict matters more than a leftover (the next run removes it).
    let work_path = work.path().display().to_string();
    if let Err(e) = work.close() {
        eprintln!("warning: could not remove {work_path}: {e}");
    }

    let report = report::parse(&boot.console);
    util::step(&format!(
        "VM test summary (boot {:.1} s, total {:.1} s)",
        boot.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    report.print();
    report.verdict(boot.timed_out, timeout, args.filter.as_deref())
}

fn timeout() -> Result<Duration> {
    timeout_or(DEFAULT_TIMEOUT)
}

/// `KNIT_VM_TIMEOUT_SECS`, else `default`.
pub(crate) fn timeout_or(default: Duration) -> Result<Duration> {
    match std::env::var("KNIT_VM_TIMEOUT_SECS") {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
            _ => bail!("KNIT_VM_TIMEOUT_SECS={s:?}: expected a positive number of seconds"),
        },
        Err(_) => Ok(default),
    }
}
