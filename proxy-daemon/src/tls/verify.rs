//! Checking the peer: its chain (rustls and webpki) and then its URI SAN
//! (the caller of [`super::Identity`]'s configs, once the handshake is
//! done and before a byte of a request moves), and why a handshake failed.
use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, Error, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    server::ParsedCertificate,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A server's chain checked against the trust bundle. Its name is not: an
/// identity has no DNS name; the proxy compares the URI SAN with the
/// service it dialled right after the handshake.
#[derive(Debug)]
pub(super) struct ChainOnly {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
}

impl ChainOnly {
    pub(super) fn new(roots: Arc<RootCertStore>, provider: &CryptoProvider) -> Self {
        Self {
            roots,
            algs: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Why a TLS handshake (or the identity check after it) failed: the
/// `cause` label of `knit_client_tls_negotiation_error_count` and
/// `knit_target_tls_negotiation_error_count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cause {
    /// The peer presented no certificate (or this host has none to present yet).
    NoCertificate,
    /// The peer's chain does not lead to the trust bundle.
    UnknownCa,
    /// The peer's certificate names another service (or another trust domain).
    SanMismatch,
    /// The peer's certificate is expired (or not valid yet).
    Expired,
    /// Anything else: a bad certificate, a protocol error, a reset.
    Other,
}

impl Cause {
    pub const ALL: [Cause; 5] = [
        Cause::NoCertificate,
        Cause::UnknownCa,
        Cause::SanMismatch,
        Cause::Expired,
        Cause::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Cause::NoCertificate => "no_certificate",
            Cause::UnknownCa => "unknown_ca",
            Cause::SanMismatch => "san_mismatch",
            Cause::Expired => "expired",
            Cause::Other => "other",
        }
    }
}

/// The cause of a failed handshake, from the error tokio-rustls returned
/// (a rustls error inside an `io::Error`): what this side found wrong, or
/// the alert the peer sent about what it found wrong.
pub fn cause_of(e: &std::io::Error) -> Cause {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return Cause::Other;
    };
    use rustls::AlertDescription as A;
    match err {
        Error::NoCertificatesPresented => Cause::NoCertificate,
        Error::InvalidCertificate(c) => match c {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Cause::Expired,
            CertificateError::UnknownIssuer | CertificateError::BadSignature => Cause::UnknownCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                Cause::SanMismatch
            }
            _ => Cause::Other,
        },
        Error::AlertReceived(A::CertificateRequired) => Cause::NoCertificate,
        Error::AlertReceived(A::UnknownCA) => Cause::UnknownCa,
        Error::AlertReceived(A::CertificateExpired) => Cause::Expired,
        _ => Cause::Other,
    }
}
