//! The guest's `/init`, a POSIX sh script (run by the host's dash, or busybox
//! sh where the host has no sh to lend): set up what a normal Linux host
//! gives a test (proc, sys, cgroup2, bpffs, tmpfs, loopback, modules), run
//! every test executable, and say how it went with `KNIT-VM:` marker lines
//! that [`super::report`] reads from the console.
use std::{fmt::Write, path::Path, path::PathBuf};

/// Marker lines (the host parses them; keep in sync with report.rs).
pub const MARK: &str = "KNIT-VM:";

pub struct Init<'a> {
    pub tests: &'a [PathBuf],
    /// (guest path, parameters) of each module, in load order.
    pub modules: &'a [(PathBuf, &'a str)],
    /// Where the tests run (cargo runs them from their package dir).
    pub workdir: Option<&'a Path>,
    pub filter: Option<&'a str>,
}

pub fn script(init: &Init) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# /init of knit's VM tests, written by `cargo xtask vm-test` (xtask/src/vm/init.rs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TMPDIR=/tmp KNIT_IN_VM=1 RUST_BACKTRACE=1

must() { "$@" || echo "KNIT-VM: setup failed: $*"; }
must mount -t proc proc /proc
must mount -t sysfs sysfs /sys
must mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
must mount -t devpts devpts /dev/pts
must mount -t tmpfs -o mode=1777 tmpfs /dev/shm
# The root is already a tmpfs; a fresh one on /tmp or /run would hide the
# binaries when the host keeps them there (CARGO_TARGET_DIR=/tmp/...).
[ -z "$(ls -A /tmp)" ] && must mount -t tmpfs -o mode=1777 tmpfs /tmp
[ -z "$(ls -A /run)" ] && must mount -t tmpfs -o mode=755 tmpfs /run
must mount -t cgroup2 cgroup2 /sys/fs/cgroup
must mount -t bpf bpf /sys/fs/bpf
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
hostname knit-vm
must ip link set lo up
# The default (1024) is low for tests that open many connections.
ulimit -n 65536
"#,
    );
    for (path, params) in init.modules {
        let _ = writeln!(s, "must insmod {} {params}", quote(&path.to_string_lossy()));
    }
    let _ = writeln!(
        s,
        "echo \"{MARK} kernel $(uname -r), $(nproc) cpus, $(free -m | awk '/Mem:/ {{print $2}}') MiB\""
    );
    if let Some(dir) = init.workdir {
        let _ = writeln!(s, "must cd {}", quote(&dir.to_string_lossy()));
    }
    let filter = init
        .filter
        .map(|f| format!(" {}", quote(f)))
        .unwrap_or_default();
    s.push_str(
        r#"status=0
run() {
    echo "KNIT-VM: run $1"
    # stdin from /dev/null: a test reading the console would wait forever.
    "$@" </dev/null
    rc=$?
    echo "KNIT-VM: exit $rc $1"
    [ "$rc" -eq 0 ] || status=1
}
"#,
    );
    for test in init.tests {
        let _ = writeln!(
            s,
            "run {} --test-threads=1{filter}",
            quote(&test.to_string_lossy())
        );
    }
    s.push_str(
        r#"if [ "$status" -eq 0 ]; then echo "KNIT-VM: pass"; else echo "KNIT-VM: fail"; fi
sync
poweroff -f
# Not reached unless poweroff failed; qemu runs with -no-reboot, so this exits too.
reboot -f
"#,
    );
    s
}

/// Single-quote `s` for sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
