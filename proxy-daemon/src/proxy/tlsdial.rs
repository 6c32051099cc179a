//! The egress side of mutual TLS: a connection to another host's ingress
//! listener of a service with `tls`, presenting the calling task's service
//! identity and accepting only the target service's.
use std::{io, sync::Arc, time::Duration};

use prometheus_client::metrics::{counter::Counter, family::Family};
use rustls_pki_types::ServerName;
use tokio_rustls::client::TlsStream;

use crate::{
    metrics::{TargetLabels, TlsClientLabels},
    tls::{Cause, Identity, cause_of, uri_sans},
};

/// Longest TLS handshake with another host.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How one request's connection to another host is secured.
pub struct TlsDial {
    /// The client's identity (the calling task's service).
    pub identity: Arc<Identity>,
    /// The identity the server must present.
    pub server_id: Arc<str>,
    pub errors: Family<TlsClientLabels, Counter>,
    /// The route dialled (its labels name the failures).
    pub route: Arc<super::AliasRoute>,
    /// Handshakes completed.
    pub handshakes: Counter,
}

impl TlsDial {
    /// What pooled connections made with it are kept under.
    pub fn key(&self) -> Arc<str> {
        self.identity.id.clone()
    }

    /// Count a failed handshake.
    pub fn count(&self, cause: Cause) {
        count(&self.errors, &self.route.target, cause);
    }

    /// The handshake on `tcp`, then the server's identity checked: no
    /// request byte moves before both are done.
    pub async fn wrap<IO>(&self, tcp: IO) -> io::Result<TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = ServerName::try_from("knit").map_err(io::Error::other)?;
        let connect =
            tokio_rustls::TlsConnector::from(self.identity.client.clone()).connect(name, tcp);
        let s = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await {
            Err(_) => {
                self.count(Cause::Other);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the TLS handshake timed out",
                ));
            }
            Ok(Err(e)) => {
                self.count(cause_of(&e));
                return Err(e);
            }
            Ok(Ok(s)) => s,
        };
        self.handshakes.inc();
        let sans = s
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| uri_sans(c))
            .unwrap_or_default();
        if sans.len() != 1 || *sans[0] != *self.server_id {
            self.count(Cause::SanMismatch);
            return Err(io::Error::other(format!(
                "the endpoint presented {sans:?}, not {}",
                self.server_id
            )));
        }
        Ok(s)
    }
}

pub fn count(errors: &Family<TlsClientLabels, Counter>, labels: &TargetLabels, cause: Cause) {
    errors
        .get_or_create(&TlsClientLabels {
            namespace: labels.namespace.clone(),
            service: labels.service.clone(),
            target_discovery_name: labels.target_discovery_name.clone(),
            cause: cause.label().to_owned(),
        })
        .inc();
}
