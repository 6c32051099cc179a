//! `knit signer`: the only holder of the CA key. It publishes the trust
//! bundle in etcd and answers the hosts' certificate requests there:
//! a host gets a certificate for a service only while the registry says
//! it runs a task of that service, and only naming that service.
//!
//! etcd holds public data only (the bundle, CSRs, issued certificates): a
//! copy of it mints nothing. Requests are signed with the asking host's key,
//! pinned by the signer on first use (`hostkey`): writing to etcd is not
//! enough to ask in the name of a host the signer knows. Keys, under the
//! registry's prefix:
//! - `tls/bundle`: the trust bundle (PEM);
//! - `tls/requests/<host>/<namespace>/<service>`: a [`CertRequest`];
//! - `tls/certs/<host>/<namespace>/<service>`: the [`CertIssued`] answer.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use etcd_client::{Client, ConnectOptions, GetOptions};
use proxy_config::DaemonConfig;
use tracing::{info, warn};

use super::{
    CertIssued, CertRequest, TlsError,
    ca::Ca,
    certs_from_pem,
    hostkey::{self, Pins},
    spiffe_id,
};
use crate::registry::model::{HostedTask, ServiceRecord};

/// How often the signer looks for new requests.
const POLL: Duration = Duration::from_millis(300);

/// What `knit signer` was given.
pub struct SignerArgs {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// More roots for the bundle (a rollover: the old root, or the next).
    pub trust_bundle: Option<PathBuf>,
    /// Where the signer pins each host's key (default: beside the CA key,
    /// `<ca key>.hosts.json`).
    pub host_keys: Option<PathBuf>,
}

/// Key layout, shared with the daemon's agent.
pub fn bundle_key(prefix: &str) -> String {
    format!("{prefix}/tls/bundle")
}

pub fn request_key(prefix: &str, host: &str, ns: &str, svc: &str) -> String {
    format!("{prefix}/tls/requests/{host}/{ns}/{svc}")
}

pub fn cert_key(prefix: &str, host: &str, ns: &str, svc: &str) -> String {
    format!("{prefix}/tls/certs/{host}/{ns}/{svc}")
}

fn etcd_err(e: etcd_client::Error) -> TlsError {
    TlsError::Crypto(format!("etcd: {e}"))
}

