//! bpffs housekeeping: is the pin root on bpffs, and removal of pin dirs
//! (unpinning a link whose fd nobody holds detaches its program).
use std::path::Path;

use super::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pin root (or the directory it will be created in) must be on bpffs.
pub fn check_bpffs(pin_root: &Path) -> Result<(), DatapathError> {
    let mut probe = pin_root;
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p,
            None => break,
        }
    }
    match nix::sys::statfs::statfs(probe) {
        Ok(fs) if fs.filesystem_type().0 == BPF_FS_MAGIC => Ok(()),
        _ => Err(DatapathError::NoBpffs(pin_root.to_path_buf())),
    }
}

/// Remove pin dirs of other object versions under `root` (an upgrade).
pub fn remove_other_versions(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name != keep && name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            tracing::info!(dir = %e.path().display(), "removing the datapath of another knit version");
            remove_dir(&e.path());
        }
    }
}

/// Remove a pin dir and everything pinned in it.
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove pin dir");
    }
}
