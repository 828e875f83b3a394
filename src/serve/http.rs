//! One HTTP/1.1 server loop for the HTTP listeners (forward_auth, admin): TCP or Unix
//! socket, keep-alive, a header timeout, graceful close on shutdown, and the Unix socket
//! file removed at the end.

use crate::config::Listen;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

/// Binds `listen` (named `key` in errors) and serves `handler(request, peer_ip)` until
/// `shutdown`. Returns the task and the bound address (`host:port` or `unix:/path`), or
/// `None` when the listener is off.
pub async fn serve<H, F>(
    name: &'static str,
    key: &str,
    listen: &Listen,
    unix_mode: u32,
    handler: H,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<(JoinHandle<()>, String)>>
where
    H: Fn(Request<hyper::body::Incoming>, Option<IpAddr>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    match listen {
        Listen::Off => Ok(None),
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .with_context(|| format!("{key} {addr}: cannot listen"))?;
            let local = listener.local_addr()?.to_string();
            let task = tokio::spawn(accept_loop(
                name,
                Listener::Tcp(listener),
                handler,
                shutdown,
                None,
            ));
            Ok(Some((task, local)))
        }
        Listen::Unix(path) => {
            super::socket::clear_stale(path)?;
            let listener = tokio::net::UnixListener::bind(path)
                .with_context(|| format!("{key} unix:{}: cannot bind", path.display()))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(unix_mode))
                .with_context(|| format!("{key} unix:{}: cannot set its mode", path.display()))?;
            let task = tokio::spawn(accept_loop(
                name,
                Listener::Unix(listener),
                handler,
                shutdown,
                Some(path.clone()),
            ));
            Ok(Some((task, format!("unix:{}", path.display()))))
        }
    }
}

enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

enum Accepted {
    Tcp(tokio::net::TcpStream, IpAddr),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, peer)| Accepted::Tcp(s, peer.ip())),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Accepted::Unix(s)),
        }
    }
}

async fn accept_loop<H, F>(
    name: &'static str,
    listener: Listener,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
    unix_path: Option<std::path::PathBuf>,
) where
    H: Fn(Request<hyper::body::Incoming>, Option<IpAddr>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut backoff = Duration::ZERO;
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok(accepted) => {
                backoff = Duration::ZERO;
                let (h, shutdown) = (handler.clone(), shutdown.clone());
                match accepted {
                    Accepted::Tcp(s, peer) => {
                        connections.spawn(serve_connection(name, s, Some(peer), h, shutdown))
                    }
                    Accepted::Unix(s) => {
                        connections.spawn(serve_connection(name, s, None, h, shutdown))
                    }
                };
            }
            Err(e) => {
                if super::back_off_after_accept_error(name, &e, &mut backoff, &mut shutdown).await {
                    break;
                }
            }
        }
    }
    drop(listener);
    if let Some(path) = unix_path {
        let _ = std::fs::remove_file(path);
    }
    // Let answers in flight finish, briefly.
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(2), drain)
        .await
        .is_err()
    {
        connections.shutdown().await;
    }
}

async fn serve_connection<S, H, F>(
    name: &'static str,
    stream: S,
    peer: Option<IpAddr>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<hyper::body::Incoming>, Option<IpAddr>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let answer = handler(req, peer);
        async move { Ok::<_, std::convert::Infallible>(answer.await) }
    });
    // Clients such as Caddy keep connections open; a peer that starts a request and
    // stalls is dropped after 30 s.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                debug!("{name}: connection ended: {e}");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
