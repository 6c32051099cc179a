//! The namespace registry: namespaces, task definitions, services with their
//! client aliases (VIP and kernel id each), and the tasks of this host.
//!
//! Two backends hold the shared part (namespaces, task definitions,
//! services, ids): the embedded crash-safe store ([`embedded::Store`], redb
//! in `state_dir`, one host) and etcd ([`etcd::Etcd`], a fleet). Either
//! way every change is one transaction, computed by [`state::ConfigState`],
//! so an apply is all there or not at all. This host's own tasks are always
//! kept in the embedded store; with etcd they are also published under the
//! host's lease for every other host to route to.
pub mod daemon;
pub mod embedded;
pub mod etcd;
pub mod model;
pub mod state;

pub use daemon::{Registry, describe};
pub use embedded::Store;
pub use model::{AliasRecord, HostedTask, ServiceRecord, TaskPort, TaskRecord};
pub use state::ConfigState;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error(
        "the state store {path} cannot be opened: {source}. If it is damaged, move it aside (knit will start with an empty registry and you will need to re-apply your files)"
    )]
    Open {
        path: String,
        source: Box<redb::Error>,
    },
    #[error(
        "the state store {path} is damaged ({detail}). knit will not start on it and will not reset it: restore it from a backup, or move it aside to start with an empty registry and re-apply your files"
    )]
    Damaged { path: String, detail: String },
    #[error(
        "the state store's disk is full ({dir}): nothing was changed. Free space there and try again"
    )]
    DiskFull { dir: String },
    #[error("the state store was handed over to a new daemon")]
    Closed,
    #[error("state store: {0}")]
    Db(#[from] Box<redb::Error>),
    #[error("state store record {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("etcd at {endpoints}: {reason}")]
    Etcd { endpoints: String, reason: String },
    #[error("etcd record {key}: {reason}")]
    EtcdRecord { key: String, reason: String },
    #[error("the VIP range 127.255.0.0/16 is full")]
    VipsExhausted,
    #[error("too many hosts in one fleet (at most {0})")]
    HostsExhausted(u64),
    #[error("too many client aliases on this host (at most {0})")]
    AliasIdsExhausted(u32),
    /// An apply that names something the registry does not hold (a
    /// revision never registered): the user's to fix.
    #[error("{0}")]
    BadInput(String),
}
