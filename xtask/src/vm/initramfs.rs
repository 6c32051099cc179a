//! The guest's root filesystem, as one newc cpio archive (the kernel unpacks
//! it into a tmpfs and runs `/init`).
//!
//! Every host file goes in at its host path: the tests find `knit` next to
//! their own executable and `env!("CARGO_BIN_EXE_...")` bakes in host paths.
//! Files are staged in a work dir under the target dir and hard-linked when
//! possible, since test binaries with debug info are big.
use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::symlink,
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::{Payload, init, kernel::Kernel};

const BUSYBOX: &str = "/bin/busybox";

/// Host tools the tests spawn, copied in (with their libraries) when the host
/// has them; where busybox has an applet of the same name, they replace it.
/// Tests written on the host expect iproute2 (`ip link add A type veth peer
/// name B`, `ip netns`, `tc ... clsact`), util-linux and bpftool, which
/// busybox mimics at best. `sh` too (dash on Debian): Debian's busybox sh runs
/// its own applets in preference to PATH, so `sh -c "ip ..."` would get its ip.
/// etcd and etcdctl: the multi-host tests run their own etcd; tcpdump:
/// the mutual TLS test captures a host's wire.
const HOST_TOOLS: &[&str] = &[
    "sh", "ip", "tc", "ss", "nsenter", "unshare", "setpriv", "bpftool", "etcd", "etcdctl",
    "tcpdump",
];

/// Where /init finds the modules it loads.
const GUEST_MODULES: &str = "/lib/modules/knit";

/// Build the initramfs in `work`; returns the archive's path.
pub fn build(
    work: &Path,
    kernel: &Kernel,
    payload: &Payload,
    filter: Option<&str>,
) -> Result<PathBuf> {
    let root = work.join("root");
    for dir in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "var/tmp", "etc",
        "root", "mnt",
    ] {
        mkdir(&root.join(dir))?;
    }
    let tools = host_tools();
    busybox(&root, &tools)?;
    etc(&root)?;

    // Every host file, plus the shared libraries (and loader) each one needs.
    let mut host_files: BTreeSet<PathBuf> = payload
        .tests
        .iter()
        .chain(&payload.files)
        .cloned()
        .collect();
    host_files.extend(tools);
    for file in host_files.clone() {
        host_files.extend(shared_libraries(&file)?);
    }
    for file in &host_files {
        place(&root, file)?;
    }

    let modules = kernel.stage_modules(&guest_path(&root, Path::new(GUEST_MODULES)))?;
    if !modules.is_empty() {
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        eprintln!("modules /init loads: {}", names.join(" "));
    }
    let modules: Vec<(PathBuf, &str)> = modules
        .iter()
        .map(|m| {
            (
                Path::new("/").join(m.file.strip_prefix(&root).unwrap_or(&m.file)),
                m.params,
            )
        })
        .collect();

    if let Some(dir) = &payload.workdir {
        copy_sources(&root, dir)?;
    }
    let script = init::script(&init::Init {
        tests: &payload.tests,
        modules: &modules,
        workdir: payload.workdir.as_deref(),
        filter,
    });
    let init_path = root.join("init");
    fs::write(&init_path, script).with_context(|| format!("writing {}", init_path.display()))?;
    chmod(&init_path, 0o755)?;

    let archive = work.join("initramfs.cpio");
    cpio(&root, &archive)?;
    let size = fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    eprintln!("initramfs: {} ({} MiB)", archive.display(), size >> 20);
    Ok(archive)
}

/// The prefix of work dirs: the pid lets a later run remove the leftovers of
/// an interrupted one (Ctrl-C skips destructors).
pub fn work_dir_prefix() -> String {
    format!("work-{}-", std::process::id())
}

/// Remove work dirs whose process is gone.
pub fn remove_stale_work_dirs(vm_dir: &Path) {
    let Ok(entries) = fs::read_dir(vm_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("work-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            eprintln!("removing the leftover {}", entry.path().display());
            if let Err(e) = fs::remove_dir_all(entry.path()) {
                eprintln!("warning: could not remove {}: {e}", entry.path().display());
            }
        }
    }
}

/// The [`HOST_TOOLS`] the host has (not busybox itself), as found on its PATH.
fn host_tools() -> Vec<PathBuf> {
    HOST_TOOLS
        .iter()
        .filter_map(|name| {
            ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|p| {
                    fs::canonicalize(p)
                        .is_ok_and(|real| real.file_name() != Some("busybox".as_ref()))
                })
        })
        .collect()
}

