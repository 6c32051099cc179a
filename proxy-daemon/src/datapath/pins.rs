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
///
/// An old version's sockhash that still holds sockets stays pinned (with
/// its sk_msg program and the maps that program uses): dropping it would
/// drop bytes already handed to a socket and not yet read. A later call
/// (the monitor makes one every minute) removes it once its last socket
/// has closed.
pub fn remove_other_versions(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name != keep && name.len() == 16 && name.chars().all(|c| c.is_ascii_hexdigit()) {
            let dir = e.path();
            let socks = dir.join(proxy_common::maps::MAP_SOCKS);
            let held = sockets_in(&socks);
            if held > 0 {
                tracing::info!(dir = %dir.display(), sockets = held, "another knit version's sockhash stays pinned until its sockets close");
                for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                    if f.path() != socks {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
                continue;
            }
            tracing::info!(dir = %dir.display(), "removing the datapath of another knit version");
            remove_dir(&dir);
        }
    }
}

/// Remove a pin dir and everything pinned in it.
pub fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove pin dir");
    }
}

/// Sockets in a pinned sockhash (0 when it cannot be read).
pub fn sockets_in(pin: &Path) -> usize {
    let Ok(data) = aya::maps::MapData::from_pin(pin) else {
        return 0;
    };
    let Ok(map) = aya::maps::SockHash::<_, proxy_common::maps::SockKey>::try_from(
        aya::maps::Map::SockHash(data),
    ) else {
        return 0;
    };
    map.keys().filter_map(Result::ok).count()
}