/// Run the signer until the process is stopped.
pub async fn run(cfg: DaemonConfig, args: SignerArgs) -> anyhow::Result<()> {
    let ca = Ca::load(&args.ca_cert, &args.ca_key)?;
    let extra = match &args.trust_bundle {
        Some(p) => {
            let pem = std::fs::read_to_string(p).map_err(|e| TlsError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
                fix: "give --trust-bundle a PEM file of root certificates".into(),
            })?;
            certs_from_pem(&pem)?
        }
        None => Vec::new(),
    };
    let bundle = ca.bundle(&extra);
    let pins_path = args.host_keys.clone().unwrap_or_else(|| {
        let mut p = args.ca_key.clone().into_os_string();
        p.push(".hosts.json");
        PathBuf::from(p)
    });
    let mut pins = Pins::load(&pins_path)?;
    let ttl = Duration::from_secs(cfg.tls.certificate_ttl_s);
    let prefix = cfg.registry.prefix.clone();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_millis(cfg.registry.timeout_ms));
    let mut client = Client::connect(&cfg.registry.endpoints, Some(opts))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "etcd at {}: {e}\n  fix: start etcd, or point [registry] endpoints in the config at it",
                cfg.registry.endpoints.join(", ")
            )
        })?;
    info!(
        trust_domain = %cfg.tls.trust_domain,
        roots = ca.roots.len() + extra.len(),
        ttl_s = ttl.as_secs(),
        host_keys = %pins_path.display(),
        hosts_pinned = pins.len(),
        "signer: publishing the trust bundle and answering certificate requests"
    );
    crate::systemd::ready("signing");
    let mut published = false;
    let mut answered: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        if let Err(e) = round(
            &mut client,
            &ca,
            &bundle,
            &mut published,
            &mut answered,
            &mut pins,
            &prefix,
            &cfg.tls.trust_domain,
            ttl,
        )
        .await
        {
            warn!(error = %e, "signer");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[expect(clippy::too_many_arguments, reason = "one round's state, spelled out")]
async fn round(
    c: &mut Client,
    ca: &Ca,
    bundle: &str,
    published: &mut bool,
    answered: &mut BTreeMap<String, u64>,
    pins: &mut Pins,
    prefix: &str,
    trust_domain: &str,
    ttl: Duration,
) -> Result<(), TlsError> {
    if !*published {
        let key = bundle_key(prefix);
        let now = c.get(key.as_str(), None).await.map_err(etcd_err)?;
        if now.kvs().first().map(|kv| kv.value()) != Some(bundle.as_bytes()) {
            c.put(key, bundle, None).await.map_err(etcd_err)?;
            info!("signer: trust bundle published");
        }
        *published = true;
    }
    let base = format!("{prefix}/tls/requests/");
    let reqs = c
        .get(base.as_str(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err)?;
    for kv in reqs.kvs() {
        let Ok(key) = kv.key_str() else { continue };
        let Some(rel) = key.strip_prefix(&base) else {
            continue;
        };
        let mut parts = rel.splitn(3, '/');
        let (Some(host), Some(ns), Some(svc)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(req) = serde_json::from_slice::<CertRequest>(kv.value()) else {
            warn!(%key, "signer: a request that does not parse");
            continue;
        };
        if answered.get(key) == Some(&req.at_unix_ms) {
            continue;
        }
        let out = cert_key(prefix, host, ns, svc);
        let have = c.get(out.as_str(), None).await.map_err(etcd_err)?;
        if let Some(prev) = have
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<CertIssued>(kv.value()).ok())
            && prev.request_at_unix_ms == req.at_unix_ms
        {
            answered.insert(key.to_owned(), req.at_unix_ms);
            continue;
        }
        let id = spiffe_id(trust_domain, ns, svc);
        // Signed by the host's key, the one pinned for it (or the first
        // it ever used), and the host runs a task of the service.
        let answer = match authenticate(&req, host, ns, svc, pins) {
            Err(why) => Err(why),
            Ok(()) => match may_have(c, prefix, host, ns, svc).await? {
                Err(why) => Err(why),
                Ok(()) => ca.sign(&req.csr, &id, ttl).map_err(|e| e.to_string()),
            },
        };
        let issued = match answer {
            Ok(chain) => {
                info!(%host, identity = %id, ttl_s = ttl.as_secs(), "signer: issued");
                CertIssued {
                    request_at_unix_ms: req.at_unix_ms,
                    chain,
                    refused: None,
                }
            }
            Err(why) => {
                warn!(%host, identity = %id, reason = %why, "signer: refused");
                CertIssued {
                    request_at_unix_ms: req.at_unix_ms,
                    chain: String::new(),
                    refused: Some(why),
                }
            }
        };
        let value = serde_json::to_vec(&issued).map_err(TlsError::crypto)?;
        c.put(out, value, None).await.map_err(etcd_err)?;
        answered.insert(key.to_owned(), req.at_unix_ms);
    }
    Ok(())
}

/// Whether `req` comes from `host`: signed with the key it carries, which
/// is the key pinned for `host` (the first one seen is pinned).
fn authenticate(
    req: &CertRequest,
    host: &str,
    ns: &str,
    svc: &str,
    pins: &mut Pins,
) -> Result<(), String> {
    hostkey::verify(req, host, ns, svc)?;
    if pins.check(host, &req.host_key, unix_ms(SystemTime::now()))? {
        info!(%host, "signer: pinned the host's key (first request from it)");
    }
    Ok(())
}

/// Whether `host` may have the identity of `svc` in `ns`: the service is
/// in that namespace and the host runs a task of it.
async fn may_have(
    c: &mut Client,
    prefix: &str,
    host: &str,
    ns: &str,
    svc: &str,
) -> Result<Result<(), String>, TlsError> {
    let rec = c
        .get(format!("{prefix}/config/services/{svc}"), None)
        .await
        .map_err(etcd_err)?;
    let Some(rec) = rec
        .kvs()
        .first()
        .and_then(|kv| serde_json::from_slice::<ServiceRecord>(kv.value()).ok())
    else {
        return Ok(Err(format!("there is no service {svc:?}")));
    };
    if rec.spec.namespace != ns {
        return Ok(Err(format!(
            "service {svc:?} is in namespace {:?}, not {ns:?}",
            rec.spec.namespace
        )));
    }
    let tasks = c
        .get(
            format!("{prefix}/hosts/{host}/tasks/"),
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd_err)?;
    let runs = tasks.kvs().iter().any(|kv| {
        serde_json::from_slice::<HostedTask>(kv.value())
            .is_ok_and(|t| t.host == host && t.task.service == svc)
    });
    if runs {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "host {host:?} runs no task of service {svc:?}"
        )))
    }
}

/// Milliseconds since the epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
