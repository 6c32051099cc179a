//! The guest kernel. By default Debian 12's `linux-image-cloud-amd64` (6.1,
//! with BTF, cgroup2 and bpf built in): the metapackage's concrete package is
//! fetched once with `apt-get download` and unpacked with `dpkg-deb -x` into a
//! cache, never installed. `--kernel` takes any bzImage instead.
//!
//! The cloud kernel builds veth and bridge as modules; multi-host tests need
//! them, so the modules in [`WANTED`] (and what they depend on) go into the
//! initramfs and `/init` loads them.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::util;

/// Debian 12's cloud kernels, by their metapackage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Debian {
    /// 6.1, Debian 12's own (`linux-image-cloud-amd64`).
    #[value(name = "6.1")]
    V6_1,
    /// 6.12, from Debian 12's updates (`linux-image-6.12-cloud-amd64`).
    #[value(name = "6.12")]
    V6_12,
}

impl Debian {
    pub fn metapackage(self) -> &'static str {
        match self {
            Debian::V6_1 => "linux-image-cloud-amd64",
            Debian::V6_12 => "linux-image-6.12-cloud-amd64",
        }
    }

    /// Its cache under `target/vm/` (one per kernel line: the newest tree
    /// in a cache is the one used).
    pub fn cache(self, vm_dir: &Path) -> PathBuf {
        match self {
            Debian::V6_1 => vm_dir.join("kernel"),
            Debian::V6_12 => vm_dir.join("kernel-6.12"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Debian::V6_1 => "6.1",
            Debian::V6_12 => "6.12",
        }
    }
}

/// Modules the tests may need: veth and bridge for hosts in network
/// namespaces, dummy for spare interfaces, and the tc hooks for BPF on them.
/// A name missing from the build (or built in) is not an error.
const WANTED: &[&str] = &[
    "veth",
    "bridge",
    "dummy",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    // kTLS: TCP between hosts with tls is handed to the kernel's TLS, and
    // the AEADs it asks the crypto API for (the generic ones: nothing to
    // probe in the emulated CPU; a real system loads them on demand).
    "tls",
    "ctr",
    "ghash_generic",
    "gcm",
    "chacha_generic",
    "poly1305_generic",
    "chacha20poly1305",
];

/// Module parameters: dummy would otherwise add a `dummy0` nobody asked for.
const PARAMS: &[(&str, &str)] = &[("dummy", "numdummies=0")];

pub struct Kernel {
    /// The bzImage qemu boots.
    pub image: PathBuf,
    /// `lib/modules/<release>` of the same build, when we have it.
    pub modules: Option<PathBuf>,
}

/// A module to load in the guest, in dependency order.
pub struct Module {
    pub name: String,
    /// The `.ko` file, uncompressed (busybox insmod cannot decompress).
    pub file: PathBuf,
    /// For insmod, after the file.
    pub params: &'static str,
}

impl Kernel {
    /// A kernel image the user gave. If it sits in an unpacked package tree
    /// (`.../boot/vmlinuz-R` next to `.../lib/modules/R`), its modules are used too.
    pub fn custom(image: &Path) -> Result<Kernel> {
        if !image.is_file() {
            bail!("--kernel {}: no such file", image.display());
        }
        let image = fs::canonicalize(image)
            .with_context(|| format!("resolving --kernel {}", image.display()))?;
        let modules = (|| {
            let release = image.file_name()?.to_str()?.strip_prefix("vmlinuz-")?;
            let dir = image.parent()?.parent()?.join("lib/modules").join(release);
            dir.is_dir().then_some(dir)
        })();
        Ok(Kernel { image, modules })
    }

    /// Stage the wanted modules (and their dependencies) as uncompressed
    /// `.ko` files in `dest`; returns them in the order to load them.
    pub fn stage_modules(&self, dest: &Path) -> Result<Vec<Module>> {
        let Some(dir) = &self.modules else {
            eprintln!("no module tree for this kernel: relying on built-in drivers only");
            return Ok(Vec::new());
        };
        let mut index = BTreeMap::new();
        index_modules(&dir.join("kernel"), &mut index)?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;

        let mut ordered = Vec::new();
        let mut seen = BTreeSet::new();
        for name in WANTED {
            if index.contains_key(*name) {
                stage(name, &index, dest, &mut seen, &mut ordered)?;
            } else if !builtin.contains(&format!("/{name}.ko")) {
                eprintln!("note: module {name} is neither in this kernel nor built in");
            }
        }
        Ok(ordered)
    }
}

