//! The kernel side as the daemon sees it: load or adopt the eBPF programs,
//! attach them to the knit cgroup, pin everything, and give typed access to
//! the maps.
//!
//! Everything lives under `<bpf_pin_dir>/<object id>/`: the maps (pinned by
//! name by the loader) and one link per program. A restarted daemon finds the
//! links of the same object and adopts them instead of loading a second copy;
//! a different object (an upgrade) replaces the old directory.
mod maps;
mod pins;
pub mod reconcile;

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    programs::{CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps, links::FdLink},
};
pub use maps::{Heartbeat, LiveCounters, Maps, SockRemover};
pub use reconcile::DesiredAlias;
use thiserror::Error;
use tracing::{info, warn};

/// `knit daemon --no-accelerate`: acceleration stays off whatever the
/// config says, also after a reload.
static ACCELERATE_FORCED_OFF: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub fn force_accelerate_off() {
    ACCELERATE_FORCED_OFF.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn accelerate_forced_off() -> bool {
    ACCELERATE_FORCED_OFF.load(std::sync::atomic::Ordering::Relaxed)
}

/// The eBPF object built by `cargo xtask build-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KNIT_EBPF_OBJECT"));

/// Programs in the object: (function name, hook, minimum kernel for the hook).
const PROGRAMS: &[(&str, &str, &str)] = &[
    ("knit_connect4", "cgroup/connect4", "4.17"),
    ("knit_connect6", "cgroup/connect6", "4.17"),
    ("knit_peer4", "cgroup/getpeername4", "5.8"),
    ("knit_peer6", "cgroup/getpeername6", "5.8"),
    ("knit_sockops", "sockops", "4.13"),
];

/// sockops on the daemon's own cgroup (same-host acceleration of its paths).
const DAEMON_SOCKOPS: &str = "knit_sockops_daemon";
/// sk_msg on the sockhash.
const SK_MSG: &str = "knit_sk_msg";

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error(
        "this knit was built without its eBPF programs (the object was missing when it was compiled): build it with `cargo xtask build` (or `cargo xtask build-ebpf`, then cargo build)"
    )]
    NoObject,
    #[error(
        "{0} is not on a bpf filesystem: mount one (mount -t bpf bpf /sys/fs/bpf) or set bpf_pin_dir to a directory on bpffs"
    )]
    NoBpffs(PathBuf),
    #[error("creating the pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "loading knit's eBPF object: {0}; knit needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) and a kernel with BTF and cgroup BPF (Linux 6.1 or newer; tested on 6.1 and 6.18)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object lacks program {0}: rebuild with `cargo xtask build-ebpf`")]
    MissingProgram(&'static str),
    #[error(
        "{step} {hook} ({name}): {source}; this kernel may lack the {hook} hook (Linux {min} or newer) or a helper knit uses (knit needs Linux 6.1 or newer), or knit lacks CAP_BPF/CAP_NET_ADMIN"
    )]
    Program {
        step: &'static str,
        hook: &'static str,
        name: &'static str,
        min: &'static str,
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "{hook}: the kernel attached it without a bpf_link, which knit needs to pin it (Linux 5.7 or newer): {source}"
    )]
    Link {
        hook: &'static str,
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: Box<aya::pin::PinError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
    #[error("the eBPF object lacks map {0}: rebuild with `cargo xtask build-ebpf`")]
    MissingMap(&'static str),
}

/// The loaded (or adopted) datapath.
pub struct Datapath {
    pub maps: Maps,
    /// True when the programs were already attached by an earlier daemon.
    pub adopted: bool,
    /// Where this object's pins live.
    pub dir: PathBuf,
    /// Whether the daemon's own sockets can be accelerated (its sockops
    /// program is attached to its cgroup); why not otherwise.
    pub daemon_paths: Result<PathBuf, String>,
}

/// False when this binary was built with build.rs's empty stub object
/// (the eBPF programs were not built first).
pub fn has_object() -> bool {
    !OBJECT.is_empty()
}

/// A short, stable id of the embedded object (FNV-1a 64), naming its pin dir.
pub fn object_id() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in OBJECT {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Datapath {
    /// Load or adopt the programs and attach them to `cgroup` (a cgroup2
    /// directory). `cgroup_is_new` says the directory was just created, so
    /// links pinned earlier point to a cgroup that no longer exists.
    ///
    /// `daemon_cgroup` is the daemon's own cgroup (None: it could not be
    /// told, or it is the root or an ancestor of `cgroup`, where a sockops
    /// program would see every socket of the host): its sockops program
    /// puts the daemon's same-host sockets into the sockhash.
    pub fn open(
        pin_root: &Path,
        cgroup: &Path,
        cgroup_is_new: bool,
        daemon_cgroup: Result<PathBuf, String>,
    ) -> Result<Self, DatapathError> {
        if !has_object() {
            return Err(DatapathError::NoObject);
        }
        pins::check_bpffs(pin_root)?;
        let id = object_id();
        let dir = pin_root.join(&id);
        if cgroup_is_new && dir.exists() {
            warn!(dir = %dir.display(), "the knit cgroup was recreated; dropping links pinned for the old one");
            pins::remove_dir(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::PinDir {
            path: dir.clone(),
            source,
        })?;
        // Root only, like the pins in it: no other user may open a map.
        // (Only the directory knit names; `bpf_pin_dir` may be shared.)
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(
                |source| DatapathError::PinDir {
                    path: dir.clone(),
                    source,
                },
            )?;
        }
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(OBJECT)
            .map_err(|e| DatapathError::Load(Box::new(e)))?;
        let cg = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.to_path_buf(),
            source,
        })?;
        // Attached through bpf_link (mode flags must be 0 there); links always
        // coexist with other programs on the same cgroup.
        let mut adopted = true;
        for &(name, hook, min) in PROGRAMS {
            let link_path = dir.join(format!("link_{name}"));
            if link_path.exists() {
                continue;
            }
            adopted = false;
            let err = |step, source| DatapathError::Program {
                step,
                hook,
                name,
                min,
                source: Box::new(source),
            };
            let prog = ebpf
                .program_mut(name)
                .ok_or(DatapathError::MissingProgram(name))?;
            let link: FdLink = if hook == "sockops" {
                let p: &mut SockOps = prog.try_into().map_err(|e| err("loading", e))?;
                p.load().map_err(|e| err("loading", e))?;
                let id = p
                    .attach(&cg, CgroupAttachMode::Single)
                    .map_err(|e| err("attaching", e))?;
                let l = p.take_link(id).map_err(|e| err("attaching", e))?;
                FdLink::try_from(l).map_err(|e| DatapathError::Link {
                    hook,
                    source: Box::new(e),
                })?
            } else {
                let p: &mut CgroupSockAddr = prog.try_into().map_err(|e| err("loading", e))?;
                p.load().map_err(|e| err("loading", e))?;
                let id = p
                    .attach(&cg, CgroupAttachMode::Single)
                    .map_err(|e| err("attaching", e))?;
                let l = p.take_link(id).map_err(|e| err("attaching", e))?;
                FdLink::try_from(l).map_err(|e| DatapathError::Link {
                    hook,
                    source: Box::new(e),
                })?
            };
            link.pin(&link_path).map_err(|e| DatapathError::Pin {
                path: link_path.clone(),
                source: Box::new(e),
            })?;
            info!(program = name, hook, cgroup = %cgroup.display(), "attached and pinned");
        }
        if adopted {
            info!(dir = %dir.display(), "adopted the pinned datapath of an earlier daemon");
        }
        let daemon_paths = match daemon_cgroup {
            Ok(path) => attach_daemon_sockops(&mut ebpf, &dir, &path).map(|()| path),
            Err(why) => Err(why),
        };
        if let Err(why) = &daemon_paths {
            warn!("same-host acceleration covers tasks' TCP connections only: {why}");
        }
        let maps = Maps::take(&mut ebpf)?;
        // sk_msg hangs on the sockhash itself (no link to pin): attached
        // again on every start, replacing the earlier copy for sockets
        // inserted from now on; the pinned map keeps it after we exit.
        {
            let err = |step, source| DatapathError::Program {
                step,
                hook: "sk_msg",
                name: SK_MSG,
                min: "4.17",
                source: Box::new(source),
            };
            let p: &mut SkMsg = ebpf
                .program_mut(SK_MSG)
                .ok_or(DatapathError::MissingProgram(SK_MSG))?
                .try_into()
                .map_err(|e| err("loading", e))?;
            p.load().map_err(|e| err("loading", e))?;
            let id = p.attach(maps.socks_fd()).map_err(|e| err("attaching", e))?;
            let link = p.take_link(id).map_err(|e| err("attaching", e))?;
            // Dropping the link would detach the program; the map holds it.
            std::mem::forget(link);
        }
        Ok(Self {
            maps,
            adopted,
            dir,
            daemon_paths,
        })
    }

    /// Detach and unpin other versions' programs and maps (an upgrade).
    /// Called once this version's maps are filled: until then the old
    /// programs, which run first, keep routing.
    pub fn retire_other_versions(&self) {
        if let (Some(root), Some(id)) = (self.dir.parent(), self.dir.file_name()) {
            pins::remove_other_versions(root, &id.to_string_lossy());
        }
    }
}

