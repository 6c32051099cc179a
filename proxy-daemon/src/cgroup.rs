//! cgroup v2: where it is mounted, task cgroups, liveness, cleanup.
//!
//! The mount point is read from /proc/mounts (hybrid hosts mount cgroup2 at
//! /sys/fs/cgroup/unified), never assumed.
use std::{
    io,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (none in /proc/mounts): knit puts tasks in cgroup v2 and attaches its hooks there; mount one with `mount -t cgroup2 none /sys/fs/cgroup` (or boot with systemd.unified_cgroup_hierarchy=1)"
    )]
    NoCgroup2,
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// The first cgroup2 mount in /proc/mounts.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|source| CgroupError::Io {
        what: "reading",
        path: "/proc/mounts".into(),
        source,
    })?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir.replace("\\040", " ")))
        })
        .ok_or(CgroupError::NoCgroup2)
}

/// Create `path` (and parents). Returns true when it did not exist before.
pub fn ensure(path: &Path) -> Result<bool, CgroupError> {
    if path.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(path).map_err(|source| CgroupError::Io {
        what: "creating cgroup",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// Does any process live in `path` or below? A missing cgroup is empty.
pub fn is_populated(path: &Path) -> bool {
    match std::fs::read_to_string(path.join("cgroup.events")) {
        Ok(s) => s.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => false,
    }
}

/// Move the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. For use between fork and exec: async-signal-safe calls only.
pub fn join(procs: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain syscalls on a valid NUL-terminated path and a 1-byte buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // "0" means the writing process itself.
        let n = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// Pids directly in `path`.
pub fn procs(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Remove a cgroup and its children (they must be empty).
pub fn remove_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// Send `sig` to every process in `path` and below.
pub fn signal_all(path: &Path, sig: nix::sys::signal::Signal) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                signal_all(&e.path(), sig);
            }
        }
    }
    for pid in procs(path) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Kill every process in `path` and below (cgroup.kill where the kernel has
/// it, else SIGKILL to each pid).
pub fn kill_all(path: &Path) {
    if std::fs::write(path.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_all(&e.path());
            }
        }
    }
    for pid in procs(path) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
