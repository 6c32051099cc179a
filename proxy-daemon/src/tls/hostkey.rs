//! Host keys: each daemon signs its certificate requests with a P-256 key
//! of its host, made once and kept in its state directory (mode 0600). The
//! signer pins the first key it sees for each host name (trust on first
//! use, in a file of its own, never in etcd) and refuses a request signed
//! with any other key: whoever can write to etcd cannot ask for an identity
//! in the name of a host the signer already knows.
use std::{
    collections::BTreeMap,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ring::{
    rand::SystemRandom,
    signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
        UnparsedPublicKey,
    },
};
use serde::{Deserialize, Serialize};

use super::{CertRequest, TlsError};

/// What a request's signature covers: who asks, for what, when, and the
/// CSR itself (a request copied to another host's key or service fails).
pub fn message(host: &str, ns: &str, svc: &str, at_unix_ms: u64, csr: &str) -> Vec<u8> {
    format!("knit certificate request v1\n{host}\n{ns}\n{svc}\n{at_unix_ms}\n{csr}").into_bytes()
}

/// A host's signing key.
pub struct HostKey {
    pair: EcdsaKeyPair,
}

impl HostKey {
    /// The key in `path` (PKCS#8 PEM), made there first if there is none.
    pub fn load_or_create(path: &Path) -> Result<Self, TlsError> {
        let file_err = |reason: String| TlsError::File {
            path: path.display().to_string(),
            reason,
            fix: "the daemon keeps its host key there (state_dir/tls/host.key, mode 0600); \
                  make the directory writable by it, or remove a damaged key (the signer then \
                  refuses this host until its old pin is removed)"
                .into(),
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => Self::from_pem(&pem).map_err(|e| file_err(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_ASN1_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| file_err("could not make a P-256 key".into()))?;
                let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| file_err(e.to_string()))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| file_err(e.to_string()))?;
                f.write_all(pem.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| file_err(e.to_string()))?;
                Self::from_pem(&pem).map_err(|e| file_err(e.to_string()))
            }
            Err(e) => Err(file_err(e.to_string())),
        }
    }

    /// A key from its PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        let p = pem::parse(pem).map_err(TlsError::crypto)?;
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            p.contents(),
            &SystemRandom::new(),
        )
        .map_err(|e| TlsError::Crypto(format!("not a P-256 PKCS#8 key: {e}")))?;
        Ok(Self { pair })
    }

    /// The public key, as requests carry it (base64 of the SEC1 point).
    pub fn public(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    /// `req` signed for (`host`, `ns`, `svc`).
    pub fn sign(&self, req: &mut CertRequest, host: &str, ns: &str, svc: &str) {
        let msg = message(host, ns, svc, req.at_unix_ms, &req.csr);
        req.host_key = self.public();
        req.signature = self
            .pair
            .sign(&SystemRandom::new(), &msg)
            .map(|s| B64.encode(s.as_ref()))
            .unwrap_or_default();
    }
}

