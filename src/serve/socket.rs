//! The Unix socket door: the binary protocol of `bouncer-api` (see its `PROTOCOL.md`),
//! served on a dedicated thread with a current-thread runtime (on 2 shared cores one
//! thread serving the socket beats two, and the hot path never waits on other work).
//!
//! Per connection: read what is there, decode every complete request, answer each one
//! into one output buffer (strings borrowed from the snapshot, no allocation), write the
//! whole batch at once. A malformed frame gets its error frame after the answers to the
//! earlier requests, then the connection closes. An AppSec request (`0x05`) is answered
//! in order too: the connection waits for AppSec before it reads further frames (the
//! module sends one at a time per connection; other connections go on meanwhile).

use super::{count_lookup, lookup_answer, Readiness, REMEDIATION_LABELS};
use crate::appsec::Appsec;
use crate::clock;
use crate::metrics as names;
use crate::store::Decider;
use anyhow::{bail, Context};
use bouncer_api::{
    decode_request, encode_lookup_answer, encode_response, ErrorCode, FrameError, Request, Response,
};
use bytes::BytesMut;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

/// How the socket is served.
#[derive(Debug, Clone)]
pub struct SocketSettings {
    pub path: PathBuf,
    pub mode: u32,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

/// A bound socket, not yet serving.
pub struct SocketServer {
    listener: std::os::unix::net::UnixListener,
    settings: SocketSettings,
    captcha: Option<Arc<crate::captcha::Captcha>>,
    appsec: Option<Arc<Appsec>>,
}

impl SocketServer {
    /// Binds the socket: a socket file left by a crashed daemon is replaced, but a live
    /// daemon answering on it is an error. The mode is applied by [`bind_unix`].
    pub fn bind(settings: SocketSettings) -> anyhow::Result<SocketServer> {
        let path = &settings.path;
        clear_stale(path)?;
        let listener = bind_unix(path, settings.mode).with_context(|| {
            format!(
                "socket {}: cannot bind it with mode {:04o}",
                path.display(),
                settings.mode
            )
        })?;
        listener
            .set_nonblocking(true)
            .context("socket: cannot make it non-blocking")?;
        Ok(SocketServer {
            listener,
            settings,
            captcha: None,
            appsec: None,
        })
    }

    /// Answers the captcha frames with this flow (without one: refuse, as a ban).
    pub fn with_captcha(mut self, captcha: Option<Arc<crate::captcha::Captcha>>) -> Self {
        self.captcha = captcha;
        self
    }

    /// Answers AppSec frames (`0x05`) with `appsec`; without it they get `bad_kind`.
    pub fn with_appsec(mut self, appsec: Option<Arc<Appsec>>) -> SocketServer {
        self.appsec = appsec;
        self
    }

    /// Serves on a thread of its own until `shutdown` turns true, then removes the
    /// socket file. The handle's thread ends when everything is closed.
    pub fn spawn(
        self,
        decider: Arc<Decider>,
        ready: Readiness,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let handle = std::thread::Builder::new()
            .name("cerberus-socket".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!("socket: cannot start its runtime: {e}");
                        return;
                    }
                };
                rt.block_on(self.serve(decider, ready, shutdown));
            })
            .context("socket: cannot spawn its thread")?;
        Ok(handle)
    }

    async fn serve(
        self,
        decider: Arc<Decider>,
        ready: Readiness,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let SocketServer {
            listener,
            settings,
            captcha,
            appsec,
        } = self;
        let path = settings.path.clone();
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                warn!("socket {}: {e}", path.display());
                let _ = std::fs::remove_file(&path);
                return;
            }
        };
        let limit = Arc::new(Semaphore::new(settings.max_connections));
        let mut backoff = Duration::ZERO;
        let mut connections = tokio::task::JoinSet::new();
        loop {
            // The permit is taken before accepting; over the cap the connection is
            // accepted only to be told `busy` and closed.
            let permit = limit.clone().try_acquire_owned().ok();
            let accepted = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                r = listener.accept() => r,
            };
            while connections.try_join_next().is_some() {}
            match accepted {
                Ok((stream, _)) => {
                    backoff = Duration::ZERO;
                    let permit = permit.or_else(|| limit.clone().try_acquire_owned().ok());
                    match permit {
                        Some(permit) => {
                            let conn = Connection {
                                decider: decider.clone(),
                                ready: ready.clone(),
                                idle_timeout: settings.idle_timeout,
                                captcha: captcha.clone(),
                                appsec: appsec.clone(),
                            };
                            let shutdown = shutdown.clone();
                            connections.spawn(async move {
                                conn.run(stream, shutdown).await;
                                drop(permit);
                            });
                        }
                        None => {
                            metrics::counter!(names::SOCKET_REFUSED).increment(1);
                            connections.spawn(refuse(stream));
                        }
                    }
                }
                Err(e) => {
                    if super::back_off_after_accept_error("socket", &e, &mut backoff, &mut shutdown)
                        .await
                    {
                        break;
                    }
                }
            }
        }
        drop(listener);
        let _ = std::fs::remove_file(&path);
        connections.shutdown().await;
        info!("socket {} closed", path.display());
    }
}

