//! TLS to LAPI: a client certificate (mTLS) signed by a private CA named by ca_cert_path;
//! no client certificate where one is required is an error that keeps what is known;
//! insecure_skip_verify accepts a server certificate that no configured CA signed.
//! The certificates come from the openssl CLI; the server is rustls on loopback.

mod support;

use cerberus::decision::Remediation;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// ca.pem, server.pem/server.key (for IP 127.0.0.1), client.pem/client.key.
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=cerberus test CA",
    ]);
    openssl(dir, &ca);
    for (name, subject, usage) in [
        (
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        (
            "client",
            "/OU=bouncer-ou/CN=cerberus",
            "extendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\n{usage}"),
        )
        .unwrap();
        let mut req = vec!["req"];
        req.extend(ec);
        let (key, csr) = (format!("{name}.key"), format!("{name}.csr"));
        req.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(dir, &req);
        let (pem, ext) = (format!("{name}.pem"), format!("{name}.ext"));
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
}

/// A LAPI stand-in over TLS that demands a client certificate signed by ca.pem.
async fn serve_tls(dir: &Path, body: String) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = vec![CertificateDer::from_pem_file(dir.join("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let answer = if head.contains("startup=true") {
                    body.as_str()
                } else {
                    r#"{"new":null,"deleted":null}"#
                };
                let out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = tls.write_all(out.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_and_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let url = serve_tls(certs.path(), support::startup_body(3)).await;
    let banned = "10.0.0.1".parse().unwrap();

    // mTLS, server verified against the private CA.
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(&url), None);
    config.cert_path = Some(certs.path().join("client.pem"));
    config.key_path = Some(certs.path().join("client.key"));
    config.ca_cert_path = Some(certs.path().join("ca.pem"));
    let app = cerberus::app::start(config).await.unwrap();
    let d = app.decider.clone();
    support::wait_for("sync over mTLS", 20, || {
        d.answer(banned).remediation == Some(Remediation::Ban)
    })
    .await;
    app.stop().await;

    // A key but no client certificate: the handshake fails, the failure is counted.
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), Some(&url), Some("key"));
    config.ca_cert_path = Some(certs.path().join("ca.pem"));
    let app = cerberus::app::start(config).await.unwrap();
    support::wait_for("a failed TLS pull", 20, || {
        app.stats.pulls_failed.load(Ordering::Relaxed) > 0
    })
    .await;
    assert!(app.decider.answer(banned).allows());
    assert!(app.stats.last_error().is_some());
    app.stop().await;

    // The CA not configured: refused, unless insecure_skip_verify.
    for (skip, synced) in [(false, false), (true, true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = support::config(dir.path(), Some(&url), None);
        config.cert_path = Some(certs.path().join("client.pem"));
        config.key_path = Some(certs.path().join("client.key"));
        config.insecure_skip_verify = skip;
        let app = cerberus::app::start(config).await.unwrap();
        let d = app.decider.clone();
        support::wait_for("a pull outcome", 20, || {
            app.stats.pulls_ok.load(Ordering::Relaxed)
                + app.stats.pulls_failed.load(Ordering::Relaxed)
                > 0
        })
        .await;
        if synced {
            support::wait_for("sync with insecure_skip_verify", 20, || {
                !d.answer(banned).allows()
            })
            .await;
        } else {
            assert_eq!(app.stats.pulls_ok.load(Ordering::Relaxed), 0);
            let err = app.stats.last_error().unwrap();
            assert!(err.to_lowercase().contains("certificate"), "{err}");
        }
        app.stop().await;
    }
}
