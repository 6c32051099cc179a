//! Who else uses the CPUs. A benchmark on a shared 2-CPU machine measures
//! noise when anything else runs (a build, a VM test), so every run counts
//! the CPU time that processes outside this benchmark used meanwhile, from
//! /proc: a run (or a round) that was disturbed can be repeated, and the
//! report says how quiet the machine was. Also where the benchmarks pin
//! their clients and servers.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Where the benchmarks pin what they start on 2 CPUs (`taskset -c`): the
/// load generator (wrk, h2load, a client task) on one, the servers (nginx,
/// HAProxy, the knit daemon where it proxies, a sink task) on the other,
/// so that client and server do not steal each other's core.
pub const CLIENT_CPU: &str = "0";
pub const SERVER_CPU: &str = "1";

/// One process as /proc/<pid>/stat shows it.
struct Proc {
    comm: String,
    ppid: i32,
    /// utime + stime + cutime + cstime, in clock ticks. Children's times
    /// count once reaped, so short jobs (rustc under cargo) are not missed.
    ticks: u64,
}

/// CPU times of the processes that are not this benchmark's, at one moment.
pub struct Snapshot {
    at: Instant,
    others: HashMap<i32, (String, u64)>,
}

/// Others' CPU use between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// In CPUs: 1.0 = one CPU busy all the time.
    pub cpus: f64,
    /// The biggest user and its share, in CPUs.
    pub top: Option<(String, f64)>,
}

impl Usage {
    pub fn describe(&self) -> String {
        match &self.top {
            Some((comm, c)) => format!(
                "{:.0}% of a CPU, most by {comm} ({:.0}%)",
                self.cpus * 100.0,
                c * 100.0
            ),
            None => format!("{:.0}% of a CPU", self.cpus * 100.0),
        }
    }
}

impl Snapshot {
    /// Every process but kernel threads and this process's descendants
    /// (the daemon, its tasks, wrk, nginx, HAProxy).
    pub fn take() -> Result<Self> {
        let procs = read_procs()?;
        let me = std::process::id() as i32;
        let ours = |mut pid: i32| {
            // Walk up to init; the depth bound guards against a cycle from
            // pids reused while /proc was being read.
            for _ in 0..64 {
                if pid == me {
                    return true;
                }
                match procs.get(&pid) {
                    Some(p) if p.ppid > 0 => pid = p.ppid,
                    _ => return false,
                }
            }
            false
        };
        let others = procs
            .iter()
            .filter(|&(&pid, p)| pid != 2 && p.ppid != 2 && !ours(pid))
            .map(|(&pid, p)| (pid, (p.comm.clone(), p.ticks)))
            .collect();
        Ok(Self {
            at: Instant::now(),
            others,
        })
    }

    /// What processes other than ours used from `self` to `later`.
    pub fn usage_until(&self, later: &Snapshot) -> Usage {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return Usage::default();
        }
        let tck = clock_ticks_per_sec();
        // A child reaped in the window brings all its CPU time into its
        // parent's at once, also what it used before the window: no process
        // is credited more than every CPU for the whole window.
        let nproc = std::thread::available_parallelism().map_or(1, usize::from);
        let cap = (secs * tck * nproc as f64) as u64;
        let mut by_comm: HashMap<&str, u64> = HashMap::new();
        for (pid, (comm, ticks)) in &later.others {
            let before = self.others.get(pid).map_or(0, |(_, t)| *t);
            *by_comm.entry(comm).or_default() += ticks.saturating_sub(before).min(cap);
        }
        let total: u64 = by_comm.values().sum();
        let top = by_comm
            .into_iter()
            .max_by_key(|(_, t)| *t)
            .filter(|(_, t)| *t > 0)
            .map(|(c, t)| (c.to_string(), t as f64 / tck / secs));
        Usage {
            cpus: total as f64 / tck / secs,
            top,
        }
    }
}

/// Wait up to `limit` for a second in which others use at most `max_cpus`;
/// the last second's usage.
pub fn wait_quiet(max_cpus: f64, limit: Duration) -> Result<Usage> {
    let start = Instant::now();
    loop {
        let a = Snapshot::take()?;
        std::thread::sleep(Duration::from_secs(1));
        let u = a.usage_until(&Snapshot::take()?);
        if u.cpus <= max_cpus || start.elapsed() >= limit {
            return Ok(u);
        }
        println!(
            "  other processes use {}; waiting for the machine to settle",
            u.describe()
        );
    }
}

