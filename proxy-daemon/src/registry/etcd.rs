//! The etcd registry: one knit cluster under `[registry] prefix` (`/knit`).
//!
//! Keys (values are JSON):
//! - `<prefix>/config/...`: the shared state of [`ConfigState`]:
//!   `namespaces/<ns>`, `settings/default_namespace`,
//!   `task_definitions/<family>`, `services/<name>`, `vips/<ns>/<dns>`,
//!   `alias_ids/<ns>/<dns>/<port>`, `namespace_ids/<ns>`, `counters/<name>`.
//!   Every write is one transaction that also rewrites `config/revision`
//!   and only succeeds if nobody else wrote it since this host read the
//!   state: VIPs and ids are unique across the fleet, with no lock held.
//! - `<prefix>/hosts/<host>/tasks/<task id>`: a [`HostedTask`], put under
//!   the host's lease. The daemon keeps the lease alive; a host that stops
//!   doing so leaves every other host's view when the lease expires.
//!
//! A background session watches the whole prefix and keeps [`View`] (the
//! last known state) up to date. When etcd goes away the view stays as it
//! was, so every daemon keeps routing; when it comes back the session reads
//! everything again, publishes this host's tasks under a fresh lease and
//! removes what it published before that is gone now.
use std::{
    collections::BTreeMap,
    future::Future,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use proxy_config::{ApplyPlan, DaemonConfig};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Notify, mpsc},
    time::Instant,
};
use tracing::{info, warn};

use super::{
    HostedTask, RegistryError, TaskRecord,
    state::{ApplySummary, Change, ConfigState},
};

/// How many times a write is retried when another host wrote first.
const MAX_CONFLICTS: usize = 32;
/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// The last known state of the registry.
#[derive(Debug, Default)]
pub struct View {
    pub config: ConfigState,
    /// Other hosts' tasks, by task id.
    pub remote: BTreeMap<String, Arc<HostedTask>>,
    /// The session is up (a watch is running).
    pub connected: bool,
    /// etcd revision the view reflects.
    pub revision: i64,
}

