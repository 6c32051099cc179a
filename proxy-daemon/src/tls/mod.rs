//! Mutual TLS between hosts: service identities, the signer's CA, and the
//! rustls settings both ends of a cross-host hop use.
//!
//! An identity is an X.509 certificate whose only subject alternative
//! name is the URI `spiffe://<trust domain>/ns/<namespace>/svc/<service>`,
//! for an ECDSA P-256 key made on the host that uses it and held only in
//! its memory. `knit signer` holds the CA key and issues certificates for
//! the services a host runs (see [`signer`]); the daemon asks for and
//! renews its identities (see [`agent`]). TLS 1.3 only, with ECS Service
//! Connect's three suites (AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305).
pub mod agent;
pub mod ca;
pub mod hostkey;
pub mod signer;
mod verify;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};

pub use verify::{Cause, cause_of};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}\n  fix: {fix}")]
    File {
        path: String,
        reason: String,
        fix: String,
    },
    #[error("the certificate request is refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Crypto(String),
}

impl TlsError {
    fn crypto(e: impl std::fmt::Display) -> Self {
        TlsError::Crypto(e.to_string())
    }
}

/// The identity of service `service` of namespace `namespace`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/svc/{service}")
}

/// (namespace, service) named by `id` in `trust_domain`, if it is one.
pub fn parse_spiffe_id<'a>(trust_domain: &str, id: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = id
        .strip_prefix("spiffe://")?
        .strip_prefix(trust_domain)?
        .strip_prefix("/ns/")?;
    let (ns, svc) = rest.split_once("/svc/")?;
    (!ns.is_empty() && !svc.is_empty() && !svc.contains('/')).then_some((ns, svc))
}

/// The crypto every knit TLS connection uses: ring, with TLS 1.3's three
/// suites (ECS Service Connect's). ring rather than aws-lc-rs: it builds
/// with nothing but a C compiler (aws-lc wants cmake and more on a fresh
/// machine); what it lacks is post-quantum key exchange.
#[expect(
    deprecated,
    reason = "ring's provider lacks post-quantum key exchange; see above"
)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring as r;
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            r::cipher_suite::TLS13_AES_128_GCM_SHA256,
            r::cipher_suite::TLS13_AES_256_GCM_SHA384,
            r::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        // X25519 first: ring's P-384 (rustls' first choice) costs ~1.5 ms
        // of CPU per handshake here, X25519 a few dozen µs; P-256 and
        // P-384 stay for peers without X25519.
        kx_groups: vec![
            r::kx_group::X25519,
            r::kx_group::SECP256R1,
            r::kx_group::SECP384R1,
        ],
        ..r::default_provider()
    })
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect()
}

/// A DER certificate's validity (not before, not after).
pub fn validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let t = |s: i64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(s).ok()?));
    let v = cert.validity();
    Some((t(v.not_before.timestamp())?, t(v.not_after.timestamp())?))
}

/// PEM certificates -> DER.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::crypto)
}

/// DER certificates -> PEM.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs
        .iter()
        .map(|c| pem_block("CERTIFICATE", c.as_ref()))
        .collect()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// What etcd holds for one certificate request: the CSR (PEM), signed
/// with the asking host's key ([`hostkey`]). Public.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRequest {
    pub csr: String,
    /// When it was made (ms since the epoch).
    pub at_unix_ms: u64,
    /// The host's public key (base64 of the SEC1 point).
    #[serde(default)]
    pub host_key: String,
    /// ECDSA P-256 SHA-256 (base64, ASN.1) over [`hostkey::message`].
    #[serde(default)]
    pub signature: String,
}

/// What etcd holds for an issued certificate: the chain (PEM, leaf
/// first, without the root) and, when refused, why. Public.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertIssued {
    /// The request it answers (its `at_unix_ms`).
    pub request_at_unix_ms: u64,
    #[serde(default)]
    pub chain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// One service's identity on this host.
pub struct Identity {
    pub id: Arc<str>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Presented by this host's ingress listeners of the service.
    pub server: Arc<ServerConfig>,
    /// Presented when this host's tasks of the service call other hosts.
    pub client: Arc<ClientConfig>,
    /// What the configs were made from (again with a new trust bundle).
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// Made from a signed chain and the key it was issued for, to be
    /// verified against `roots`.
    pub fn new(
        id: String,
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        roots: Arc<RootCertStore>,
    ) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Crypto("an empty certificate chain".into()))?;
        let (not_before, not_after) = validity(leaf)
            .ok_or_else(|| TlsError::Crypto("the certificate does not parse".into()))?;
        if uri_sans(leaf) != [id.clone()] {
            return Err(TlsError::Crypto(format!(
                "the certificate names {:?}, not {id}",
                uri_sans(leaf)
            )));
        }
        let key_der = || PrivateKeyDer::Pkcs8(key.clone_key());
        let provider = provider();
        let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(TlsError::crypto)?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::crypto)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key_der())
            .map_err(TlsError::crypto)?;
        // No session tickets (knit's daemons do not resume; and a ticket
        // after the handshake would be one more record kTLS must hand up),
        // and the traffic secrets may go to the kernel (kTLS).
        server.send_tls13_tickets = 0;
        server.enable_secret_extraction = true;
        let mut client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TlsError::crypto)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verify::ChainOnly::new(roots, &provider)))
            .with_client_auth_cert(chain.clone(), key_der())
            .map_err(TlsError::crypto)?;
        client.enable_sni = false;
        client.enable_secret_extraction = true;
        Ok(Self {
            id: id.into(),
            not_before,
            not_after,
            server: Arc::new(server),
            client: Arc::new(client),
            chain,
            key,
        })
    }

    /// The same certificate, checked against another trust bundle.
    pub fn with_roots(&self, roots: Arc<RootCertStore>) -> Result<Self, TlsError> {
        Self::new(
            self.id.to_string(),
            self.chain.clone(),
            self.key.clone_key(),
            roots,
        )
    }
}

