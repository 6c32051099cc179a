//! The namespace registry: namespaces, task definitions, services with their
//! client aliases (VIP and kernel id each), and the tasks of this host.
//!
//! Today's backend is the embedded crash-safe store ([`embedded::Store`], redb
//! in `state_dir`); every change is one ACID transaction, so an apply is
//! either all there or not at all.
pub mod embedded;
mod model;

pub use embedded::Store;
pub use model::{AliasRecord, ServiceRecord, TaskPort, TaskRecord};
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
    #[error("state store: {0}")]
    Db(#[from] Box<redb::Error>),
    #[error("state store record {key}: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("the VIP range 127.255.0.0/16 is full")]
    VipsExhausted,
    #[error("too many client aliases on this host (at most {0})")]
    AliasIdsExhausted(u32),
}
