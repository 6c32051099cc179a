//! The signer's CA: a certificate and its key, from files the operator
//! gives `knit signer` (a root made by `knit ca create`, or an
//! intermediate of their own under an offline root), and the issuing of
//! service certificates from requests.
use std::{path::Path, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;

use super::{TlsError, certs_from_pem, certs_to_pem};

/// How long before "now" an issued certificate starts being valid (clocks
/// of hosts differ a little).
const BACKDATE: Duration = Duration::from_secs(60);

fn file_err(path: &Path, reason: impl std::fmt::Display, fix: &str) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
        fix: fix.to_owned(),
    }
}

/// A new self-signed root CA (ECDSA P-256), valid `days`: (certificate
/// PEM, key PEM).
pub fn create(common_name: &str, days: u32) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(TlsError::crypto)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "knit");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - BACKDATE;
    p.not_after = now + time::Duration::days(i64::from(days));
    let cert = p.self_signed(&key).map_err(TlsError::crypto)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA `knit signer` issues with.
pub struct Ca {
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// Certificates sent after the leaf: the signing certificate and those
    /// above it, except self-signed roots (peers hold those).
    chain: Vec<CertificateDer<'static>>,
    /// The roots found in the CA file: what the trust bundle holds.
    pub roots: Vec<CertificateDer<'static>>,
}

fn self_signed(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, c)| c.subject() == c.issuer())
}

impl Ca {
    /// The CA in `cert_path` (PEM: the signing certificate first, then
    /// any above it up to the root) with its key in `key_path` (PEM).
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        const CERT_FIX: &str = "give --ca-cert the PEM certificate of the CA (from `knit ca create`, \
            or your intermediate followed by the certificates above it)";
        const KEY_FIX: &str = "give --ca-key the CA's private key (PEM, PKCS#8, ECDSA P-256/P-384, \
            RSA or Ed25519), readable only by the signer's user";
        let pem =
            std::fs::read_to_string(cert_path).map_err(|e| file_err(cert_path, e, CERT_FIX))?;
        let certs = certs_from_pem(&pem).map_err(|e| file_err(cert_path, e, CERT_FIX))?;
        let Some(signing) = certs.first() else {
            return Err(file_err(cert_path, "holds no certificate", CERT_FIX));
        };
        let params = CertificateParams::from_ca_cert_der(signing)
            .map_err(|e| file_err(cert_path, e, CERT_FIX))?;
        if !matches!(params.is_ca, IsCa::Ca(_)) {
            return Err(file_err(
                cert_path,
                "its first certificate is not a CA (basicConstraints CA:FALSE or absent)",
                CERT_FIX,
            ));
        }
        let key_pem =
            std::fs::read_to_string(key_path).map_err(|e| file_err(key_path, e, KEY_FIX))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| file_err(key_path, e, KEY_FIX))?;
        // The key must be the certificate's.
        let spki = x509_parser::parse_x509_certificate(signing)
            .map(|(_, c)| c.public_key().raw.to_vec())
            .map_err(|e| file_err(cert_path, e, CERT_FIX))?;
        if spki != key.public_key_der() {
            return Err(file_err(
                key_path,
                format!(
                    "is not the key of the certificate in {}",
                    cert_path.display()
                ),
                KEY_FIX,
            ));
        }
        // An issuer object with the CA's name and key: what rcgen signs
        // with (the certificate sent is the operator's own).
        let issuer = params.self_signed(&key).map_err(TlsError::crypto)?;
        let (roots, chain): (Vec<_>, Vec<_>) = certs.into_iter().partition(|c| self_signed(c));
        if roots.is_empty() {
            return Err(file_err(
                cert_path,
                "holds no root (self-signed) certificate: peers could not check the chain",
                "append the root certificate above your intermediate to the --ca-cert file",
            ));
        }
        Ok(Self {
            issuer,
            key,
            chain,
            roots,
        })
    }

    /// The trust bundle (PEM): this CA's roots, plus `extra` (a root
    /// rollover publishes old and new roots at once).
    pub fn bundle(&self, extra: &[CertificateDer<'static>]) -> String {
        let mut all = self.roots.clone();
        for c in extra {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
        certs_to_pem(&all)
    }

    /// Issue a certificate for `csr_pem` (its signature checked) naming
    /// exactly `id`, valid for `ttl`: the chain (PEM, leaf first). Whatever
    /// else the request asks for is ignored: the certificate carries only
    /// the URI SAN, digital signature, and client and server auth.
    pub fn sign(&self, csr_pem: &str, id: &str, ttl: Duration) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::Refused(format!("the request does not parse or verify: {e}")))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [id.to_owned()] {
            return Err(TlsError::Refused(format!(
                "it asks for {asked:?}, and this host may have {id:?} only"
            )));
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names =
            vec![SanType::URI(id.try_into().map_err(|e| {
                TlsError::Refused(format!("{id:?} is not a URI: {e}"))
            })?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - BACKDATE;
        p.not_after = now + ttl;
        let leaf = p
            .signed_by(&csr.public_key, &self.issuer, &self.key)
            .map_err(TlsError::crypto)?;
        let mut chain = vec![leaf.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(certs_to_pem(&chain))
    }

    /// A certificate for `id` with a new key, signed by this CA with any
    /// validity (`knit ca issue`: for a peer outside knit, or an expired
    /// one to test refusals): (chain PEM, key).
    pub fn issue(
        &self,
        id: &str,
        not_before: time::OffsetDateTime,
        not_after: time::OffsetDateTime,
    ) -> Result<(String, KeyPair), TlsError> {
        let key = KeyPair::generate().map_err(TlsError::crypto)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::crypto)?;
        p.subject_alt_names = vec![SanType::URI(id.try_into().map_err(TlsError::crypto)?)];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.not_before = not_before;
        p.not_after = not_after;
        let leaf = p
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(TlsError::crypto)?;
        Ok((certs_to_pem(&[leaf.der().clone()]), key))
    }
}

/// A key and a certificate request for `id` (URI SAN): (key, CSR PEM).
pub fn request(id: &str) -> Result<(KeyPair, String), TlsError> {
    let key = KeyPair::generate().map_err(TlsError::crypto)?;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(TlsError::crypto)?;
    p.subject_alt_names = vec![SanType::URI(id.try_into().map_err(TlsError::crypto)?)];
    let csr = p.serialize_request(&key).map_err(TlsError::crypto)?;
    let pem = csr.pem().map_err(TlsError::crypto)?;
    Ok((key, pem))
}