/// CPU time (utime + stime + reaped children's) of `pid` and of its live
/// descendants (an nginx master and its worker), in clock ticks; None when
/// `pid` is gone.
pub fn tree_ticks(pid: u32) -> Result<Option<u64>> {
    let procs = read_procs()?;
    let Some(under) = tree(&procs, pid) else {
        return Ok(None);
    };
    Ok(Some(
        procs
            .iter()
            .filter(|&(&p, _)| under.contains(&(p as u32)))
            .map(|(_, x)| x.ticks)
            .sum(),
    ))
}

/// `pid` and every process under it (nginx's master and its worker), or
/// an empty list when it is gone.
pub fn tree_pids(pid: u32) -> Result<Vec<u32>> {
    Ok(tree(&read_procs()?, pid).unwrap_or_default())
}

fn tree(procs: &HashMap<i32, Proc>, pid: u32) -> Option<Vec<u32>> {
    let root = pid as i32;
    if !procs.contains_key(&root) {
        return None;
    }
    let under = |mut p: i32| {
        for _ in 0..64 {
            if p == root {
                return true;
            }
            match procs.get(&p) {
                Some(x) if x.ppid > 0 => p = x.ppid,
                _ => return false,
            }
        }
        false
    };
    let mut pids: Vec<u32> = procs
        .keys()
        .filter(|&&p| under(p))
        .map(|&p| p as u32)
        .collect();
    pids.sort_unstable();
    Some(pids)
}

/// CPU time of everything in a cgroup v2 tree (its `cpu.stat`
/// `usage_usec`, which the kernel keeps whether or not the cpu controller
/// is enabled, and which keeps the time of child cgroups removed since),
/// in seconds: a knit service's tasks, whatever processes they start. A
/// cgroup that does not exist (a service none of whose tasks has started
/// yet) has used none.
pub fn cgroup_secs(cgroup: &std::path::Path) -> Result<f64> {
    if !cgroup.exists() {
        return Ok(0.0);
    }
    let path = cgroup.join("cpu.stat");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let usec: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no usage_usec in {}", path.display()))?;
    Ok(usec as f64 / 1e6)
}

/// Clock ticks as seconds of CPU.
pub fn ticks_to_secs(ticks: u64) -> f64 {
    ticks as f64 / clock_ticks_per_sec()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn read_procs() -> Result<HashMap<i32, Proc>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        // A process may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(p) = parse_stat(&stat) {
            out.insert(pid, p);
        }
    }
    Ok(out)
}

/// "pid (comm) state ppid ... utime stime cutime cstime ...": comm may hold
/// spaces and parentheses, so fields are counted after the last ')'.
fn parse_stat(stat: &str) -> Option<Proc> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Proc {
        comm,
        ppid: f.get(1)?.parse().ok()?,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_odd_comm() {
        let s = "1234 (my (odd) prog) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0";
        let p = parse_stat(s).expect("parses");
        assert_eq!(p.comm, "my (odd) prog");
        assert_eq!(p.ppid, 77);
        assert_eq!(p.ticks, 250 + 50 + 7 + 3);
    }

    #[test]
    fn tree_ticks_of_this_process() -> Result<()> {
        assert!(tree_ticks(std::process::id())?.is_some());
        Ok(())
    }

    #[test]
    fn reads_a_cgroups_cpu_time() -> Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        )?;
        assert!((cgroup_secs(dir.path())? - 2.5).abs() < 1e-9);
        assert_eq!(cgroup_secs(&dir.path().join("none"))?, 0.0);
        std::fs::remove_file(dir.path().join("cpu.stat"))?;
        assert!(cgroup_secs(dir.path()).is_err());
        Ok(())
    }

    #[test]
    fn this_process_is_not_counted() -> Result<()> {
        let s = Snapshot::take()?;
        assert!(!s.others.contains_key(&(std::process::id() as i32)));
        Ok(())
    }
}