/// Whether `req` is signed by the key it carries, for (`host`, `ns`, `svc`).
pub fn verify(req: &CertRequest, host: &str, ns: &str, svc: &str) -> Result<(), String> {
    if req.host_key.is_empty() || req.signature.is_empty() {
        return Err(
            "the request is not signed with a host key (a daemon before host keys: \
                    upgrade it)"
                .into(),
        );
    }
    let key = B64
        .decode(&req.host_key)
        .map_err(|e| format!("its host key is not base64: {e}"))?;
    let sig = B64
        .decode(&req.signature)
        .map_err(|e| format!("its signature is not base64: {e}"))?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key)
        .verify(&message(host, ns, svc, req.at_unix_ms, &req.csr), &sig)
        .map_err(|_| "its signature does not verify with the host key it carries".to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Pin {
    /// base64 of the host's public key.
    key: String,
    pinned_unix_ms: u64,
}

/// The signer's host keys: the first key each host name signed with.
pub struct Pins {
    path: PathBuf,
    pins: BTreeMap<String, Pin>,
}

impl Pins {
    /// The pins in `path` (JSON; none when it does not exist yet).
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let pins = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| TlsError::File {
                path: path.display().to_string(),
                reason: format!("not the signer's host keys: {e}"),
                fix: "give --host-keys the file this signer keeps (a JSON object of host name \
                      -> key), or a new path to start over (every host is pinned again)"
                    .into(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(TlsError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                    fix: "make the signer's host keys file readable by it".into(),
                });
            }
        };
        Ok(Self {
            path: path.to_owned(),
            pins,
        })
    }

    pub fn len(&self) -> usize {
        self.pins.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pins.is_empty()
    }

    /// Whether `key` is `host`'s: its pin, or the first key seen for it
    /// (pinned now; `Ok(true)`). Another key is refused, with the fix.
    pub fn check(&mut self, host: &str, key: &str, now_unix_ms: u64) -> Result<bool, String> {
        match self.pins.get(host) {
            Some(p) if p.key == key => Ok(false),
            Some(p) => Err(format!(
                "host {host:?} signed with a key other than the one pinned for it at \
                 {} ms since the epoch (a host reinstalled, or someone asking in its name); \
                 if {host:?} was reinstalled, remove its entry from {} and restart the signer",
                p.pinned_unix_ms,
                self.path.display()
            )),
            None => {
                self.pins.insert(
                    host.to_owned(),
                    Pin {
                        key: key.to_owned(),
                        pinned_unix_ms: now_unix_ms,
                    },
                );
                self.save().map_err(|e| {
                    self.pins.remove(host);
                    format!("could not record the host's key: {e}")
                })?;
                Ok(true)
            }
        }
    }

    /// Write the pins (a temporary file renamed over the old one).
    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&self.pins).map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(at: u64) -> CertRequest {
        CertRequest {
            csr: "CSR".into(),
            at_unix_ms: at,
            host_key: String::new(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_signed_request_verifies_only_for_what_it_names() -> Result<(), TlsError> {
        let dir = tempfile::tempdir().map_err(TlsError::crypto)?;
        let path = dir.path().join("tls/host.key");
        let key = HostKey::load_or_create(&path)?;
        // Made once, then the same key.
        assert_eq!(HostKey::load_or_create(&path)?.public(), key.public());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path)
                .map_err(TlsError::crypto)?
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let mut req = request(7);
        key.sign(&mut req, "h1", "default", "web");
        assert_eq!(verify(&req, "h1", "default", "web"), Ok(()));
        assert!(verify(&req, "h2", "default", "web").is_err());
        assert!(verify(&req, "h1", "default", "db").is_err());
        let mut later = req.clone();
        later.at_unix_ms = 8;
        assert!(verify(&later, "h1", "default", "web").is_err());
        assert!(
            verify(&request(7), "h1", "default", "web").is_err_and(|e| e.contains("not signed"))
        );
        Ok(())
    }

    #[test]
    fn the_first_key_of_a_host_is_pinned_and_kept() -> Result<(), TlsError> {
        let dir = tempfile::tempdir().map_err(TlsError::crypto)?;
        let path = dir.path().join("pins.json");
        let mut pins = Pins::load(&path)?;
        assert_eq!(pins.check("h1", "K1", 1), Ok(true));
        assert_eq!(pins.check("h1", "K1", 2), Ok(false));
        assert!(
            pins.check("h1", "K2", 3)
                .is_err_and(|e| e.contains("pinned"))
        );
        assert_eq!(pins.check("h2", "K2", 4), Ok(true));
        // Kept across restarts.
        let mut again = Pins::load(&path)?;
        assert_eq!(again.len(), 2);
        assert!(again.check("h1", "K2", 5).is_err());
        std::fs::write(&path, "nope").map_err(TlsError::crypto)?;
        assert!(Pins::load(&path).is_err());
        Ok(())
    }
}