/// A key's meaning, below the prefix.
enum Key<'a> {
    Namespace(&'a str),
    DefaultNamespace,
    TaskDefinition(&'a str),
    Revision(&'a str),
    Service(&'a str),
    Vip(&'a str),
    AliasId(&'a str),
    NamespaceId(&'a str),
    HostIndex(&'a str),
    Counter(&'a str),
    Task { host: &'a str, id: &'a str },
    Other,
}

fn parse_key(rel: &str) -> Key<'_> {
    if let Some(rest) = rel.strip_prefix("config/") {
        let Some((kind, name)) = rest.split_once('/') else {
            return Key::Other;
        };
        return match kind {
            "namespaces" => Key::Namespace(name),
            "settings" if name == "default_namespace" => Key::DefaultNamespace,
            "task_definitions" => Key::TaskDefinition(name),
            "task_definition_revisions" => Key::Revision(name),
            "services" => Key::Service(name),
            "vips" => Key::Vip(name),
            "alias_ids" => Key::AliasId(name),
            "namespace_ids" => Key::NamespaceId(name),
            "host_indexes" => Key::HostIndex(name),
            "counters" => Key::Counter(name),
            _ => Key::Other,
        };
    }
    if let Some(rest) = rel.strip_prefix("hosts/")
        && let Some((host, id)) = rest.split_once("/tasks/")
    {
        return Key::Task { host, id };
    }
    Key::Other
}

fn change_key(c: &Change) -> String {
    match c {
        Change::Namespace(n) => format!("config/namespaces/{n}"),
        Change::DefaultNamespace(_) => "config/settings/default_namespace".into(),
        Change::TaskDefinition(td) => format!("config/task_definitions/{}", td.family),
        Change::TaskDefinitionRevision(td) => format!(
            "config/task_definition_revisions/{}",
            super::state::revision_key(&td.family, td.revision)
        ),
        Change::Service(s) => format!("config/services/{}", s.spec.name),
        Change::Vip(k, _) => format!("config/vips/{k}"),
        Change::AliasId(k, _) => format!("config/alias_ids/{k}"),
        Change::NamespaceId(k, _) => format!("config/namespace_ids/{k}"),
        Change::HostIndex(k, _) => format!("config/host_indexes/{k}"),
        Change::Counter(k, _) => format!("config/counters/{k}"),
        Change::Remove(r) => {
            use super::state::Record;
            match r {
                Record::Namespace(n) => format!("config/namespaces/{n}"),
                Record::TaskDefinition(f) => format!("config/task_definitions/{f}"),
                Record::Service(s) => format!("config/services/{s}"),
                Record::Vip(k) => format!("config/vips/{k}"),
                Record::AliasId(k) => format!("config/alias_ids/{k}"),
            }
        }
    }
}

fn change_value(c: &Change) -> Vec<u8> {
    // Serializing our own plain records cannot fail.
    match c {
        Change::Namespace(n) | Change::DefaultNamespace(n) => serde_json::to_vec(n),
        Change::TaskDefinition(td) | Change::TaskDefinitionRevision(td) => serde_json::to_vec(td),
        Change::Service(s) => serde_json::to_vec(s),
        Change::Vip(_, v)
        | Change::AliasId(_, v)
        | Change::NamespaceId(_, v)
        | Change::HostIndex(_, v) => serde_json::to_vec(v),
        Change::Counter(_, v) => serde_json::to_vec(v),
        Change::Remove(_) => Ok(Vec::new()),
    }
    .unwrap_or_default()
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(value).map_err(|e| RegistryError::EtcdRecord {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl View {
    /// Take in one key's new value (`None`: deleted). `own` is this host's
    /// name: its tasks are the daemon's own business, not remote ones.
    fn absorb(&mut self, rel: &str, value: Option<&[u8]>, own: &str) -> Result<(), RegistryError> {
        let c = &mut self.config;
        match (parse_key(rel), value) {
            (Key::Namespace(n), Some(_)) => {
                c.namespaces.insert(n.to_string());
            }
            (Key::Namespace(n), None) => {
                c.namespaces.remove(n);
            }
            (Key::DefaultNamespace, Some(v)) => c.default_namespace = Some(decode(rel, v)?),
            (Key::DefaultNamespace, None) => c.default_namespace = None,
            (Key::TaskDefinition(f), Some(v)) => {
                c.task_definitions.insert(f.to_string(), decode(rel, v)?);
            }
            (Key::TaskDefinition(f), None) => {
                c.task_definitions.remove(f);
            }
            (Key::Revision(k), Some(v)) => {
                c.revisions.insert(k.to_string(), decode(rel, v)?);
            }
            (Key::Revision(k), None) => {
                c.revisions.remove(k);
            }
            (Key::Service(s), Some(v)) => {
                c.services.insert(s.to_string(), decode(rel, v)?);
            }
            (Key::Service(s), None) => {
                c.services.remove(s);
            }
            (Key::Vip(k), v) => set_id(&mut c.vips, rel, k, v)?,
            (Key::AliasId(k), v) => set_id(&mut c.alias_ids, rel, k, v)?,
            (Key::NamespaceId(k), v) => set_id(&mut c.ns_ids, rel, k, v)?,
            (Key::HostIndex(k), v) => set_id(&mut c.host_indexes, rel, k, v)?,
            (Key::Counter(k), v) => set_id(&mut c.counters, rel, k, v)?,
            (Key::Task { host, .. }, _) if host == own => {}
            (Key::Task { id, .. }, Some(v)) => {
                self.remote
                    .insert(id.to_string(), Arc::new(decode::<HostedTask>(rel, v)?));
            }
            (Key::Task { id, .. }, None) => {
                self.remote.remove(id);
            }
            (Key::Other, _) => {}
        }
        Ok(())
    }

    /// Replace everything with a snapshot.
    fn reset(&mut self, kvs: &[KeyValue], prefix: &str, own: &str, revision: i64) {
        self.config = ConfigState::default();
        self.remote.clear();
        for kv in kvs {
            let Some(rel) = rel_key(kv.key(), prefix) else {
                continue;
            };
            if let Err(e) = self.absorb(rel, Some(kv.value()), own) {
                warn!(error = %e, "skipping a registry record");
            }
        }
        self.revision = revision;
    }
}

fn set_id(
    map: &mut BTreeMap<String, u64>,
    rel: &str,
    k: &str,
    v: Option<&[u8]>,
) -> Result<(), RegistryError> {
    match v {
        Some(v) => {
            map.insert(k.to_string(), decode(rel, v)?);
        }
        None => {
            map.remove(k);
        }
    }
    Ok(())
}

/// `<prefix>/<rel>` -> `rel`.
/// An error that says nothing about the request, only that this member
/// could not be reached or dropped the connection: another member may
/// answer.
fn unreachable_member(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        // gRPC codes: 1 Cancelled, 2 Unknown (a connection reset mid-call),
        // 4 DeadlineExceeded, 14 Unavailable (no connection).
        E::GRpcStatus(s) => matches!(s.code() as i32, 1 | 2 | 4 | 14),
        _ => false,
    }
}

fn rel_key<'a>(key: &'a [u8], prefix: &str) -> Option<&'a str> {
    std::str::from_utf8(key)
        .ok()?
        .strip_prefix(prefix)?
        .strip_prefix('/')
}

/// A handle on the etcd registry, shared by the engine and the session.
pub struct Etcd {
    /// One client per endpoint, as etcd's own clients do it: a session
    /// (lease and watch) and every request go to one member, the one that
    /// answered last, and move to the next member as soon as one fails at
    /// the transport (a dead member is left in milliseconds, not after a
    /// balancer notices).
    clients: Vec<Client>,
    member_urls: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    endpoints: String,
    prefix: String,
    host: String,
    address: Ipv4Addr,
    ttl_s: i64,
    timeout: Duration,
    view: Arc<Mutex<View>>,
    /// This host's tasks as last published, by task id.
    local: Arc<Mutex<BTreeMap<String, HostedTask>>>,
    publish_tx: mpsc::UnboundedSender<String>,
    publish_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// Signalled whenever the view changes.
    pub changed: Arc<Notify>,
}

impl Etcd {
    /// A client for `[registry] endpoints` (it connects on first use).
    pub async fn new(cfg: &DaemonConfig, host: String) -> Result<Arc<Self>, RegistryError> {
        let endpoints = cfg.registry.endpoints.join(", ");
        let timeout = Duration::from_millis(cfg.registry.timeout_ms);
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout.min(Duration::from_secs(2)))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let mut clients = Vec::new();
        for ep in &cfg.registry.endpoints {
            clients.push(
                Client::connect([ep], Some(opts.clone()))
                    .await
                    .map_err(|e| RegistryError::Etcd {
                        endpoints: endpoints.clone(),
                        reason: format!("{ep}: {e}"),
                    })?,
            );
        }
        if clients.is_empty() {
            return Err(RegistryError::Etcd {
                endpoints,
                reason: "no endpoint in [registry] endpoints".into(),
            });
        }
        let (publish_tx, publish_rx) = mpsc::unbounded_channel();
        // Hosts start on different members (by their name), so a fleet's
        // sessions spread over the cluster rather than all on the first.
        let first = host.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) % clients.len() as u64;
        Ok(Arc::new(Self {
            clients,
            member_urls: cfg.registry.endpoints.clone(),
            current: std::sync::atomic::AtomicUsize::new(first as usize),
            endpoints,
            prefix: cfg.registry.prefix.clone(),
            host,
            address: cfg.host.address,
            ttl_s: cfg.registry.lease_ttl_s as i64,
            timeout,
            view: Arc::default(),
            local: Arc::default(),
            publish_tx,
            publish_rx: tokio::sync::Mutex::new(publish_rx),
            changed: Arc::default(),
        }))
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The endpoint of the member in use.
    pub fn member(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        self.member_urls.get(i).map_or("", String::as_str)
    }

    /// The member that answered last, and its client.
    fn client(&self) -> (usize, Client) {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Member `failed` did not answer: the next one is tried from now on
    /// (unless another caller moved on already).
    fn next_member(&self, failed: usize) {
        let next = (failed + 1) % self.clients.len();
        let _ = self.current.compare_exchange(
            failed,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// `f` on the current member; on a transport failure, on each other
    /// member in turn (a compare-and-swap retried elsewhere after an
    /// ambiguous failure finds the guard moved, and is planned again).
    async fn on_any<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for _ in 0..self.clients.len() {
            let (i, c) = self.client();
            match f(c).await {
                Err(e) if unreachable_member(&e) => {
                    self.next_member(i);
                    last = Some(e);
                }
                r => return r,
            }
        }
        Err(last.unwrap_or_else(|| {
            etcd_client::Error::InvalidArgs("no etcd endpoint configured".into())
        }))
    }

    fn err(&self, reason: impl ToString) -> RegistryError {
        RegistryError::Etcd {
            endpoints: self.endpoints.clone(),
            reason: reason.to_string(),
        }
    }

    fn no_answer(&self) -> RegistryError {
        self.err(format!(
            "no answer in {} ms. Check that etcd runs and that [registry] endpoints in the daemon's config point at it",
            self.timeout.as_millis()
        ))
    }

    /// Run `f` to completion from synchronous code on the runtime, within
    /// the request timeout.
    fn block<T>(
        &self,
        f: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let timeout = self.timeout;
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                match tokio::time::timeout(timeout, f).await {
                    Ok(r) => r,
                    Err(_) => Err(self.no_answer()),
                }
            })
        })
    }

    /// The view's lock (a poisoned lock still holds a usable view).
    pub fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read the shared state now: (state, revision of the guard key, 0 if none).
    async fn read_config(&self) -> Result<(ConfigState, i64), RegistryError> {
        let key = format!("{}/config/", self.prefix);
        let resp = self
            .on_any(|mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        let guard = format!("{}/config/revision", self.prefix);
        let mut view = View::default();
        let mut guard_rev = 0;
        for kv in resp.kvs() {
            if kv.key() == guard.as_bytes() {
                guard_rev = kv.mod_revision();
            }
            if let Some(rel) = rel_key(kv.key(), &self.prefix) {
                view.absorb(rel, Some(kv.value()), &self.host)?;
            }
        }
        Ok((view.config, guard_rev))
    }

    /// Write `changes` if nobody wrote since `guard_rev`; false if somebody did.
    async fn commit(&self, guard_rev: i64, changes: &[Change]) -> Result<bool, RegistryError> {
        let guard = format!("{}/config/revision", self.prefix);
        let cmp = if guard_rev == 0 {
            Compare::create_revision(guard.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(guard.clone(), CompareOp::Equal, guard_rev)
        };
        let mut ops: Vec<TxnOp> = changes
            .iter()
            .map(|c| {
                let key = format!("{}/{}", self.prefix, change_key(c));
                match c {
                    Change::Remove(_) => TxnOp::delete(key, None),
                    _ => TxnOp::put(key, change_value(c), None),
                }
            })
            .collect();
        if ops.len() + 1 > MAX_TXN_OPS {
            return Err(self.err(format!(
                "this change makes {} writes, more than one etcd transaction takes ({MAX_TXN_OPS}, etcd's --max-txn-ops): apply fewer services at once",
                ops.len() + 1
            )));
        }
        ops.push(TxnOp::put(guard, self.host.as_bytes(), None));
        let txn = Txn::new().when([cmp]).and_then(ops);
        let resp = self
            .on_any(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| self.err(e))?;
        if resp.succeeded() {
            // Seen at once here; the watch brings the same records again.
            let mut v = self.view();
            for ch in changes {
                let value = match ch {
                    Change::Remove(_) => None,
                    _ => Some(change_value(ch)),
                };
                let _ = v.absorb(&change_key(ch), value.as_deref(), &self.host);
            }
        }
        Ok(resp.succeeded())
    }

    /// Validate and apply with `plan` against the current shared state, as
    /// one compare-and-swap (retried if another host wrote in between).
    pub fn apply<E>(
        &self,
        plan: impl Fn(&ConfigState) -> Result<ApplyPlan, E>,
    ) -> Result<Result<ApplySummary, E>, RegistryError> {
        self.block(async {
            for _ in 0..MAX_CONFLICTS {
                let (mut state, rev) = self.read_config().await?;
                let p = match plan(&state) {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                let (summary, changes) = state.apply(&p)?;
                if self.commit(rev, &changes).await? {
                    return Ok(Ok(summary));
                }
            }
            Err(self.err("other hosts kept writing at the same time; try again"))
        })
    }

    /// Change the shared state with `f`, as one compare-and-swap (retried
    /// if another host wrote in between).
    pub fn mutate<T>(
        &self,
        f: impl Fn(&mut ConfigState) -> Result<(T, Vec<Change>), RegistryError>,
    ) -> Result<T, RegistryError> {
        self.block(async {
            for _ in 0..MAX_CONFLICTS {
                let (mut state, rev) = self.read_config().await?;
                let (out, changes) = f(&mut state)?;
                if changes.is_empty() || self.commit(rev, &changes).await? {
                    return Ok(out);
                }
            }
            Err(self.err("other hosts kept writing at the same time; try again"))
        })
    }

    /// This host's index in the fleet (handed out once, on first use).
    pub fn host_index(&self) -> Result<u32, RegistryError> {
        self.block(async {
            for _ in 0..MAX_CONFLICTS {
                let (mut state, rev) = self.read_config().await?;
                let (index, changes) = state.host_index(&self.host)?;
                if changes.is_empty() || self.commit(rev, &changes).await? {
                    return Ok(index);
                }
            }
            Err(self.err("other hosts kept writing at the same time; try again"))
        })
    }

    /// Publish (or update) one of this host's tasks. Never blocks: the
    /// session writes it, now or as soon as etcd answers again.
    pub fn publish(&self, task: &TaskRecord) {
        let hosted = HostedTask {
            host: self.host.clone(),
            address: self.address,
            task: task.clone(),
        };
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.id.clone(), hosted);
        let _ = self.publish_tx.send(task.id.clone());
    }

    /// Withdraw one of this host's tasks.
    pub fn withdraw(&self, task_id: &str) {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(task_id);
        let _ = self.publish_tx.send(task_id.to_string());
    }

    fn task_key(&self, id: &str) -> String {
        format!("{}/hosts/{}/tasks/{id}", self.prefix, self.host)
    }

    /// The value at `<prefix>/<rel>` (TLS data: outside the view).
    pub async fn get_rel(&self, rel: &str) -> Result<Option<Vec<u8>>, RegistryError> {
        let key = format!("{}/{rel}", self.prefix);
        let r = tokio::time::timeout(
            self.timeout,
            self.on_any(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            }),
        )
        .await
        .map_err(|_| self.no_answer())?
        .map_err(|e| self.err(e))?;
        Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Put `value` at `<prefix>/<rel>` (TLS data: outside the view).
    pub async fn put_rel(&self, rel: &str, value: Vec<u8>) -> Result<(), RegistryError> {
        let key = format!("{}/{rel}", self.prefix);
        tokio::time::timeout(
            self.timeout,
            self.on_any(|mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            }),
        )
        .await
        .map_err(|_| self.no_answer())?
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Load a first view, within the request timeout.
    pub async fn initial_sync(&self) -> Result<(), RegistryError> {
        let key = format!("{}/", self.prefix);
        let get = self.on_any(|mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
        });
        let resp = match tokio::time::timeout(self.timeout, get).await {
            Ok(r) => r.map_err(|e| self.err(e))?,
            Err(_) => return Err(self.no_answer()),
        };
        let rev = resp.header().map_or(0, |h| h.revision());
        self.view().reset(resp.kvs(), &self.prefix, &self.host, rev);
        Ok(())
    }

    /// Keep the session up for as long as the daemon runs.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        // Sessions that failed in a row: every member is tried at once
        // before the backoff starts.
        let mut failed = 0;
        loop {
            let began = Instant::now();
            let (member, c) = self.client();
            if let Err(e) = self.session(c).await {
                // The next session starts on the next member.
                self.next_member(member);
                let was = std::mem::replace(&mut self.view().connected, false);
                if was && self.clients.len() == 1 {
                    warn!(error = %e, "lost etcd; serving the last known view until it is back");
                } else if was {
                    warn!(error = %e, "lost etcd member; trying the next one (serving the last known view meanwhile)");
                }
            }
            if began.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
                failed = 0;
            }
            failed += 1;
            if failed < self.clients.len() {
                continue;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn session(&self, mut c: Client) -> Result<(), RegistryError> {
        let e = |e: etcd_client::Error| self.err(e);
        let lease = c.lease_grant(self.ttl_s, None).await.map_err(e)?.id();
        let (mut keeper, mut acks) = c.lease_keep_alive(lease).await.map_err(e)?;
        let mut publish = self.publish_rx.lock().await;
        // Everything local is written below; earlier signals are covered.
        while publish.try_recv().is_ok() {}
        let local = self.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let snap = c
            .get(
                format!("{}/", self.prefix),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(e)?;
        let rev = snap.header().map_or(0, |h| h.revision());
        let mine = format!("{}/hosts/{}/tasks/", self.prefix, self.host);
        for kv in snap.kvs() {
            if let Some(id) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(&mine))
                && !local.contains_key(id)
            {
                c.delete(kv.key(), None).await.map_err(e)?;
            }
        }
        for t in local.values() {
            let value = serde_json::to_vec(t).unwrap_or_default();
            c.put(
                self.task_key(&t.task.id),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(e)?;
        }
        {
            let mut v = self.view();
            v.reset(snap.kvs(), &self.prefix, &self.host, rev);
            v.connected = true;
        }
        self.changed.notify_one();
        info!(
            revision = rev,
            lease,
            tasks = local.len(),
            "etcd session up"
        );
        let mut watch = c
            .watch(
                format!("{}/", self.prefix),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
            .map_err(e)?;
        let ttl = Duration::from_secs(self.ttl_s as u64);
        let mut tick = tokio::time::interval(ttl / 3);
        let mut last_ack = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if last_ack.elapsed() > ttl {
                        return Err(self.err("the lease was not renewed in time"));
                    }
                    keeper.keep_alive().await.map_err(e)?;
                }
                ack = acks.message() => match ack.map_err(e)? {
                    Some(r) if r.ttl() > 0 => last_ack = Instant::now(),
                    Some(_) => return Err(self.err("this host's lease expired")),
                    None => return Err(self.err("the lease stream closed")),
                },
                msg = watch.message() => {
                    let Some(resp) = msg.map_err(e)? else {
                        return Err(self.err("the watch stream closed"));
                    };
                    if resp.canceled() {
                        return Err(self.err("the watch was cancelled (history compacted?)"));
                    }
                    if resp.events().is_empty() {
                        continue;
                    }
                    {
                        let mut v = self.view();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let Some(rel) = rel_key(kv.key(), &self.prefix) else { continue };
                            let value = match ev.event_type() {
                                EventType::Put => Some(kv.value()),
                                EventType::Delete => None,
                            };
                            if let Err(err) = v.absorb(rel, value, &self.host) {
                                warn!(error = %err, "skipping a registry record");
                            }
                        }
                        if let Some(h) = resp.header() {
                            v.revision = h.revision();
                        }
                    }
                    self.changed.notify_one();
                }
                id = publish.recv() => {
                    let Some(id) = id else { return Ok(()) };
                    let t = self.local.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                    match t {
                        Some(t) => {
                            let value = serde_json::to_vec(&t).unwrap_or_default();
                            c.put(self.task_key(&id), value, Some(PutOptions::new().with_lease(lease)))
                                .await
                                .map_err(e)?;
                        }
                        None => {
                            c.delete(self.task_key(&id), None).await.map_err(e)?;
                        }
                    }
                }
            }
        }
    }
}
