//! `tls-get`: a peer from outside knit dialling an ingress listener of a
//! service with tls, with whatever certificate the test gives it (one of
//! a foreign CA, an expired one, another trust domain's): did the
//! handshake and one request go through? With `--tcp`, a TCP service's
//! ingress: one line sent, and what came back (an echo server's id and
//! the line) reported as `read`.
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::arg;

pub fn run(args: &[String]) -> Result<()> {
    let target = arg(args, "--target").context("--target HOST:PORT")?;
    let cert = arg(args, "--cert").context("--cert FILE (PEM chain)")?;
    let key = arg(args, "--key").context("--key FILE (PEM, PKCS#8)")?;
    let ca = arg(args, "--ca").context("--ca FILE (the roots to check the server with)")?;
    let id = arg(args, "--id").context("--id URI (the certificate's SAN)")?;
    let chain = knit::tls::certs_from_pem(&std::fs::read_to_string(&cert)?)?;
    let key_pem = std::fs::read_to_string(&key)?;
    let key = rcgen::KeyPair::from_pem(&key_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in knit::tls::certs_from_pem(&std::fs::read_to_string(&ca)?)? {
        roots.add(c)?;
    }
    let identity = knit::tls::Identity::new(
        id,
        chain,
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        Arc::new(roots),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&target).await?;
        let name = rustls_pki_types::ServerName::try_from("knit")?;
        let connect = tokio_rustls::TlsConnector::from(identity.client.clone()).connect(name, tcp);
        let mut s = match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ok::<_, anyhow::Error>(json!({"handshake": e.to_string()})),
            Err(_) => return Ok(json!({"handshake": "timed out"})),
        };
        if args.iter().any(|a| a == "--tcp") {
            s.write_all(b"hello\n").await?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            let outcome = loop {
                if buf.iter().filter(|b| **b == b'\n').count() >= 2 {
                    break "ok".to_string();
                }
                match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                    Ok(Ok(0)) => break "closed".to_string(),
                    Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                    Ok(Err(e)) => break e.to_string(),
                    Err(_) => break "timed out".to_string(),
                }
            };
            return Ok(json!({
                "handshake": outcome,
                "read": String::from_utf8_lossy(&buf),
            }));
        }
        // TLS 1.3: the server checks the client's certificate after the
        // client's handshake is done; a refusal shows on the first read.
        s.write_all(b"GET / HTTP/1.1\r\nHost: tls-get\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|t| t.get(..3))
            .and_then(|c| c.parse::<u16>().ok());
        Ok(json!({
            "handshake": match read {
                Ok(Ok(_)) if status.is_some() => "ok".to_string(),
                Ok(Ok(_)) => "closed".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            },
            "status": status,
        }))
    })?;
    println!("{out}");
    Ok(())
}
