//! What an engine operation that the CLI asked for can fail with, typed;
//! the control socket turns it into the wire's answer (exit code 2 for
//! input the user can fix, 1 for everything else).
use thiserror::Error;

use crate::{control::Response, registry::RegistryError};

#[derive(Debug, Error)]
pub enum EngineError {
    /// The request cannot be served as asked: an unknown service or task,
    /// nothing to drain, a port the task definition cannot have.
    #[error("{0}")]
    BadInput(String),
    /// Files that do not validate: every error, with file, JSON path and fix.
    #[error(transparent)]
    Invalid(#[from] proxy_config::ApplyErrors),
    /// The registry (store or etcd) failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Anything else (the datapath, the system), with what was being done.
    #[error("{0}")]
    Failed(String),
}

impl From<EngineError> for Response {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::BadInput(_)
            | EngineError::Invalid(_)
            | EngineError::Registry(RegistryError::BadInput(_)) => {
                Response::bad_input(e.to_string())
            }
            EngineError::Registry(_) | EngineError::Failed(_) => Response::failure(e.to_string()),
        }
    }
}

/// The answer to a request whose result is `r`.
pub fn respond<T: serde::Serialize>(r: Result<T, EngineError>) -> Response {
    match r {
        Ok(v) => Response::ok(&v),
        Err(e) => e.into(),
    }
}
