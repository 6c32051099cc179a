//! `cargo xtask vm-systemd`: knit under a real systemd. A Debian 12 root
//! made from Debian's packages (`mmdebstrap --variant=minbase`, with
//! systemd as init; cached under `target/vm/systemd-root/`) gets knit
//! exactly as a host gets it, `cargo xtask install --root` (the release
//! binary, `knit.service`, `knit-task@.service`, the commented config),
//! plus the test executable `tests/tests/under_systemd.rs`, which drives
//! knit only through `systemctl`, `journalctl` and the CLI. The root boots
//! under qemu (TCG) as the initramfs, with `/lib/systemd/systemd` as PID 1;
//! a oneshot unit runs the tests, prints the same `KNIT-VM:` markers as
//! the busybox guest and powers off.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{initramfs, kernel, qemu, report, workspace};
use crate::util;

/// What the root holds besides Debian's essential packages: systemd as
/// init, and iproute2 (knit's tests use `ip`).
const PACKAGES: &str = "systemd-sysv,iproute2";
const SUITE: &str = "bookworm";
/// The whole run, boot included; `KNIT_VM_TIMEOUT_SECS` overrides it.
const TIMEOUT: Duration = Duration::from_secs(15 * 60);
const TEST: &str = "under_systemd";
/// systemd as PID 1 straight from the initramfs (no switch-root: the
/// initramfs is the root), quiet unless something fails.
const APPEND: &str = "console=ttyS0 panic=-1 quiet rdinit=/lib/systemd/systemd \
                      systemd.show_status=error systemd.log_level=warning";

pub fn run(filter: Option<&str>, debian: kernel::Debian) -> Result<()> {
    let started = Instant::now();
    let repo = util::root();
    let target = workspace::target_dir(&repo)?;
    let vm_dir = target.join("vm");
    let timeout = super::timeout_or(TIMEOUT)?;

    util::step("guest kernel");
    let kernel = kernel::debian(&vm_dir, debian)?;
    util::step("a Debian 12 root with systemd");
    let tar = debian_root(&vm_dir.join("systemd-root"))?;

    util::step("building knit (release, as `cargo xtask install` does) and the tests");
    crate::build::all(true)?;
    let (test, bins) = workspace::test_and_bins(&repo, "knit-tests", TEST)?;

    util::step("the guest's root: Debian + `cargo xtask install --root` + the tests");
    initramfs::remove_stale_work_dirs(&vm_dir);
    let work = tempfile::Builder::new()
        .prefix(&initramfs::work_dir_prefix())
        .tempdir_in(&vm_dir)
        .with_context(|| format!("creating a work dir in {}", vm_dir.display()))?;
    let root = work.path().join("root");
    fs::create_dir_all(&root)?;
    util::run(
        Command::new("tar")
            .args(["-xpf"])
            .arg(&tar)
            .arg("-C")
            .arg(&root),
    )?;
    for line in crate::install::place(&repo, &root)? {
        eprintln!("{line}");
    }
    // Under /opt, laid out as cargo lays them out (the tests find
    // `knit-testbin` above their own `deps/`): the guest's /tmp is a fresh
    // tmpfs, which would hide a host path under /tmp.
    let guest_test = Path::new(GUEST_DIR)
        .join("deps")
        .join(test.file_name().context("the test executable's name")?);
    copy_to(&test, &root.join(guest_test.strip_prefix("/")?))?;
    for bin in &bins {
        let name = bin.file_name().context("a binary's name")?;
        copy_to(
            bin,
            &root.join(GUEST_DIR.trim_start_matches('/')).join(name),
        )?;
    }
    guest_setup(&root, &guest_test, filter)?;
    let initrd = work.path().join("initramfs.cpio");
    initramfs::cpio_archive(&root, &initrd, true)?;
    let size = fs::metadata(&initrd).map(|m| m.len()).unwrap_or(0);
    eprintln!("initramfs: {} ({} MiB)", initrd.display(), size >> 20);

    util::step(&format!(
        "booting with systemd as PID 1 under qemu (TCG; timeout {} s, KNIT_VM_TIMEOUT_SECS to change)",
        timeout.as_secs()
    ));
    let boot = qemu::boot(&kernel.image, &initrd, timeout, APPEND)?;
    let work_path = work.path().display().to_string();
    if let Err(e) = work.close() {
        eprintln!("warning: could not remove {work_path}: {e}");
    }
    let report = report::parse(&boot.console);
    util::step(&format!(
        "systemd VM summary (boot {:.1} s, total {:.1} s)",
        boot.elapsed.as_secs_f64(),
        started.elapsed().as_secs_f64()
    ));
    report.print();
    report.verdict(boot.timed_out, timeout, filter)
}

