//! From a desired routing state to the map writes that reach it: a pure
//! function of what was written last ([`Written`], which the kernel holds
//! too) and what is wanted, so that a reconcile after one endpoint change
//! writes a few entries instead of every slot of every alias, and so that
//! the order of the writes, which keeps concurrent connects routable, is
//! unit-tested without a kernel.
//!
//! The order ([`plan`]):
//! 1. tasks' namespaces (a task may connect as soon as it exists);
//! 2. counters of new backends and aliases (a connect routed to a new
//!    backend must find its entry, or its close would subtract what its
//!    open never added);
//! 3. per alias: a shrinking alias gets its count before its slots, a
//!    growing one its slots before its count, so a connect never picks a
//!    slot that is not (yet or any more) written;
//! 4. aliases that are gone, then slots beyond their alias's count, then
//!    counters nobody needs.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use proxy_common::maps::{Backend, BackendKey, EdgeKey, ServiceEntry, VipKey};

/// What one client alias (VIP:port) should route to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredAlias {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub service_id: u32,
    pub mode: u32,
    /// The alias's namespace id.
    pub ns_id: u32,
    /// Eligible backends in slot order: (address, port, backend id,
    /// `Backend::flags`).
    pub backends: Vec<(Ipv4Addr, u16, u32, u16)>,
}

/// The key of an alias in `KNIT_SERVICES`.
pub fn vip_key(vip: Ipv4Addr, port: u16) -> VipKey {
    VipKey {
        ip: u32::from(vip).to_be(),
        port: port.to_be(),
        _pad: 0,
    }
}

/// What the routing maps hold, as the daemon wrote it (read from the
/// kernel once, at start, then kept in step by every [`Op`] applied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub task_ns: BTreeMap<u64, u32>,
    pub services: BTreeMap<VipKey, ServiceEntry>,
    pub backends: BTreeMap<BackendKey, Backend>,
    /// Aliases with a counter entry (the kernel adds to its values).
    pub svc_stats: BTreeSet<u32>,
    /// Backends with a counter entry.
    pub be_stats: BTreeSet<u32>,
    /// (task, alias) pairs `allowedClients` leaves out, and their action.
    pub deny: BTreeMap<EdgeKey, u32>,
}

/// One map write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    PutTaskNs(u64, u32),
    DelTaskNs(u64),
    /// Create a zeroed counter entry (an existing one is kept).
    NewBackendStats(u32),
    NewServiceStats(u32),
    PutService(VipKey, ServiceEntry),
    PutBackend(BackendKey, Backend),
    DelService(VipKey),
    DelBackend(BackendKey),
    DelServiceStats(u32),
    DelBackendStats(u32),
    /// Refuse (or count) a task's connects to an alias (its count kept).
    PutDeny(EdgeKey, u32),
    DelDeny(EdgeKey),
}

impl Written {
    /// Record that `op` reached the kernel.
    pub fn record(&mut self, op: Op) {
        match op {
            Op::PutTaskNs(k, v) => {
                self.task_ns.insert(k, v);
            }
            Op::DelTaskNs(k) => {
                self.task_ns.remove(&k);
            }
            Op::NewBackendStats(id) => {
                self.be_stats.insert(id);
            }
            Op::NewServiceStats(id) => {
                self.svc_stats.insert(id);
            }
            Op::PutService(k, v) => {
                self.services.insert(k, v);
            }
            Op::PutBackend(k, v) => {
                self.backends.insert(k, v);
            }
            Op::DelService(k) => {
                self.services.remove(&k);
            }
            Op::DelBackend(k) => {
                self.backends.remove(&k);
            }
            Op::DelServiceStats(id) => {
                self.svc_stats.remove(&id);
            }
            Op::DelBackendStats(id) => {
                self.be_stats.remove(&id);
            }
            Op::PutDeny(k, action) => {
                self.deny.insert(k, action);
            }
            Op::DelDeny(k) => {
                self.deny.remove(&k);
            }
        }
    }
}

/// What the kernel should hold besides the aliases: counters for exactly
/// `backend_ids`, each task's namespace, the (task, alias) pairs refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredRest {
    pub backend_ids: BTreeSet<u32>,
    /// Task cgroup id -> namespace id.
    pub task_ns: BTreeMap<u64, u32>,
    /// (task cgroup id, alias) -> `DENY_ENFORCE` or `DENY_AUDIT`.
    pub deny: BTreeMap<EdgeKey, u32>,
}