/// (namespace, service).
pub type ServiceKey = (String, String);

/// This host's identities and the fleet's trust bundle. The agent keeps
/// them; the proxy reads them per connection.
pub struct Identities {
    pub trust_domain: String,
    by_service: ArcSwap<BTreeMap<ServiceKey, Arc<Identity>>>,
    roots: ArcSwap<Option<Arc<RootCertStore>>>,
    /// The bundle's PEM (to notice a change).
    bundle_pem: Mutex<String>,
    /// The services that should have an identity here (those with a task
    /// on this host), set by the engine.
    wanted: Mutex<std::collections::BTreeSet<ServiceKey>>,
    pub wanted_changed: tokio::sync::Notify,
    /// Signalled when an identity is installed.
    pub installed: tokio::sync::Notify,
}

impl Identities {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            by_service: ArcSwap::default(),
            roots: ArcSwap::default(),
            bundle_pem: Mutex::default(),
            wanted: Mutex::default(),
            wanted_changed: tokio::sync::Notify::new(),
            installed: tokio::sync::Notify::new(),
        }
    }

    pub fn id_of(&self, namespace: &str, service: &str) -> String {
        spiffe_id(&self.trust_domain, namespace, service)
    }

    /// The identity of `service` of `namespace`, if this host has one.
    pub fn get(&self, namespace: &str, service: &str) -> Option<Arc<Identity>> {
        self.by_service
            .load()
            .get(&(namespace.to_owned(), service.to_owned()))
            .cloned()
    }

    /// Every identity, for `knit status`.
    pub fn all(&self) -> Arc<BTreeMap<ServiceKey, Arc<Identity>>> {
        self.by_service.load_full()
    }

    pub fn install(&self, key: ServiceKey, identity: Identity) {
        let identity = Arc::new(identity);
        self.by_service.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.insert(key.clone(), identity.clone());
            m
        });
        self.installed.notify_waiters();
    }

    /// Drop the identities not in `keep`.
    pub fn retain(&self, keep: &std::collections::BTreeSet<ServiceKey>) {
        self.by_service.rcu(|m| {
            let mut m = BTreeMap::clone(m);
            m.retain(|k, _| keep.contains(k));
            m
        });
    }

    /// The trust bundle, once the signer published one.
    pub fn roots(&self) -> Option<Arc<RootCertStore>> {
        self.roots.load().as_ref().clone()
    }

    pub fn bundle_pem(&self) -> String {
        self.bundle_pem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A new bundle (PEM): true when it differs from the one held.
    pub fn set_bundle(&self, pem: &str) -> Result<bool, TlsError> {
        let mut held = self.bundle_pem.lock().unwrap_or_else(|p| p.into_inner());
        if *held == pem {
            return Ok(false);
        }
        let mut store = RootCertStore::empty();
        for c in certs_from_pem(pem)? {
            store.add(c).map_err(TlsError::crypto)?;
        }
        if store.is_empty() {
            return Err(TlsError::Crypto(
                "the trust bundle holds no certificate".into(),
            ));
        }
        self.roots.store(Arc::new(Some(Arc::new(store))));
        *held = pem.to_owned();
        Ok(true)
    }

    pub fn set_wanted(&self, wanted: std::collections::BTreeSet<ServiceKey>) {
        let mut w = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
        if *w != wanted {
            *w = wanted;
            self.wanted_changed.notify_waiters();
        }
    }

    pub fn wanted(&self) -> std::collections::BTreeSet<ServiceKey> {
        self.wanted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The identity of `service`, waiting up to `wait` for it (a task that
    /// just started calls before its identity is issued).
    pub async fn wait_for(
        &self,
        namespace: &str,
        service: &str,
        wait: Duration,
    ) -> Option<Arc<Identity>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let n = self.installed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if let Some(i) = self.get(namespace, service) {
                return Some(i);
            }
            if tokio::time::timeout_at(deadline, n).await.is_err() {
                return None;
            }
        }
    }
}

/// What `knit status` shows of `ids`.
pub fn status(ids: &Identities) -> crate::control::TlsStatus {
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let roots = certs_from_pem(&ids.bundle_pem())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| {
            let (_, cert) = x509_parser::parse_x509_certificate(c).ok()?;
            let (_, to) = validity(c)?;
            Some(crate::control::CertStatus {
                name: cert.subject().to_string(),
                expires_unix: secs(to),
            })
        })
        .collect();
    let all = ids.all();
    let identities = all
        .values()
        .map(|i| crate::control::CertStatus {
            name: i.id.to_string(),
            expires_unix: secs(i.not_after),
        })
        .collect();
    let pending = ids
        .wanted()
        .into_iter()
        .filter(|k| !all.contains_key(k))
        .map(|(ns, svc)| ids.id_of(&ns, &svc))
        .collect();
    crate::control::TlsStatus {
        trust_domain: ids.trust_domain.clone(),
        roots,
        identities,
        pending,
    }
}

#[cfg(test)]
mod tests;
