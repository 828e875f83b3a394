//! Stall detection for one HTTP connection: the stream wrapped so that every byte moved
//! and every write left waiting is noted ([`Activity`]), and a [`watchdog`] that says
//! when to close it (a write stuck for the write timeout, or nothing moved for the idle
//! timeout while no request is being handled).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When the connection last moved a byte, since when a write has waited, and how many
/// requests are being handled; read by [`watchdog`]. Times are ms since `start`.
pub(super) struct Activity {
    start: Instant,
    last_progress: AtomicU64,
    write_waiting_since: AtomicU64,
    handling: AtomicUsize,
}

const NOT_WAITING: u64 = u64::MAX;

impl Activity {
    pub(super) fn new() -> Activity {
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
pub(super) struct Busy(Arc<Activity>);

impl Busy {
    pub(super) fn new(activity: Arc<Activity>) -> Busy {
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
pub(super) async fn watchdog(
    activity: &Activity,
    write_timeout: Duration,
    idle_timeout: Duration,
) -> &'static str {
    let write_ms = write_timeout.as_millis() as u64;
    let idle_ms = idle_timeout.as_millis() as u64;
    let tick = (write_timeout.min(idle_timeout) / 4)
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
pub(super) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The stream with its [`Activity`] kept up to date.
pub(super) struct Watched {
    pub(super) inner: Stream,
    pub(super) activity: Arc<Activity>,
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
        cx: &mut Context<'_>,
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
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = on_stream!(self, s => Pin::new(s).poll_write(cx, buf));
        self.after_write(r, |n| *n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = on_stream!(self, s => Pin::new(s).poll_flush(cx));
        self.after_write(r, |_| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        on_stream!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