/// The writes, in order, that turn `written` into `desired` (aliases)
/// and `rest`. A task's refusals are written before its namespace (it may
/// connect as soon as it has one) and removed after it.
pub fn plan(written: &Written, desired: &[DesiredAlias], rest: &DesiredRest) -> Vec<Op> {
    let (backend_ids, task_ns) = (&rest.backend_ids, &rest.task_ns);
    let mut ops = Vec::new();
    for (k, action) in &rest.deny {
        if written.deny.get(k) != Some(action) {
            ops.push(Op::PutDeny(*k, *action));
        }
    }
    for (cg, ns) in task_ns {
        if written.task_ns.get(cg) != Some(ns) {
            ops.push(Op::PutTaskNs(*cg, *ns));
        }
    }
    ops.extend(
        written
            .task_ns
            .keys()
            .filter(|k| !task_ns.contains_key(k))
            .map(|k| Op::DelTaskNs(*k)),
    );
    ops.extend(
        backend_ids
            .iter()
            .filter(|id| !written.be_stats.contains(id))
            .map(|id| Op::NewBackendStats(*id)),
    );
    let mut wanted: BTreeMap<u32, u32> = BTreeMap::new();
    let mut keys: BTreeSet<VipKey> = BTreeSet::new();
    for d in desired {
        let key = vip_key(d.vip, d.port);
        keys.insert(key);
        let n = d.backends.len() as u32;
        let old = written.services.get(&key);
        let entry = ServiceEntry {
            service_id: d.service_id,
            backend_count: n,
            mode: d.mode,
            ns_id: d.ns_id,
        };
        if !written.svc_stats.contains(&d.service_id) {
            ops.push(Op::NewServiceStats(d.service_id));
        }
        let changed = old != Some(&entry);
        let shrinking = old.is_some_and(|o| n < o.backend_count);
        if changed && shrinking {
            ops.push(Op::PutService(key, entry));
        }
        for (slot, (ip, port, backend_id, flags)) in d.backends.iter().enumerate() {
            let bk = BackendKey {
                service_id: d.service_id,
                slot: slot as u32,
            };
            let be = Backend {
                ip: u32::from(*ip).to_be(),
                port: port.to_be(),
                flags: *flags,
                backend_id: *backend_id,
            };
            if written.backends.get(&bk) != Some(&be) {
                ops.push(Op::PutBackend(bk, be));
            }
        }
        if changed && !shrinking {
            ops.push(Op::PutService(key, entry));
        }
        wanted.insert(d.service_id, n);
    }
    ops.extend(
        written
            .services
            .keys()
            .filter(|k| !keys.contains(k))
            .map(|k| Op::DelService(*k)),
    );
    // Slots beyond an alias's count, or of aliases that are gone.
    ops.extend(
        written
            .backends
            .keys()
            .filter(|k| wanted.get(&k.service_id).is_none_or(|&n| k.slot >= n))
            .map(|k| Op::DelBackend(*k)),
    );
    ops.extend(
        written
            .svc_stats
            .iter()
            .filter(|id| !wanted.contains_key(id))
            .map(|id| Op::DelServiceStats(*id)),
    );
    ops.extend(
        written
            .be_stats
            .iter()
            .filter(|id| !backend_ids.contains(id))
            .map(|id| Op::DelBackendStats(*id)),
    );
    ops.extend(
        written
            .deny
            .keys()
            .filter(|k| !rest.deny.contains_key(k))
            .map(|k| Op::DelDeny(*k)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(id: u32, backends: &[u32]) -> DesiredAlias {
        DesiredAlias {
            vip: Ipv4Addr::new(127, 255, (id >> 8) as u8, id as u8),
            port: 80,
            service_id: id,
            mode: 0,
            ns_id: 1,
            backends: backends
                .iter()
                .map(|b| (Ipv4Addr::new(127, 0, 0, 1), 10_000 + *b as u16, *b, 0))
                .collect(),
        }
    }

    fn plan3(
        w: &Written,
        desired: &[DesiredAlias],
        backend_ids: &BTreeSet<u32>,
        task_ns: &BTreeMap<u64, u32>,
    ) -> Vec<Op> {
        let rest = DesiredRest {
            backend_ids: backend_ids.clone(),
            task_ns: task_ns.clone(),
            deny: BTreeMap::new(),
        };
        plan(w, desired, &rest)
    }

    #[test]
    fn a_tasks_refusals_come_before_its_namespace_and_go_after_it() {
        let desired = vec![alias(1, &[1])];
        let pair = EdgeKey {
            cgroup_id: 7,
            service_id: 1,
            _pad: 0,
        };
        let mut rest = DesiredRest {
            backend_ids: ids(&desired),
            task_ns: BTreeMap::from([(7, 1)]),
            deny: BTreeMap::from([(pair, 1)]),
        };
        let mut w = Written::default();
        let ops = plan(&w, &desired, &rest);
        assert!(
            pos(&ops, |o| matches!(o, Op::PutDeny(..)))
                < pos(&ops, |o| matches!(o, Op::PutTaskNs(..))),
            "{ops:?}"
        );
        apply(&mut w, &ops);
        assert!(plan(&w, &desired, &rest).is_empty());
        // Audit instead: one write.
        rest.deny.insert(pair, 2);
        assert_eq!(plan(&w, &desired, &rest), [Op::PutDeny(pair, 2)]);
        // The task gone: its namespace first, then its refusals.
        rest.task_ns.clear();
        rest.deny.clear();
        let ops = plan(&w, &desired, &rest);
        assert!(
            pos(&ops, |o| matches!(o, Op::DelTaskNs(..)))
                < pos(&ops, |o| matches!(o, Op::DelDeny(..))),
            "{ops:?}"
        );
    }

    fn apply(w: &mut Written, ops: &[Op]) {
        for op in ops {
            w.record(*op);
        }
    }

    fn ids(desired: &[DesiredAlias]) -> BTreeSet<u32> {
        desired
            .iter()
            .flat_map(|d| d.backends.iter().map(|b| b.2))
            .collect()
    }

    /// Position of the first op matching `f`.
    fn pos(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).unwrap_or(usize::MAX)
    }

    #[test]
    fn nothing_changed_writes_nothing() {
        let desired = vec![alias(1, &[1, 2, 3]), alias(2, &[4])];
        let ns = BTreeMap::from([(7, 1)]);
        let mut w = Written::default();
        let first = plan3(&w, &desired, &ids(&desired), &ns);
        assert_eq!(first.len(), 1 + 4 + 2 + 4 + 2, "{first:?}");
        apply(&mut w, &first);
        assert!(plan3(&w, &desired, &ids(&desired), &ns).is_empty());
    }

    #[test]
    fn a_growing_alias_gets_its_slots_before_its_count() {
        let mut w = Written::default();
        let before = vec![alias(1, &[1])];
        let ops = plan3(&w, &before, &ids(&before), &BTreeMap::new());
        apply(&mut w, &ops);
        let after = vec![alias(1, &[1, 2, 3])];
        let ops = plan3(&w, &after, &ids(&after), &BTreeMap::new());
        let count = pos(&ops, |o| matches!(o, Op::PutService(..)));
        let slot = pos(&ops, |o| matches!(o, Op::PutBackend(k, _) if k.slot == 2));
        let stats = pos(&ops, |o| matches!(o, Op::NewBackendStats(3)));
        assert!(stats < slot && slot < count, "{ops:?}");
        assert_eq!(ops.len(), 2 + 2 + 1, "{ops:?}");
    }

    #[test]
    fn a_shrinking_alias_gets_its_count_before_its_slots_go() {
        let mut w = Written::default();
        let before = vec![alias(1, &[1, 2, 3])];
        let ops = plan3(&w, &before, &ids(&before), &BTreeMap::new());
        apply(&mut w, &ops);
        // Backend 2 left rotation: slot 1 now holds 3, slot 2 goes.
        let after = vec![alias(1, &[1, 3])];
        let ops = plan3(&w, &after, &ids(&after), &BTreeMap::new());
        let count = pos(
            &ops,
            |o| matches!(o, Op::PutService(_, e) if e.backend_count == 2),
        );
        let rewrite = pos(&ops, |o| matches!(o, Op::PutBackend(k, _) if k.slot == 1));
        let drop = pos(&ops, |o| matches!(o, Op::DelBackend(k) if k.slot == 2));
        assert!(count < rewrite && rewrite < drop, "{ops:?}");
        assert!(ops.contains(&Op::DelBackendStats(2)), "{ops:?}");
        apply(&mut w, &ops);
        assert!(plan3(&w, &after, &ids(&after), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn gone_aliases_and_tasks_leave_every_map() {
        let mut w = Written::default();
        let ns = BTreeMap::from([(7, 1), (8, 2)]);
        let before = vec![alias(1, &[1, 2]), alias(2, &[3])];
        let ops = plan3(&w, &before, &ids(&before), &ns);
        apply(&mut w, &ops);
        let after = vec![alias(1, &[1, 2])];
        let ns_after = BTreeMap::from([(7, 1)]);
        let ops = plan3(&w, &after, &ids(&after), &ns_after);
        apply(&mut w, &ops);
        let mut want = Written::default();
        let fresh = plan3(&want, &after, &ids(&after), &ns_after);
        apply(&mut want, &fresh);
        assert_eq!(w, want);
        // The alias's entry goes before its slots and counters.
        let svc = pos(&ops, |o| matches!(o, Op::DelService(_)));
        let slot = pos(&ops, |o| matches!(o, Op::DelBackend(_)));
        let stats = pos(&ops, |o| matches!(o, Op::DelServiceStats(2)));
        assert!(svc < slot && slot < stats, "{ops:?}");
    }

    /// 1,000 aliases with 10 endpoints each: after one endpoint leaves
    /// rotation, a reconcile writes a handful of entries, not 11,000.
    #[test]
    fn one_endpoint_change_among_ten_thousand_writes_a_few_entries() {
        let desired: Vec<DesiredAlias> = (0..1_000u32)
            .map(|a| alias(a, &(0..10).map(|i| a * 10 + i).collect::<Vec<_>>()))
            .collect();
        let mut w = Written::default();
        let first = plan3(&w, &desired, &ids(&desired), &BTreeMap::new());
        assert_eq!(first.len(), 1_000 + 10_000 + 10_000 + 1_000);
        apply(&mut w, &first);
        let mut after = desired.clone();
        after[500].backends.remove(3);
        // The endpoint is ejected, not gone: its counters stay.
        let ops = plan3(&w, &after, &ids(&desired), &BTreeMap::new());
        // The count, slots 3..8 shifted down by one, slot 9 removed.
        assert_eq!(ops.len(), 1 + 6 + 1, "{ops:?}");
    }
}
