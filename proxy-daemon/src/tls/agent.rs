//! The daemon's side of identities: for every service with a task on this
//! host, a key made here (kept in memory only), a certificate request in
//! etcd, and the signer's answer installed; renewed at half life; the
//! trust bundle followed (a new one rebuilds every identity's checks).
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls_pki_types::PrivatePkcs8KeyDer;
use tracing::{info, warn};

use super::{
    CertIssued, CertRequest, Identities, Identity, ServiceKey, ca, certs_from_pem,
    hostkey::HostKey,
    signer::{bundle_key, cert_key, request_key, unix_ms},
};
use crate::registry::etcd::Etcd;

/// How often the agent looks while a request is pending, and otherwise.
const POLL_PENDING: Duration = Duration::from_millis(200);
const POLL_IDLE: Duration = Duration::from_secs(1);
/// A refused or failed request is made again after this long.
const RETRY: Duration = Duration::from_secs(5);
/// An identity outlives its service's last task here by this long: a task
/// that comes and goes (a job, a restart) finds it still there, and its
/// pooled connections with it, instead of waiting for the signer.
const LINGER: Duration = Duration::from_secs(60);

struct Pending {
    key: PrivatePkcs8KeyDer<'static>,
    at_unix_ms: u64,
    /// Said once that the signer has not answered for [`SIGNER_SILENT`].
    told: bool,
}

/// How long a request waits before the log says the signer is silent.
const SIGNER_SILENT: Duration = Duration::from_secs(30);

