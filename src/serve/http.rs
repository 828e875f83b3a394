//! One HTTP/1.1 server loop for the HTTP listeners (forward_auth, admin): TCP or Unix
//! socket, keep-alive, a connection cap (over it a connection is closed at once, counted
//! and logged), header, write and idle timeouts (see [`Limits`]), graceful close on
//! shutdown, and the Unix socket file removed at the end.

use super::stall::{watchdog, Activity, Busy, Stream, Watched};
use crate::config::{Config, Listen};
use crate::metrics as names;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How much one HTTP listener serves, and how long it waits for a peer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Its config key, named in the shedding log.
    pub cap_key: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Limits {
    /// The limits of one door: `cap_key` and `max_connections` its own, the timeouts
    /// shared by both HTTP doors.
    pub fn new(config: &Config, cap_key: &'static str, max_connections: usize) -> Limits {
        Limits {
            cap_key,
            max_connections,
            header_timeout: config.http_header_timeout,
            write_timeout: config.http_write_timeout,
            idle_timeout: config.http_idle_timeout,
        }
    }
}

/// Binds `listen` (named `key` in errors) and serves `handler(request, peer_ip)` until
/// `shutdown`. Returns the task and the bound address (`host:port` or `unix:/path`), or
/// `None` when the listener is off.
pub async fn serve<H, F>(
    name: &'static str,
    key: &str,
    listen: &Listen,
    unix_mode: u32,
    limits: Limits,
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
                limits,
                shutdown,
                None,
            ));
            Ok(Some((task, local)))
        }
        Listen::Unix(path) => {
            super::socket::clear_stale(path)?;
            let listener = super::socket::bind_unix(path, unix_mode)
                .with_context(|| format!("{key} unix:{}: cannot bind", path.display()))?;
            listener.set_nonblocking(true)?;
            let listener = tokio::net::UnixListener::from_std(listener)?;
            let task = tokio::spawn(accept_loop(
                name,
                Listener::Unix(listener),
                handler,
                limits,
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

impl Listener {
    /// The next connection and its peer's IP (none over a Unix socket).
    async fn accept(&self) -> std::io::Result<(Stream, Option<IpAddr>)> {
        match self {
            Listener::Tcp(l) => l
                .accept()
                .await
                .map(|(s, peer)| (Stream::Tcp(s), Some(peer.ip()))),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| (Stream::Unix(s), None)),
        }
    }
}

async fn accept_loop<H, F>(
    name: &'static str,
    listener: Listener,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    unix_path: Option<std::path::PathBuf>,
) where
    H: Fn(Request<hyper::body::Incoming>, Option<IpAddr>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let mut backoff = Duration::ZERO;
    let mut connections = tokio::task::JoinSet::new();
    let cap = Arc::new(Semaphore::new(limits.max_connections));
    let shed = metrics::counter!(names::HTTP_SHED, "door" => name, "reason" => "cap");
    let mut shed_log = ShedLog::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            r = listener.accept() => r,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                // Over the cap the connection is closed at once (dropped): its
                // descriptor belongs to the budget of another door.
                let Ok(permit) = cap.clone().try_acquire_owned() else {
                    drop(stream);
                    shed.increment(1);
                    shed_log.shed(name, &limits);
                    continue;
                };
                let (h, shutdown) = (handler.clone(), shutdown.clone());
                connections.spawn(async move {
                    serve_connection(name, stream, peer, h, limits, shutdown).await;
                    drop(permit);
                });
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

async fn serve_connection<H, F>(
    name: &'static str,
    stream: Stream,
    peer: Option<IpAddr>,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) where
    H: Fn(Request<hyper::body::Incoming>, Option<IpAddr>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let busy = Busy::new(in_service.clone());
        let answer = handler(req, peer);
        async move {
            let answer = answer.await;
            drop(busy);
            Ok::<_, std::convert::Infallible>(answer)
        }
    });
    // hyper's header timer runs from when the connection is ready for a request head, so
    // it closes both a slow head (slowloris) and an idle keep-alive connection.
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.is_timeout() {
                    metrics::counter!(names::HTTP_TIMEOUTS, "door" => name, "reason" => "header_timeout")
                        .increment(1);
                }
                debug!("{name}: connection ended: {e}");
            }
        }
        reason = watchdog(&activity, limits.write_timeout, limits.idle_timeout) => {
            metrics::counter!(names::HTTP_TIMEOUTS, "door" => name, "reason" => reason).increment(1);
            debug!("{name}: closing a stalled connection ({reason})");
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.write_timeout, conn).await;
        }
    }
}

/// Logs shedding at most once per [`ShedLog::EVERY`], with the count since the last line.
#[derive(Default)]
struct ShedLog {
    last: Option<Instant>,
    since: u64,
}

impl ShedLog {
    const EVERY: Duration = Duration::from_secs(10);

    fn shed(&mut self, name: &str, limits: &Limits) {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        warn!(
            "{name}: {} connection(s) closed unserved: {} are open, its cap ({}); \
             counted in cerberus_http_connections_shed_total (this line comes at most every {} s)",
            self.since,
            limits.max_connections,
            limits.cap_key,
            Self::EVERY.as_secs()
        );
        self.last = Some(Instant::now());
        self.since = 0;
    }
}
