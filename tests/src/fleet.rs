//! Several hosts on one machine: a network namespace per host, joined by
//! veth pairs to a bridge in a namespace of its own, with addresses that
//! exist only inside those namespaces (10.77.0.0/24). etcd runs in the first
//! host; each host runs a daemon of its own (cgroup, pin dir, state dir,
//! socket, hosts file) inside its namespace, and so do its tasks.
//!
//! Everything is removed on drop, also when the test fails.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Knit, wait_for};

/// The fleet's subnet: it exists only inside the test's namespaces.
pub const SUBNET: &str = "10.77.0";
/// etcd's client port on the first host.
pub const ETCD_PORT: u16 = 2379;

fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The fleet is closed: each host namespace has only `lo` and its `eth0`
/// and routes only the fleet's subnet (no default route), and the bridge
/// namespace has only the bridge and the hosts' veth ends (no uplink). So
/// traffic to the fleet's addresses can only go between the test's own
/// namespaces.
fn check_isolated(bridge: &str, hosts: &[String]) -> Result<()> {
    let links = |ns: &str| -> Result<Vec<String>> {
        Ok(ip_output(&["-n", ns, "-o", "link", "show"])?
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    };
    for ns in hosts {
        let l = links(ns)?;
        if l.iter().any(|n| n != "lo" && n != "eth0") {
            bail!("host namespace {ns} has links other than lo and eth0: {l:?}");
        }
        for route in ip_output(&["-n", ns, "route", "show"])?.lines() {
            if !route.starts_with(&format!("{SUBNET}.0/24 ")) {
                bail!("host namespace {ns} routes beyond the fleet: {route:?}");
            }
        }
    }
    let l = links(bridge)?;
    let allowed = |n: &str| {
        n == "lo"
            || n == "br0"
            || n.strip_prefix('p')
                .is_some_and(|i| i.parse::<u32>().is_ok())
    };
    if !l.iter().all(|n| allowed(n)) {
        bail!("the bridge namespace {bridge} has a link that could lead out: {l:?}");
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Network namespaces, deleted on drop (which also removes their links).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// An etcd member in a host's namespace: alone (a one-member cluster), or
/// one of several (see [`Fleet::start_cluster`]).
pub struct Etcd {
    pub url: String,
    netns: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its member name, peer URL and the whole cluster (`name=peer,...`).
    name: String,
    peer: String,
    cluster: String,
}

impl Etcd {
    fn new(netns: &str, address: &str) -> Result<Self> {
        let peer = "http://127.0.0.1:2380".to_string();
        let mut e = Self::member(
            netns,
            address,
            "knit-test",
            &peer,
            &format!("knit-test={peer}"),
        )?;
        e.start()?;
        Ok(e)
    }

    /// A member of a cluster, not started yet.
    fn member(netns: &str, address: &str, name: &str, peer: &str, cluster: &str) -> Result<Self> {
        Ok(Self {
            url: format!("http://{address}:{ETCD_PORT}"),
            netns: netns.to_string(),
            dir: tempfile::Builder::new()
                .prefix("knit-test-etcd")
                .tempdir()?,
            child: None,
            name: name.to_string(),
            peer: peer.to_string(),
            cluster: cluster.to_string(),
        })
    }

    /// The process id of the running member.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn nsenter(&self, prog: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg("--")
            .arg(prog);
        c
    }

    /// Start etcd (again: it keeps its data directory).
    pub fn start(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_healthy()
    }

    /// Start the process (a member of a new cluster answers only once a
    /// quorum of members runs).
    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let child = self
            .nsenter("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.url])
            .args(["--advertise-client-urls", &self.url])
            .args(["--listen-peer-urls", &self.peer])
            .args(["--initial-advertise-peer-urls", &self.peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context(
                "starting etcd (Debian package etcd-server; `cargo xtask setup` installs it)",
            )?;
        self.child = Some(child);
        Ok(())
    }

    fn wait_healthy(&self) -> Result<()> {
        wait_for("etcd to answer", Duration::from_secs(30), || {
            self.nsenter("etcdctl")
                .args(["--endpoints", &self.url, "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ok()?
                .success()
                .then_some(())
        })
        .with_context(|| format!("etcd's log:\n{}", self.log()))
    }

    /// Stop etcd (SIGTERM, then wait).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )?;
            c.wait()?;
        }
        Ok(())
    }

    /// Freeze etcd (SIGSTOP): its connections stay open and nothing
    /// answers, as with a stalled disk or a long GC pause.
    pub fn pause(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Thaw etcd after [`Etcd::pause`] (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        let c = self.child.as_ref().context("etcd is not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig)?;
        Ok(())
    }

    /// `etcdctl get --prefix KEY --keys-only`: the keys.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let out = self
            .nsenter("etcdctl")
            .args([
                "--endpoints",
                &self.url,
                "get",
                "--prefix",
                "--keys-only",
                prefix,
            ])
            .env("ETCDCTL_API", "3")
            .output()?;
        if !out.status.success() {
            bail!("etcdctl get: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }

    /// `etcdctl put KEY VALUE`.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        let out = self
            .nsenter("etcdctl")
            .args(["--endpoints", &self.url, "put", key, value])
            .env("ETCDCTL_API", "3")
            .output()?;
        if !out.status.success() {
            bail!("etcdctl put: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `etcdctl get KEY --print-value-only`: the value, if any.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = self
            .nsenter("etcdctl")
            .args(["--endpoints", &self.url, "get", key, "--print-value-only"])
            .env("ETCDCTL_API", "3")
            .output()?;
        if !out.status.success() {
            bail!("etcdctl get: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((!v.is_empty()).then_some(v))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Run `f` on a thread inside etcd's network namespace: the only place
    /// where [`Etcd::url`] may be dialled (the fleet's addresses exist only
    /// inside its namespaces).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.netns);
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // The network namespace is per thread: this one joins it,
                // and checks it did before anything is dialled.
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("joining {path}"))?;
                use std::os::unix::fs::MetadataExt;
                let want = std::fs::metadata(&path)?;
                let have = std::fs::metadata("/proc/thread-self/ns/net")?;
                if (want.dev(), want.ino()) != (have.dev(), have.ino()) {
                    bail!("this thread is not in {path}");
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {path} panicked"))?
        })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `n` hosts with a daemon each, sharing etcd.
pub struct Fleet {
    /// Host i (0-based) is named `h{i+1}` and has address 10.77.0.{i+1}.
    pub hosts: Vec<Knit>,
    /// The (first) etcd member, on host 1.
    pub etcd: Etcd,
    /// The other members of a cluster ([`Fleet::start_cluster`]): member
    /// i+2 on host i+2.
    pub members: Vec<Etcd>,
    /// Dropped last: the daemons and etcd are gone by then.
    _namespaces: Namespaces,
}

impl Fleet {
    /// Build the network, start etcd on the first host, then a daemon per
    /// host with `extra` TOML added to each config.
    pub fn start(name: &str, n: usize, extra: &str) -> Result<Self> {
        Self::start_full(name, n, extra, crate::knit_bin())
    }

    /// As [`Fleet::start`], running the `knit` binary at `bin`.
    pub fn start_full(name: &str, n: usize, extra: &str, bin: PathBuf) -> Result<Self> {
        Self::start_cluster(name, n, extra, bin, 1)
    }

    /// As [`Fleet::start_full`], with an etcd cluster of `members` members
    /// (one on each of the first hosts; every daemon is given them all).
    pub fn start_cluster(
        name: &str,
        n: usize,
        extra: &str,
        bin: PathBuf,
        members: usize,
    ) -> Result<Self> {
        if members == 0 || members > n {
            bail!("an etcd cluster of {members} members on {n} hosts");
        }
        let tag = format!("kn{}{}", std::process::id() % 100_000, name);
        let bridge = format!("{tag}-br");
        let mut namespaces = Namespaces(Vec::new());
        ip(&["netns", "add", &bridge])?;
        namespaces.0.push(bridge.clone());
        ip(&["-n", &bridge, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &bridge, "link", "set", "br0", "up"])?;
        let mut names = Vec::new();
        for i in 1..=n {
            let ns = format!("{tag}-h{i}");
            ip(&["netns", "add", &ns])?;
            namespaces.0.push(ns.clone());
            let peer = format!("p{i}");
            ip(&[
                "link", "add", "name", "eth0", "netns", &ns, "type", "veth", "peer", "name", &peer,
                "netns", &bridge,
            ])?;
            ip(&["-n", &bridge, "link", "set", &peer, "master", "br0"])?;
            ip(&["-n", &bridge, "link", "set", &peer, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{SUBNET}.{i}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            names.push(ns);
        }
        // Before anything is sent: the fleet's addresses lead nowhere else.
        check_isolated(&bridge, &names)?;
        let (etcd, others) = if members == 1 {
            (Etcd::new(&names[0], &format!("{SUBNET}.1"))?, Vec::new())
        } else {
            let peer = |i: usize| format!("http://{SUBNET}.{i}:2380");
            let cluster: Vec<String> = (1..=members)
                .map(|i| format!("knit-test-{i}={}", peer(i)))
                .collect();
            let cluster = cluster.join(",");
            let mut all = Vec::new();
            for (i, ns) in names.iter().enumerate().take(members) {
                let mut m = Etcd::member(
                    ns,
                    &format!("{SUBNET}.{}", i + 1),
                    &format!("knit-test-{}", i + 1),
                    &peer(i + 1),
                    &cluster,
                )?;
                m.spawn()?;
                all.push(m);
            }
            for m in &all {
                m.wait_healthy()?;
            }
            let mut all = all.into_iter();
            let first = all.next().context("no etcd member")?;
            (first, all.collect())
        };
        let urls: Vec<&str> = std::iter::once(etcd.url.as_str())
            .chain(others.iter().map(|m| m.url.as_str()))
            .collect();
        let mut hosts = Vec::new();
        for (i, ns) in names.iter().enumerate() {
            let conf = format!(
                "[registry]\nbackend = \"etcd\"\nendpoints = {urls:?}\nlease_ttl_s = 3\n\n[host]\naddress = \"{SUBNET}.{}\"\nname = \"h{}\"\n\n{extra}",
                i + 1,
                i + 1
            );
            hosts.push(Knit::start_in(
                &format!("{name}-h{}", i + 1),
                &conf,
                ns,
                bin.clone(),
            )?);
        }
        Ok(Self {
            hosts,
            etcd,
            members: others,
            _namespaces: namespaces,
        })
    }

    /// The hosts file of host `i` (its tasks resolve aliases with it).
    pub fn hosts_file(&self, i: usize) -> PathBuf {
        self.hosts[i].hosts.clone()
    }
}