/// Attach the daemon-side sockops program to the daemon's own cgroup, pinned
/// as `link_knit_sockops_daemon_<cgroup inode>` (a restart in the same
/// cgroup adopts it; links to other cgroups are dropped).
fn attach_daemon_sockops(ebpf: &mut aya::Ebpf, dir: &Path, cgroup: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(cgroup)
        .map_err(|e| format!("reading the daemon's cgroup {}: {e}", cgroup.display()))?
        .ino();
    let name = format!("link_{DAEMON_SOCKOPS}_{ino}");
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let other = e.file_name().to_string_lossy().into_owned();
            if other.starts_with(&format!("link_{DAEMON_SOCKOPS}_")) && other != name {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let link_path = dir.join(&name);
    if link_path.exists() {
        return Ok(());
    }
    let cg = File::open(cgroup)
        .map_err(|e| format!("opening the daemon's cgroup {}: {e}", cgroup.display()))?;
    let p: &mut SockOps = ebpf
        .program_mut(DAEMON_SOCKOPS)
        .ok_or_else(|| format!("the eBPF object lacks {DAEMON_SOCKOPS}"))?
        .try_into()
        .map_err(|e| format!("{DAEMON_SOCKOPS}: {e}"))?;
    p.load()
        .map_err(|e| format!("loading {DAEMON_SOCKOPS}: {e}"))?;
    let id = p
        .attach(&cg, CgroupAttachMode::Single)
        .map_err(|e| format!("attaching {DAEMON_SOCKOPS} to {}: {e}", cgroup.display()))?;
    let l = p.take_link(id).map_err(|e| e.to_string())?;
    let link = FdLink::try_from(l).map_err(|e| e.to_string())?;
    link.pin(&link_path)
        .map_err(|e| format!("pinning {}: {e}", link_path.display()))?;
    info!(program = DAEMON_SOCKOPS, cgroup = %cgroup.display(), "attached and pinned");
    Ok(())
}

/// The daemon's own cgroup, where its sockops program may go: not the root
/// and not an ancestor of the knit cgroup (there it would see every socket
/// of the host, or tasks' sockets twice).
pub fn daemon_cgroup(mount: &Path, knit: &Path) -> Result<PathBuf, String> {
    let own = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))?;
    let rel = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this process has no cgroup v2 membership")?
        .trim();
    let path = mount.join(rel.trim_start_matches('/'));
    if rel == "/" || knit.starts_with(&path) {
        return Err(format!(
            "the daemon runs in cgroup {rel}, the root or an ancestor of knit's; run it in its own cgroup (systemd does)"
        ));
    }
    Ok(path)
}