/// Binds a Unix socket at `path` with `mode`, with no window in which a symlink planted
/// at `path` could be followed: the socket is bound and chmodded in a fresh private
/// directory (0700, random name) beside `path`, then renamed onto `path`; `rename`
/// replaces whatever is there (a planted symlink included) without following it.
pub(crate) fn bind_unix(
    path: &Path,
    mode: u32,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    bind_unix_with(path, mode, || {})
}

/// [`bind_unix`], calling `after_bind` between the bind and the chmod (where tests play
/// the attacker).
fn bind_unix_with(
    path: &Path,
    mode: u32,
    after_bind: impl FnOnce(),
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let private = loop {
        let dir = parent.join(format!(".cerberus-{:08x}", rand::random::<u32>()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => break dir,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    };
    let inner = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&inner)?;
        after_bind();
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Removes a socket file nobody answers on; refuses a live one or a non-socket file.
pub(crate) fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("socket {}: {e}", path.display()),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "socket {}: the path exists and is not a socket; remove it or choose another `socket`",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "socket {}: another process (a running cerberus?) is listening on it; stop it or choose another `socket`",
            path.display()
        ),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
            info!("socket {}: removing the stale socket file of a previous run", path.display());
            std::fs::remove_file(path)
                .with_context(|| format!("socket {}: cannot remove the stale file", path.display()))
        }
        Err(e) => bail!("socket {}: cannot tell whether it is in use: {e}", path.display()),
    }
}