/// Debian's cloud kernel, from the cache or downloaded into it.
pub fn debian(vm_dir: &Path, which: Debian) -> Result<Kernel> {
    let cache = &which.cache(vm_dir);
    if let Some(tree) = cached_tree(cache)? {
        eprintln!("using the cached {}", tree.display());
        return from_tree(&tree);
    }
    let package = concrete_package(which.metapackage())?;
    util::step(&format!(
        "downloading {package} (once; kept in {})",
        cache.display()
    ));
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempdir_in(cache)
        .with_context(|| format!("creating a temp dir in {}", cache.display()))?;
    // apt drops to the _apt user to download, which cannot write to our temp
    // dir; downloading as root only silences that warning.
    util::run(
        Command::new("apt-get")
            .args(["download", "-o", "APT::Sandbox::User=root", &package])
            .current_dir(tmp.path()),
    )
    .context("apt-get download failed (`apt-get update` may help)")?;
    let deb = fs::read_dir(tmp.path())
        .with_context(|| format!("reading {}", tmp.path().display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", tmp.path().display()))?;
    let unpacked = tmp.path().join("tree");
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    // Rename only once complete, so an interrupted download never looks cached.
    let tree = cache.join(&package);
    fs::rename(&unpacked, &tree)
        .with_context(|| format!("moving {} to {}", unpacked.display(), tree.display()))?;
    from_tree(&tree)
}

/// The newest `linux-image-*` tree already unpacked in the cache.
fn cached_tree(cache: &Path) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(cache) else {
        return Ok(None);
    };
    let mut trees: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-"))
                && p.join("boot").is_dir()
        })
        .collect();
    trees.sort();
    Ok(trees.pop())
}

/// The concrete package the metapackage depends on, e.g. `linux-image-6.1.0-56-cloud-amd64`.
fn concrete_package(metapackage: &str) -> Result<String> {
    let out = util::output(Command::new("apt-cache").args(["depends", metapackage]))
        .with_context(|| format!("apt does not know {metapackage} (`apt-get update` may help)"))?;
    out.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains(['<', ' ']))
        .map(str::to_owned)
        .with_context(|| {
            format!("no linux-image package among the dependencies of {metapackage}:\n{out}")
        })
}

fn from_tree(tree: &Path) -> Result<Kernel> {
    let boot = tree.join("boot");
    let image = fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    Kernel::custom(&image)
}

/// Map module names (with `-` as `_`, as the kernel names them) to their files.
fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_dir() {
            index_modules(&path, index)?;
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
                .iter()
                .find_map(|ext| name.strip_suffix(ext));
            if let Some(stem) = stem {
                index.insert(stem.replace('-', "_"), path);
            }
        }
    }
    Ok(())
}

/// Stage `name` after its dependencies (depth first).
fn stage(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    dest: &Path,
    seen: &mut BTreeSet<String>,
    ordered: &mut Vec<Module>,
) -> Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let src = index
        .get(name)
        .with_context(|| format!("module {name} (a dependency) is not in the module tree"))?;
    let file = dest.join(format!("{name}.ko"));
    decompress(src, &file)?;
    let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
    for dep in modinfo_depends(&bytes) {
        stage(&dep, index, dest, seen, ordered)?;
    }
    let params = PARAMS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("", |(_, p)| p);
    ordered.push(Module {
        name: name.to_owned(),
        file,
        params,
    });
    Ok(())
}

fn decompress(src: &Path, dest: &Path) -> Result<()> {
    let tool = match src.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        Some("gz") => "gzip",
        _ => {
            fs::copy(src, dest)
                .with_context(|| format!("copying {} to {}", src.display(), dest.display()))?;
            return Ok(());
        }
    };
    let out = fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .stdout(out)
        .status()
        .with_context(|| format!("running {tool} -dc {}", src.display()))?;
    if !status.success() {
        bail!("{tool} -dc {} failed: {status}", src.display());
    }
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated
/// `key=value` strings), found by scanning the file: the package ships no
/// modules.dep (depmod runs at install time).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let value = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
    String::from_utf8_lossy(value)
        .split(',')
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}