/// Busybox and a symlink per applet, at the paths busybox itself lists; an
/// applet that a host tool replaces links to that tool instead.
fn busybox(root: &Path, tools: &[PathBuf]) -> Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: apt-get install busybox-static");
    }
    place(root, Path::new(BUSYBOX))?;
    let out = Command::new(BUSYBOX)
        .arg("--list-full")
        .output()
        .with_context(|| format!("running {BUSYBOX} --list-full"))?;
    if !out.status.success() {
        bail!("{BUSYBOX} --list-full failed: {}", out.status);
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = guest_path(root, Path::new(applet));
        if link.symlink_metadata().is_ok() {
            continue;
        }
        let target = tools
            .iter()
            .find(|t| t.file_name() == link.file_name())
            .map_or(Path::new(BUSYBOX), |t| t.as_path());
        if target == Path::new("/").join(applet) {
            continue; // the tool itself goes there
        }
        if let Some(parent) = link.parent() {
            mkdir(parent)?;
        }
        symlink(target, &link).with_context(|| format!("creating {}", link.display()))?;
    }
    Ok(())
}

/// The few files a Rust test (tempfile, getaddrinfo("localhost"), getpwuid) expects.
fn etc(root: &Path) -> Result<()> {
    let files = [
        (
            "etc/hosts",
            "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
        ),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        (
            "etc/nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n",
        ),
        ("etc/hostname", "knit-vm\n"),
        // No DNS in the guest; an empty file makes resolvers fail fast.
        ("etc/resolv.conf", ""),
    ];
    for (path, text) in files {
        let path = root.join(path);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    chmod(&root.join("tmp"), 0o1777)?;
    chmod(&root.join("var/tmp"), 0o1777)
}

/// What `ldd` lists for `file` (libraries and the loader, all absolute).
/// Static binaries have none.
fn shared_libraries(file: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(file)
        .output()
        .with_context(|| format!("running ldd {}", file.display()))?;
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(missing) = text.lines().find(|l| l.contains("not found")) {
        bail!(
            "{}: a library is missing on the host: {}",
            file.display(),
            missing.trim()
        );
    }
    Ok(text
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Put host file `file` into `root` at the same absolute path, as a regular
/// file (symlinks resolved: /lib64/ld-linux-x86-64.so.2 points elsewhere).
fn place(root: &Path, file: &Path) -> Result<()> {
    let real = fs::canonicalize(file).with_context(|| format!("resolving {}", file.display()))?;
    let dest = guest_path(root, file);
    if dest.symlink_metadata().is_ok() {
        return Ok(());
    }
    if let Some(parent) = dest.parent() {
        mkdir(parent)?;
    }
    if fs::hard_link(&real, &dest).is_err() {
        fs::copy(&real, &dest)
            .with_context(|| format!("copying {} to {}", real.display(), dest.display()))?;
    }
    Ok(())
}

/// A copy of the test package's sources (not its build output), so that tests
/// reading files relative to CARGO_MANIFEST_DIR or the cwd find them.
fn copy_sources(root: &Path, dir: &Path) -> Result<()> {
    mkdir(&guest_path(root, dir))?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let meta = path
            .symlink_metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            copy_sources(root, &path)?;
        } else if meta.is_file() {
            place(root, &path)?;
        }
    }
    Ok(())
}

/// Write the archive with the system cpio, listing every entry under `root`
/// (parents before children, as the kernel's unpacker needs). Uncompressed:
/// measured with 170 MiB of knit's debug binaries, gzip -1 added 2 s on the
/// host (-6: 5 s) and made the boot no faster.
fn cpio(root: &Path, archive: &Path) -> Result<()> {
    cpio_archive(root, archive, false)
}

/// [`cpio`], keeping each file's owner when `keep_owners` (a distribution's
/// root has files of other users); else every entry is root's.
pub(super) fn cpio_archive(root: &Path, archive: &Path, keep_owners: bool) -> Result<()> {
    let mut names = Vec::new();
    list(root, Path::new(""), &mut names)?;
    let out =
        fs::File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
    let owners: &[&str] = if keep_owners { &[] } else { &["-R", "0:0"] };
    let mut child = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc"])
        .args(owners)
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(out)
        .spawn()
        .context("running cpio (apt-get install cpio)")?;
    {
        let mut stdin = child.stdin.take().context("cpio's stdin")?;
        for name in &names {
            writeln!(stdin, "{}", name.display()).context("writing the file list to cpio")?;
        }
    }
    let status = child.wait().context("waiting for cpio")?;
    if !status.success() {
        bail!("cpio -o -H newc failed in {}: {status}", root.display());
    }
    Ok(())
}

fn list(root: &Path, rel: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    entries.sort();
    for name in entries {
        let rel = rel.join(name);
        names.push(rel.clone());
        if root.join(&rel).symlink_metadata().is_ok_and(|m| m.is_dir()) {
            list(root, &rel, names)?;
        }
    }
    Ok(())
}

/// `path` (absolute, on the host) inside the staged root.
fn guest_path(root: &Path, path: &Path) -> PathBuf {
    root.join(
        path.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect::<PathBuf>(),
    )
}

fn mkdir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}
