//! Errors a user can act on: each names the file, where in it (a JSON path
//! or a TOML key and line), what is wrong and how to fix it.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One problem in the files given to `knit apply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{file} at {path}: {message}\n  fix: {fix}")]
pub struct ApplyError {
    /// The file name as given to `plan`.
    pub file: String,
    /// A JSON path such as `$.serviceConnectConfiguration.services[0].portName`,
    /// `$[1].family` inside an array, or `$` for the whole document.
    pub path: String,
    /// What is wrong.
    pub message: String,
    /// A concrete change that makes it right.
    pub fix: String,
}

/// Every problem found in one apply, sorted by file, then in the order found.
/// `plan` returns this whenever it is not empty, and nothing else.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyErrors(pub Vec<ApplyError>);

impl ApplyErrors {
    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there is no problem (never the case for a returned error).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The problems, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, ApplyError> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a ApplyErrors {
    type Item = &'a ApplyError;
    type IntoIter = std::slice::Iter<'a, ApplyError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ApplyErrors {
    /// One block per error, separated by newlines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApplyErrors {}

/// `file` or `file:line`.
fn location(path: &std::path::Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

/// "key `a.b`: ", or nothing for the whole file.
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

/// A problem with the daemon's configuration file (knit.toml).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (or is missing when it must exist).
    #[error("{}: cannot read: {source}\n  fix: {fix}", path.display())]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
        /// What to do about it.
        fix: String,
    },
    /// The file was read but a key is wrong.
    #[error("{}: {}{message}\n  fix: {fix}", location(path, *line), key_prefix(key))]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the offending key, when known.
        line: Option<usize>,
        /// Dotted key such as `outlier.max_ejection_percent` (empty for the
        /// whole file).
        key: String,
        /// What is wrong.
        message: String,
        /// A concrete change that makes it right.
        fix: String,
    },
}