/// Keep this host's identities until the daemon stops.
pub async fn run(etcd: Arc<Etcd>, proxy: Arc<crate::proxy::Proxy>, host_key: HostKey) {
    let ids = proxy.tls.clone();
    let metrics = &proxy.metrics;
    let prefix_rel = |k: String| {
        // Keys are built with an empty prefix: relative to the registry's.
        k.trim_start_matches('/').to_owned()
    };
    let host = etcd.host().to_owned();
    let mut pending: BTreeMap<ServiceKey, Pending> = BTreeMap::new();
    let mut retry_after: BTreeMap<ServiceKey, SystemTime> = BTreeMap::new();
    let mut told_waiting = false;
    let mut last_wanted: BTreeMap<ServiceKey, std::time::Instant> = BTreeMap::new();
    loop {
        // The trust bundle.
        match etcd.get_rel(&prefix_rel(bundle_key(""))).await {
            Ok(Some(pem)) => {
                let pem = String::from_utf8_lossy(&pem);
                match ids.set_bundle(&pem) {
                    Ok(true) => {
                        info!("tls: trust bundle from the signer installed");
                        if let Some(roots) = ids.roots() {
                            for (k, i) in ids.all().iter() {
                                match i.with_roots(roots.clone()) {
                                    Ok(n) => ids.install(k.clone(), n),
                                    Err(e) => {
                                        warn!(identity = %i.id, error = %e, "tls: new bundle")
                                    }
                                }
                            }
                        }
                    }
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "tls: the signer's trust bundle is unusable"),
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "tls: reading the trust bundle"),
        }
        let wanted = ids.wanted();
        let now_i = std::time::Instant::now();
        for k in &wanted {
            last_wanted.insert(k.clone(), now_i);
        }
        last_wanted.retain(|_, at| now_i.duration_since(*at) < LINGER);
        let keep: BTreeSet<ServiceKey> = last_wanted.keys().cloned().collect();
        ids.retain(&keep);
        pending.retain(|k, _| wanted.contains(k));
        let Some(roots) = ids.roots() else {
            if !wanted.is_empty() && !told_waiting {
                info!(
                    "tls: no trust bundle in etcd yet (is `knit signer` running?); services \
                     with tls cannot be reached from other hosts until it is"
                );
                told_waiting = true;
            }
            sleep_or_wanted(&ids, POLL_IDLE).await;
            continue;
        };
        let now = SystemTime::now();
        // New requests: no identity yet, or past half its life.
        for k in &wanted {
            if pending.contains_key(k) || retry_after.get(k).is_some_and(|t| now < *t) {
                continue;
            }
            let due = match ids.get(&k.0, &k.1) {
                None => true,
                Some(i) => {
                    let life = i.not_after.duration_since(i.not_before).unwrap_or_default();
                    now >= i.not_before + life / 2
                }
            };
            if !due {
                continue;
            }
            let id = ids.id_of(&k.0, &k.1);
            let (key, csr) = match ca::request(&id) {
                Ok(r) => r,
                Err(e) => {
                    warn!(identity = %id, error = %e, "tls: making a key");
                    continue;
                }
            };
            let at_unix_ms = unix_ms(now).max(1);
            let mut req = CertRequest {
                csr,
                at_unix_ms,
                host_key: String::new(),
                signature: String::new(),
            };
            host_key.sign(&mut req, &host, &k.0, &k.1);
            let Ok(value) = serde_json::to_vec(&req) else {
                continue;
            };
            match etcd
                .put_rel(&prefix_rel(request_key("", &host, &k.0, &k.1)), value)
                .await
            {
                Ok(()) => {
                    pending.insert(
                        k.clone(),
                        Pending {
                            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
                            at_unix_ms,
                            told: false,
                        },
                    );
                }
                Err(e) => warn!(identity = %id, error = %e, "tls: sending a certificate request"),
            }
        }
        // Answers.
        let keys: Vec<ServiceKey> = pending.keys().cloned().collect();
        for k in keys {
            let rel = prefix_rel(cert_key("", &host, &k.0, &k.1));
            let answer = match etcd.get_rel(&rel).await {
                Ok(Some(v)) => serde_json::from_slice::<CertIssued>(&v).ok(),
                Ok(None) => None,
                Err(e) => {
                    warn!(error = %e, "tls: reading a certificate");
                    None
                }
            };
            let Some(answer) = answer else {
                if let Some(p) = pending.get_mut(&k)
                    && !p.told
                    && unix_ms(SystemTime::now()).saturating_sub(p.at_unix_ms)
                        > SIGNER_SILENT.as_millis() as u64
                {
                    p.told = true;
                    let expires = ids.get(&k.0, &k.1).map(|i| unix_ms(i.not_after) / 1000);
                    warn!(
                        identity = %ids.id_of(&k.0, &k.1),
                        current_expires_unix = ?expires,
                        "tls: the signer has not answered a certificate request for 30 s (is \
                         `knit signer` running?); the current certificate serves until it expires"
                    );
                }
                continue;
            };
            let Some(p) = pending.get(&k) else { continue };
            if answer.request_at_unix_ms != p.at_unix_ms {
                continue;
            }
            let id = ids.id_of(&k.0, &k.1);
            let Some(p) = pending.remove(&k) else {
                continue;
            };
            let made = match &answer.refused {
                Some(why) => Err(format!("the signer refused: {why}")),
                None => certs_from_pem(&answer.chain)
                    .map_err(|e| e.to_string())
                    .and_then(|chain| {
                        Identity::new(id.clone(), chain, p.key, roots.clone())
                            .map_err(|e| e.to_string())
                    }),
            };
            match made {
                Ok(identity) => {
                    let expiry = unix_ms(identity.not_after) / 1000;
                    info!(identity = %id, expires_unix = expiry, "tls: certificate installed");
                    metrics
                        .tls_expiry
                        .get_or_create(&crate::metrics::IdentityLabels {
                            identity: id.clone(),
                        })
                        .set(expiry as i64);
                    metrics.tls_rotations.inc();
                    ids.install(k.clone(), identity);
                    retry_after.remove(&k);
                }
                Err(why) => {
                    warn!(identity = %id, reason = %why, "tls: no certificate");
                    metrics.tls_request_failures.inc();
                    retry_after.insert(k.clone(), now + RETRY);
                }
            }
        }
        let wait = if pending.is_empty() {
            POLL_IDLE
        } else {
            POLL_PENDING
        };
        sleep_or_wanted(&ids, wait).await;
    }
}

async fn sleep_or_wanted(ids: &Identities, wait: Duration) {
    tokio::select! {
        () = tokio::time::sleep(wait) => {}
        () = ids.wanted_changed.notified() => {}
    }
}
