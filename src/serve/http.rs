//! One HTTP/1.1 server loop for the HTTP listeners (forward_auth, admin): TCP or Unix
//! socket, keep-alive, a connection cap (over it a connection is closed at once, counted
//! and logged), header, write and idle timeouts (see [`Limits`]), graceful close on
//! shutdown, and the Unix socket file removed at the end.

use crate::config::{Config, Listen};
use crate::metrics as names;
use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
        reason = watchdog(&activity, &limits) => {
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

/// When the connection last moved a byte, since when a write has waited, and how many
/// requests are being handled; read by [`watchdog`]. Times are ms since `start`.
struct Activity {
    start: Instant,
    last_progress: AtomicU64,
    write_waiting_since: AtomicU64,
    handling: AtomicUsize,
}

const NOT_WAITING: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_progress: AtomicU64::new(0),
            write_waiting_since: AtomicU64::new(NOT_WAITING),
            handling: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn moved(&self) {
        self.last_progress.store(self.now_ms(), Ordering::Relaxed);
    }

    fn wrote(&self) {
        self.moved();
        self.write_waiting_since
            .store(NOT_WAITING, Ordering::Relaxed);
    }

    fn write_blocked(&self) {
        if self.write_waiting_since.load(Ordering::Relaxed) == NOT_WAITING {
            self.write_waiting_since
                .store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

/// Counts one request being handled while it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Busy {
        activity.handling.fetch_add(1, Ordering::Relaxed);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        self.0.moved();
    }
}

/// Completes with the reason when the connection must be closed: an answer that could
/// not be written for `write_timeout` (a peer that sends and never reads), or nothing
/// moved for `idle_timeout` while no request was being handled (a stalled body).
async fn watchdog(activity: &Activity, limits: &Limits) -> &'static str {
    let write_ms = limits.write_timeout.as_millis() as u64;
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    let tick = (limits.write_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.now_ms();
        let waiting = activity.write_waiting_since.load(Ordering::Relaxed);
        if waiting != NOT_WAITING && now.saturating_sub(waiting) >= write_ms {
            return "write_timeout";
        }
        let last = activity.last_progress.load(Ordering::Relaxed);
        if activity.handling.load(Ordering::Relaxed) == 0 && now.saturating_sub(last) >= idle_ms {
            return "idle_timeout";
        }
    }
}

/// A TCP or Unix stream.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The stream with its [`Activity`] kept up to date.
struct Watched {
    inner: Stream,
    activity: Arc<Activity>,
}

macro_rules! on_stream {
    ($self:ident, $s:ident => $e:expr) => {
        match &mut $self.inner {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl Watched {
    fn after_write<T>(
        &self,
        r: Poll<std::io::Result<T>>,
        progressed: impl Fn(&T) -> bool,
    ) -> Poll<std::io::Result<T>> {
        match &r {
            Poll::Ready(Ok(v)) if progressed(v) => self.activity.wrote(),
            Poll::Pending => self.activity.write_blocked(),
            _ => {}
        }
        r
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = on_stream!(self, s => Pin::new(s).poll_read(cx, buf));
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = on_stream!(self, s => Pin::new(s).poll_write(cx, buf));
        self.after_write(r, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = on_stream!(self, s => Pin::new(s).poll_write_vectored(cx, bufs));
        self.after_write(r, |n| *n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let r = on_stream!(self, s => Pin::new(s).poll_flush(cx));
        self.after_write(r, |_| false)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<std::io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