/// Tells a connection over the cap that the server is busy (id 0), then closes it.
async fn refuse(mut stream: UnixStream) {
    let mut out = BytesMut::with_capacity(64);
    encode_response(
        &Response::Error {
            id: 0,
            code: ErrorCode::Busy,
            message: "too many connections",
        },
        &mut out,
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
    let _ = stream.shutdown().await;
}

/// Counters and the histogram of one connection, registered once.
struct Meters {
    by_remediation: [metrics::Counter; REMEDIATION_LABELS.len()],
    duration: metrics::Histogram,
    /// Lookups the module answered from the mapped segments and reported.
    reported: [metrics::Counter; REMEDIATION_LABELS.len()],
}

impl Meters {
    fn new(door: &'static str) -> Meters {
        Meters {
            by_remediation: REMEDIATION_LABELS
                .map(|r| metrics::counter!(names::LOOKUPS, "door" => door, "remediation" => r)),
            duration: metrics::histogram!(names::LOOKUP_DURATION, "door" => door),
            reported: REMEDIATION_LABELS.map(
                |r| metrics::counter!(names::LOOKUPS, "door" => "segments", "remediation" => r),
            ),
        }
    }
}

struct Connection {
    decider: Arc<Decider>,
    ready: Readiness,
    idle_timeout: Duration,
    captcha: Option<Arc<crate::captcha::Captcha>>,
    appsec: Option<Arc<Appsec>>,
}

/// What [`Connection::answer_all`] stopped at.
enum Stop {
    /// Every complete request is answered.
    NeedMore,
    /// A malformed frame (its error frame is in the output).
    Fatal,
    /// A captcha request, to be answered (asynchronously) before what follows it.
    Captcha(bouncer_api::captcha::CaptchaRequest),
    /// An AppSec request: answered (asynchronously) before anything after it.
    Appsec(BytesMut),
}

impl Connection {
    async fn run(self, mut stream: UnixStream, mut shutdown: watch::Receiver<bool>) {
        let meters = Meters::new("socket");
        let mut input = BytesMut::with_capacity(4096);
        let mut output = BytesMut::with_capacity(4096);
        // The idle timer is not re-armed per batch (that would cost a timer update per
        // read): an answered request only sets `active`, and when the timer fires after
        // activity it is armed again. So a connection is closed after between one and two
        // idle periods without a complete request, whether or not it holds part of a
        // frame (a byte per connection must not hold a slot of the cap for ever).
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let mut active = false;
        loop {
            if input.capacity() - input.len() < bouncer_api::MAX_FRAME_LEN {
                input.reserve(4096);
            }
            let read = tokio::select! {
                biased;
                r = stream.read_buf(&mut input) => r,
                _ = shutdown.changed() => return,
                _ = &mut idle => {
                    if !active {
                        if input.is_empty() {
                            debug!("socket: closing an idle connection");
                        } else {
                            metrics::counter!(names::SOCKET_STALLED).increment(1);
                            debug!(
                                "socket: closing a connection stalled on a partial frame ({} bytes)",
                                input.len()
                            );
                        }
                        return;
                    }
                    active = false;
                    idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                    continue;
                }
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let mut fatal = false;
            loop {
                match self.answer_all(&mut input, &mut output, &meters) {
                    Stop::NeedMore => break,
                    Stop::Fatal => {
                        fatal = true;
                        break;
                    }
                    Stop::Captcha(req) => {
                        let answer = super::captcha::socket_answer(
                            &self.decider,
                            self.captcha.as_deref(),
                            &req,
                        )
                        .await;
                        bouncer_api::captcha::encode_captcha_answer(req.id, &answer, &mut output);
                    }
                    Stop::Appsec(frame) => {
                        if let Err(e) = self.inspect(&frame, &mut output).await {
                            metrics::counter!(names::SOCKET_BAD_FRAMES).increment(1);
                            debug!("socket: malformed AppSec frame ({e}); closing the connection");
                            encode_response(&e.error_response(), &mut output);
                            fatal = true;
                            break;
                        }
                    }
                }
            }
            if !output.is_empty() {
                // Bounded like the rest: a peer that never reads its answers is dropped.
                match tokio::time::timeout(self.idle_timeout, stream.write_all(&output)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
                output.clear();
                active = true;
            }
            if fatal {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }

    /// Asks AppSec about one request frame and appends the answer.
    async fn inspect(&self, frame: &[u8], output: &mut BytesMut) -> Result<(), FrameError> {
        let req = bouncer_api::appsec::parse_request(frame)?;
        let Some(appsec) = self.appsec.as_ref().filter(|_| self.decider.enabled()) else {
            // AppSec off here, or protection off (bypassed): allow, not inspected.
            bouncer_api::appsec::encode_answer(
                &bouncer_api::appsec::AppsecAnswer {
                    id: req.id,
                    remediation: bouncer_api::Remediation::Allow,
                    reason: bouncer_api::appsec::Reason::Off,
                },
                output,
            );
            return Ok(());
        };
        let id = req.id;
        // The module cuts at its own limit; this daemon's may be lower.
        let limit = usize::try_from(appsec.max_body()).unwrap_or(usize::MAX);
        let (body, truncated) = if req.body.len() > limit {
            (&req.body[..limit], true)
        } else {
            (req.body, req.truncated)
        };
        let outcome = appsec
            .inspect(
                crate::appsec::Door::Socket,
                crate::appsec::Inspection {
                    ip: crate::decision::normalize_ip(req.ip),
                    method: req.method,
                    uri: req.uri,
                    host: req.host,
                    http_version: req.http_version,
                    headers: req.headers,
                    body: bytes::Bytes::copy_from_slice(body),
                    truncated,
                },
                self.decider.usage(),
            )
            .await;
        use crate::appsec::Outcome as O;
        use bouncer_api::appsec::Reason;
        let reason = match outcome {
            O::Allow | O::Ban | O::Captcha => Reason::Verdict,
            O::FailedOpen | O::FailedClosed => Reason::Failed,
            O::BodyRefused => Reason::BodyTooLarge,
        };
        bouncer_api::appsec::encode_answer(
            &bouncer_api::appsec::AppsecAnswer {
                id,
                remediation: outcome.remediation(),
                reason,
            },
            output,
        );
        Ok(())
    }

    /// Answers every complete request in `input` up to the first captcha or AppSec
    /// request.
    fn answer_all(&self, input: &mut BytesMut, output: &mut BytesMut, meters: &Meters) -> Stop {
        use bouncer_api::captcha::{take_captcha_request, Taken};
        let now = clock::now_secs();
        let ready = self.ready.get();
        loop {
            if bouncer_api::appsec::starts_request(input) {
                return match bouncer_api::appsec::take_request(input) {
                    Ok(Some(frame)) => Stop::Appsec(frame),
                    Ok(None) => Stop::NeedMore,
                    Err(e) => {
                        metrics::counter!(names::SOCKET_BAD_FRAMES).increment(1);
                        debug!("socket: malformed AppSec frame ({e}); closing the connection");
                        encode_response(&e.error_response(), output);
                        Stop::Fatal
                    }
                };
            }
            match take_captcha_request(input) {
                Taken::Other => {}
                Taken::Partial => return Stop::NeedMore,
                Taken::Message(Ok(req)) => return Stop::Captcha(req),
                Taken::Message(Err(e)) => {
                    metrics::counter!(names::SOCKET_BAD_FRAMES).increment(1);
                    debug!("socket: malformed captcha request ({e}); closing the connection");
                    encode_response(&e.error_response(), output);
                    return Stop::Fatal;
                }
            }
            if let Some(frame) = bouncer_api::report::take_report(input) {
                match bouncer_api::report::parse_report(&frame) {
                    Ok((id, entries)) => {
                        count_reported(self.decider.usage(), &entries, meters);
                        encode_response(&Response::<&str>::Pong { id }, output);
                        continue;
                    }
                    Err(e) => {
                        metrics::counter!(names::SOCKET_BAD_FRAMES).increment(1);
                        debug!("socket: malformed report ({e}); closing the connection");
                        encode_response(&e.error_response(), output);
                        return Stop::Fatal;
                    }
                }
            }
            match decode_request(input) {
                Ok(Some(Request::Lookup { id, addr })) => {
                    let started = Instant::now();
                    let decider = &*self.decider;
                    let label = decider.decide(addr, now, |source, hit| {
                        let answer = lookup_answer(source, hit, now, ready);
                        encode_lookup_answer(id, &answer, output);
                        count_lookup(decider.usage(), source, hit, answer.remediation)
                    });
                    meters.by_remediation[label].increment(1);
                    meters.duration.record(started.elapsed().as_secs_f64());
                }
                Ok(Some(Request::Ping { id })) => {
                    encode_response(&Response::<&str>::Pong { id }, output)
                }
                Ok(None) => return Stop::NeedMore,
                Err(e) => {
                    metrics::counter!(names::SOCKET_BAD_FRAMES).increment(1);
                    debug!("socket: malformed frame ({e}); closing the connection");
                    encode_response(&e.error_response(), output);
                    return Stop::Fatal;
                }
            }
        }
    }
}

/// Counts a module's report (lookups it answered from the segments) as the socket's own
/// lookups are counted: usage (processed, and dropped by origin) and Prometheus.
fn count_reported(
    usage: &crate::usage::Usage,
    entries: &[bouncer_api::report::ReportEntry<'_>],
    meters: &Meters,
) {
    use bouncer_api::Remediation as R;
    for e in entries {
        let n = u64::from(e.count);
        usage.add_processed_n(n);
        let label = if e.flags & bouncer_api::Flags::BYPASSED.bits() != 0 {
            super::BYPASSED
        } else {
            if e.remediation != R::Allow && !crate::captcha::counts(e.remediation) {
                let origin = if e.flags & bouncer_api::Flags::FAIL_CLOSED.bits() != 0 {
                    crate::usage::FAIL_CLOSED_ORIGIN
                } else {
                    e.origin
                };
                usage.add_dropped_n(origin, e.scenario, e.type_name, n);
            }
            e.remediation as usize
        };
        meters.reported[label].increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_symlink_planted_at_the_path_after_bind_is_replaced_not_chmodded() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("secret");
        std::fs::write(&target, "x").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = dir.path().join("cerberus.sock");
        let listener = bind_unix_with(&path, 0o666, || {
            // The attacker's move, right between bind and chmod.
            std::os::unix::fs::symlink(&target, &path).unwrap();
        })
        .unwrap();
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o600);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket(), "the symlink was replaced");
        assert_eq!(meta.mode() & 0o777, 0o666);
        drop(std::os::unix::net::UnixStream::connect(&path).expect("the socket answers"));
        drop(listener);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "no private directory is left: {left:?}");
    }
}
