//! The service graph's L4 edges: sockops counts every TCP connection the
//! connect hook routed per (task cgroup, alias) in `KNIT_EDGES`; this book
//! turns those into totals per (client service, target service). A task's
//! entries outlive it in the kernel until the book has read them one last
//! time: it folds them into its own totals and removes them, so the map
//! holds only running tasks' pairs and nothing a finished task counted is
//! lost. (The LRU may evict a pair when 16,384 are live: what it counted
//! since the last read is lost, and a read that finds a pair's counts lower
//! than before takes it for a new one.)
use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    sync::Arc,
};

use aya::maps::{HashMap, MapData};
use proxy_common::maps::{Counters, EdgeKey, MAX_EDGES};

use crate::proxy::access::Source;

/// What one edge carried: connections established, connects that failed,
/// bytes both ways (added as connections close).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeTotals {
    pub connections: u64,
    pub failed: u64,
    pub bytes: u64,
}

impl EdgeTotals {
    fn of(c: &Counters) -> Self {
        Self {
            connections: c.new_conns,
            failed: c.failed,
            bytes: c.bytes_sent.saturating_add(c.bytes_received),
        }
    }

    fn add(&mut self, o: Self) {
        self.connections += o.connections;
        self.failed += o.failed;
        self.bytes += o.bytes;
    }

    /// A pair's counters only grow: lower ones are a new entry (evicted and
    /// created again).
    fn below(&self, o: &Self) -> bool {
        self.connections < o.connections || self.failed < o.failed || self.bytes < o.bytes
    }
}

/// One kernel pair as last read: whose it was and what it held.
struct Seen {
    client: Arc<str>,
    target: Arc<str>,
    totals: EdgeTotals,
}

/// (client service, target service) -> totals.
pub type Edges = BTreeMap<(Arc<str>, Arc<str>), EdgeTotals>;

pub struct EdgeBook {
    map: HashMap<MapData, EdgeKey, Counters>,
    seen: StdHashMap<EdgeKey, Seen>,
    /// Totals of pairs that are gone (their task ended, or evicted).
    folded: Edges,
    /// Every task's cgroup id -> its service, from the moment the daemon
    /// lets it connect ([`EdgeBook::remember`]) until its pairs were read
    /// after it ended: a task that starts and ends between two reads is
    /// still counted for its service.
    known: StdHashMap<u64, Arc<str>>,
    /// Pairs of no known task at the last read: dropped if still unknown
    /// at the next.
    strays: std::collections::HashSet<EdgeKey>,
}

impl EdgeBook {
    pub fn new(map: HashMap<MapData, EdgeKey, Counters>) -> Self {
        Self {
            map,
            seen: StdHashMap::new(),
            folded: Edges::new(),
            known: StdHashMap::new(),
            strays: std::collections::HashSet::new(),
        }
    }

    /// The tasks the daemon lets connect now (cgroup id -> service): called
    /// whenever they change, before any of them can connect.
    pub fn remember(&mut self, sources: &BTreeMap<u64, Arc<Source>>) {
        for (cgroup, s) in sources {
            self.known
                .entry(*cgroup)
                .or_insert_with(|| Arc::from(s.service.as_str()));
        }
    }

    /// Read the kernel's pairs and return every edge's totals so far.
    /// `running`: running tasks' cgroup ids; `target`: an alias id -> its
    /// service's name.
    pub fn read(
        &mut self,
        running: &BTreeMap<u64, Arc<Source>>,
        target: impl Fn(u32) -> Option<Arc<str>>,
    ) -> Edges {
        let mut live: Vec<(EdgeKey, Counters)> = self
            .map
            .iter()
            .take(MAX_EDGES as usize)
            .filter_map(Result::ok)
            .collect();
        live.sort_unstable_by_key(|(k, _)| *k);
        let mut gone: Vec<EdgeKey> = Vec::new();
        let mut strays = std::collections::HashSet::new();
        for (key, c) in &live {
            let totals = EdgeTotals::of(c);
            let prev = self.seen.get(key);
            // Whose: the task's service (running, or ended since the last
            // read), else whom the pair was last seen for.
            let client = running
                .get(&key.cgroup_id)
                .map(|s| Arc::<str>::from(s.service.as_str()))
                .or_else(|| self.known.get(&key.cgroup_id).cloned())
                .or_else(|| prev.map(|p| p.client.clone()));
            let target_name = target(key.service_id).or_else(|| prev.map(|p| p.target.clone()));
            let (Some(client), Some(target_name)) = (client, target_name) else {
                // Nobody to count it for: a task the daemon has not told
                // the book of yet (kept for one more read), or none.
                if self.strays.contains(key) {
                    gone.push(*key);
                } else {
                    strays.insert(*key);
                }
                continue;
            };
            if let Some(p) = prev
                && (totals.below(&p.totals) || p.client != client || p.target != target_name)
            {
                // A new entry in an old one's place: the old one's counts
                // are final.
                self.folded
                    .entry((p.client.clone(), p.target.clone()))
                    .or_default()
                    .add(p.totals);
            }
            if !running.contains_key(&key.cgroup_id) {
                // Its task ended: these counts are final.
                gone.push(*key);
            }
            self.seen.insert(
                *key,
                Seen {
                    client,
                    target: target_name,
                    totals,
                },
            );
        }
        self.strays = strays;
        // Pairs no longer in the kernel (evicted) keep what they counted.
        let in_kernel: std::collections::HashSet<EdgeKey> = live.iter().map(|(k, _)| *k).collect();
        let vanished: Vec<EdgeKey> = self
            .seen
            .keys()
            .filter(|k| !in_kernel.contains(k))
            .copied()
            .collect();
        for key in vanished.iter().chain(gone.iter()) {
            if let Some(s) = self.seen.remove(key) {
                self.folded
                    .entry((s.client, s.target))
                    .or_default()
                    .add(s.totals);
            }
        }
        for key in &gone {
            let _ = self.map.remove(key);
        }
        // Ended tasks were read one last time.
        self.known.retain(|cgroup, _| running.contains_key(cgroup));
        let mut out = self.folded.clone();
        for s in self.seen.values() {
            out.entry((s.client.clone(), s.target.clone()))
                .or_default()
                .add(s.totals);
        }
        out
    }
}
