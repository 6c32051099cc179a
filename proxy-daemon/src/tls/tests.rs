use std::time::Duration;

use super::*;

fn ca_files(dir: &std::path::Path, name: &str) -> Result<ca::Ca, TlsError> {
    let (cert, key) = ca::create(name, 30)?;
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert).map_err(TlsError::crypto)?;
    std::fs::write(&k, key).map_err(TlsError::crypto)?;
    ca::Ca::load(&c, &k)
}

fn roots(ca: &ca::Ca) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    for c in &ca.roots {
        let _ = r.add(c.clone());
    }
    Arc::new(r)
}

/// An identity for `id` issued by `ca` through a request, as the agent does.
fn identity(ca: &ca::Ca, id: &str, trust: &ca::Ca) -> Result<Identity, TlsError> {
    let (key, csr) = ca::request(id)?;
    let chain = certs_from_pem(&ca.sign(&csr, id, Duration::from_secs(3600))?)?;
    Identity::new(
        id.to_owned(),
        chain,
        PrivatePkcs8KeyDer::from(key.serialize_der()),
        roots(trust),
    )
}

/// A handshake over an in-memory pipe: Ok(the SAN each side saw) or the
/// (client, server) causes.
async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> Result<(Vec<String>, Vec<String>), (Option<Cause>, Option<Cause>)> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = rustls_pki_types::ServerName::try_from("knit").map_err(|_| (None, None))?;
    let c = tokio_rustls::TlsConnector::from(client).connect(name, a);
    let s = tokio_rustls::TlsAcceptor::from(server).accept(b);
    let (c, s) = tokio::join!(c, s);
    match (c, s) {
        (Ok(c), Ok(s)) => {
            let san = |certs: Option<&[CertificateDer<'_>]>| {
                certs
                    .and_then(|c| c.first())
                    .map(|c| uri_sans(c))
                    .unwrap_or_default()
            };
            Ok((
                san(c.get_ref().1.peer_certificates()),
                san(s.get_ref().1.peer_certificates()),
            ))
        }
        (c, s) => Err((c.err().map(|e| cause_of(&e)), s.err().map(|e| cause_of(&e)))),
    }
}

#[tokio::test]
async fn both_ends_see_each_others_identity() -> Result<(), TlsError> {
    let dir = tempfile::tempdir().map_err(TlsError::crypto)?;
    let ca = ca_files(dir.path(), "root")?;
    let web = identity(&ca, "spiffe://knit.local/ns/default/svc/web", &ca)?;
    let api = identity(&ca, "spiffe://knit.local/ns/default/svc/api", &ca)?;
    let (server_saw_client, client_saw_server) = match handshake(web.client, api.server).await {
        Ok((c, s)) => (s, c),
        Err(e) => panic!("handshake failed: {e:?}"),
    };
    assert_eq!(
        server_saw_client,
        ["spiffe://knit.local/ns/default/svc/web"]
    );
    assert_eq!(
        client_saw_server,
        ["spiffe://knit.local/ns/default/svc/api"]
    );
    Ok(())
}

#[tokio::test]
async fn a_foreign_ca_or_an_expired_certificate_is_refused_with_its_cause() -> Result<(), TlsError>
{
    let dir = tempfile::tempdir().map_err(TlsError::crypto)?;
    let ca = ca_files(dir.path(), "root")?;
    let other = ca_files(dir.path(), "other")?;
    let api = identity(&ca, "spiffe://knit.local/ns/default/svc/api", &ca)?;
    // A client whose certificate another CA issued (it trusts ours).
    let intruder = identity(&other, "spiffe://knit.local/ns/default/svc/web", &ca)?;
    let (_, server) = handshake(intruder.client, api.server.clone())
        .await
        .err()
        .unwrap_or_default();
    assert_eq!(server, Some(Cause::UnknownCa));
    // An expired client certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    let (pem, key) = ca.issue(
        "spiffe://knit.local/ns/default/svc/web",
        now - time::Duration::hours(3),
        now - time::Duration::hours(1),
    )?;
    let old = Identity::new(
        "spiffe://knit.local/ns/default/svc/web".into(),
        certs_from_pem(&pem)?,
        PrivatePkcs8KeyDer::from(key.serialize_der()),
        roots(&ca),
    )?;
    let (_, server) = handshake(old.client, api.server.clone())
        .await
        .err()
        .unwrap_or_default();
    assert_eq!(server, Some(Cause::Expired));
    // A server from a foreign CA: the client refuses it.
    let fake = identity(&other, "spiffe://knit.local/ns/default/svc/api", &ca)?;
    let web = identity(&ca, "spiffe://knit.local/ns/default/svc/web", &ca)?;
    let (client, _) = handshake(web.client, fake.server)
        .await
        .err()
        .unwrap_or_default();
    assert_eq!(client, Some(Cause::UnknownCa));
    Ok(())
}

#[test]
fn the_signer_issues_only_the_identity_asked_for() -> Result<(), TlsError> {
    let dir = tempfile::tempdir().map_err(TlsError::crypto)?;
    let ca = ca_files(dir.path(), "root")?;
    let (_, csr) = ca::request("spiffe://knit.local/ns/default/svc/web")?;
    let e = ca.sign(
        &csr,
        "spiffe://knit.local/ns/default/svc/api",
        Duration::from_secs(60),
    );
    assert!(matches!(e, Err(TlsError::Refused(_))), "{:?}", e.err());
    let chain = certs_from_pem(&ca.sign(
        &csr,
        "spiffe://knit.local/ns/default/svc/web",
        Duration::from_secs(600),
    )?)?;
    let (from, to) = validity(&chain[0]).ok_or_else(|| TlsError::Crypto("validity".into()))?;
    let life = to.duration_since(from).map_err(TlsError::crypto)?;
    assert!(
        life >= Duration::from_secs(600) && life <= Duration::from_secs(700),
        "{life:?}"
    );
    // A key that is not the certificate's is refused at load.
    let k = dir.path().join("other.key");
    std::fs::write(&k, ca::create("x", 1)?.1).map_err(TlsError::crypto)?;
    let e = ca::Ca::load(&dir.path().join("root.pem"), &k).err();
    assert!(e.is_some_and(|e| e.to_string().contains("is not the key")));
    Ok(())
}

#[test]
fn spiffe_ids_round_trip() {
    let id = spiffe_id("knit.local", "prod", "web");
    assert_eq!(id, "spiffe://knit.local/ns/prod/svc/web");
    assert_eq!(parse_spiffe_id("knit.local", &id), Some(("prod", "web")));
    assert_eq!(parse_spiffe_id("other.org", &id), None);
    assert_eq!(
        parse_spiffe_id("knit.local", "spiffe://knit.local/ns//svc/x"),
        None
    );
}