/// The root tarball, from the cache or made with mmdebstrap (about 15 s).
/// The cache key is the suite and the package list.
fn debian_root(cache: &Path) -> Result<PathBuf> {
    let key: String = format!("{SUITE}-{PACKAGES}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let tar = cache.join(format!("{key}.tar"));
    if tar.is_file() {
        eprintln!("using the cached {}", tar.display());
        return Ok(tar);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let partial = tar.with_extension("tar.partial");
    for leftover in [&partial, &tar] {
        if leftover.is_dir() {
            fs::remove_dir_all(leftover)?;
        } else if leftover.exists() {
            fs::remove_file(leftover)?;
        }
    }
    util::run(
        Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--format=tar",
                &format!("--include={PACKAGES}"),
                SUITE,
            ])
            .arg(&partial),
    )
    .context(
        "mmdebstrap failed (apt-get install mmdebstrap; it reads this machine's apt sources)",
    )?;
    fs::rename(&partial, &tar)?;
    Ok(tar)
}

/// Where the guest holds the test executable and the binaries it spawns.
const GUEST_DIR: &str = "/opt/knit-tests";

fn copy_to(file: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::copy(file, to)
        .with_context(|| format!("copying {} to {}", file.display(), to.display()))?;
    Ok(())
}

/// The guest's own files: a hostname and hosts file, no login prompt on
/// the console, and the unit that runs the tests and powers off.
fn guest_setup(root: &Path, test: &Path, filter: Option<&str>) -> Result<()> {
    let write = |rel: &str, text: &str| -> Result<()> {
        let p = root.join(rel);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("etc/hostname", "knit-vm\n")?;
    write("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")?;
    let units = root.join("etc/systemd/system");
    for masked in [
        "serial-getty@ttyS0.service",
        "getty@tty1.service",
        "systemd-timesyncd.service",
        "apt-daily.timer",
        "apt-daily-upgrade.timer",
        "e2scrub_all.timer",
        "fstrim.timer",
    ] {
        let link = units.join(masked);
        let _ = fs::remove_file(&link);
        symlink("/dev/null", &link).with_context(|| format!("masking {masked}"))?;
    }
    let filter = filter
        .map(|f| format!(" '{}'", f.replace('\'', r"'\''")))
        .unwrap_or_default();
    let test = test.display();
    write(
        "opt/knit-vm/run",
        &format!(
            r#"#!/bin/sh
# Written by `cargo xtask vm-systemd` (xtask/src/vm/systemd.rs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp KNIT_SYSTEMD_VM=1 KNIT_IN_VM=1 RUST_BACKTRACE=1
# What this kernel offers that knit may use (from its BTF).
has() {{ grep -q -a "$1" /sys/kernel/btf/vmlinux 2>/dev/null && echo yes || echo no; }}
echo "KNIT-VM: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {{print int($2/1024)}}' /proc/meminfo) MiB, $(systemctl --version | head -1); bpf_sock_destroy kfunc: $(has bpf_sock_destroy), sockmap links (BPF_LINK_TYPE_SOCKMAP): $(has sockmap_link), TCP ULPs built in or loaded: $(cat /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null)"
echo "KNIT-VM: run {test}"
{test} --ignored --test-threads=1 --color never{filter} </dev/null
rc=$?
echo "KNIT-VM: exit $rc {test}"
if [ "$rc" -eq 0 ]; then echo "KNIT-VM: pass"; else
  echo "KNIT-VM: fail"
  journalctl -u knit --no-pager -n 80 -o short-monotonic
fi
sync
systemctl --no-block poweroff
"#
        ),
    )?;
    set_mode(&root.join("opt/knit-vm/run"), 0o755)?;
    write(
        "etc/systemd/system/knit-vm-tests.service",
        "[Unit]\n\
         Description=knit's tests under systemd (cargo xtask vm-systemd)\n\
         After=basic.target systemd-journald.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart=/opt/knit-vm/run\n\
         StandardOutput=tty\n\
         StandardError=tty\n\
         TTYPath=/dev/ttyS0\n\
         TTYReset=no\n\
         TTYVHangup=no\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    )?;
    let wants = units.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let link = wants.join("knit-vm-tests.service");
    let _ = fs::remove_file(&link);
    symlink("../knit-vm-tests.service", &link)?;
    if !root.join("lib/systemd/systemd").is_file() {
        bail!("the root has no /lib/systemd/systemd: is systemd-sysv in {PACKAGES}?");
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
