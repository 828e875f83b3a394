//! The daemon's own sd_notify messages to systemd: READY=1 once the persisted decisions
//! are enforced and the doors listen, STATUS= with a one-line state, WATCHDOG=1 while the
//! socket door answers, STOPPING=1 on shutdown.
//!
//! The protocol (sd_notify(3)): one datagram of `KEY=VALUE` lines sent to the Unix socket
//! named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). The watchdog
//! period is `$WATCHDOG_USEC`, meant for us only when `$WATCHDOG_PID` is unset or our pid;
//! we send at half of it, as sd_watchdog_enabled(3) advises. Without `$NOTIFY_SOCKET`
//! every call is a no-op. This is separate from the managed engine's notify socket
//! ([`crate::engine::supervisor`]), where cerberus is the listener, not the sender.

use crate::app::Running;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// How often STATUS= is refreshed when systemd asked for no watchdog.
const STATUS_PERIOD: Duration = Duration::from_secs(30);
/// Longest wait for the socket door's answer to the watchdog's ping.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Where sd_notify messages go, and how often the watchdog wants one.
#[derive(Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A variable that
    /// cannot be used is logged and left out (the daemon runs on without it).
    pub fn from_env() -> Notifier {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let Some(name) = var("NOTIFY_SOCKET") else {
            return Notifier::default();
        };
        let target = match Target::open(&name) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                warn!("NOTIFY_SOCKET={name:?} cannot be used ({e}); not telling systemd our state");
                return Notifier::default();
            }
        };
        let watchdog = watchdog_period(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
        .unwrap_or_else(|e| {
            warn!("{e}; not feeding the systemd watchdog");
            None
        });
        debug!("sd_notify to {name}, watchdog every {watchdog:?}");
        Notifier {
            target: Some(target),
            watchdog,
        }
    }

    /// Sends one message (`KEY=VALUE` lines). A failure is logged, never fatal.
    pub fn send(&self, message: &str) {
        let Some(t) = &self.target else { return };
        if let Err(e) = t.socket.send_to_addr(message.as_bytes(), &t.addr) {
            warn!("sd_notify to {} failed: {e}", t.name);
        }
    }

    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", one_line(line)));
    }

    /// READY=1 with the state, then a task that refreshes STATUS= and feeds the watchdog
    /// until aborted. Call once [`crate::app::start`] returned: the persisted decisions
    /// are enforced and the doors listen.
    pub fn ready(&self, running: &Running) -> Option<JoinHandle<()>> {
        self.target.as_ref()?;
        self.send(&format!("READY=1\nSTATUS={}", status_line(running)));
        let period = self.watchdog.unwrap_or(STATUS_PERIOD);
        let check = Check {
            config: running.config.clone(),
            decider: running.decider.clone(),
            stats: running.stats.clone(),
        };
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.beat(&check).await;
            }
        }))
    }

    /// One watchdog round: WATCHDOG=1 only when the socket door answers a ping.
    async fn beat(&self, check: &Check) {
        let socket = check.config.socket.clone();
        let ping = tokio::task::spawn_blocking(move || ping(socket))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let status = check.line();
        match ping {
            Ok(()) if self.watchdog.is_some() => self.send(&format!("WATCHDOG=1\nSTATUS={status}")),
            Ok(()) => self.status(&status),
            Err(e) => {
                warn!("watchdog: the socket door does not answer ({e}); not telling systemd we are alive");
                self.status(&format!("socket door not answering: {e}"));
            }
        }
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

impl Target {
    fn open(name: &str) -> std::io::Result<Target> {
        let addr = if let Some(abs) = name.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abs.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(PathBuf::from(name))?
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor @abstract",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        // A full receive queue must never block the daemon; the message is dropped.
        socket.set_nonblocking(true)?;
        Ok(Target {
            socket,
            addr,
            name: name.to_string(),
        })
    }
}

/// The watchdog period we keep: half of `WATCHDOG_USEC`, when it is meant for `pid`.
pub fn watchdog_period(
    usec: Option<&str>,
    for_pid: Option<&str>,
    pid: u32,
) -> Result<Option<Duration>, String> {
    let Some(usec) = usec else { return Ok(None) };
    if let Some(p) = for_pid {
        match p.trim().parse::<u32>() {
            Ok(p) if p == pid => {}
            Ok(_) => return Ok(None),
            Err(_) => return Err(format!("WATCHDOG_PID={p:?} is not a pid")),
        }
    }
    match usec.trim().parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(us) => Ok(Some(
            Duration::from_micros(us / 2).max(Duration::from_millis(1)),
        )),
        Err(_) => Err(format!(
            "WATCHDOG_USEC={usec:?} is not a number of microseconds"
        )),
    }
}

/// What the status task reads: the parts of [`Running`] it needs, shared.
struct Check {
    config: Arc<crate::config::Config>,
    decider: Arc<crate::store::Decider>,
    stats: Arc<crate::lapi::sync::SyncStats>,
}

impl Check {
    fn line(&self) -> String {
        let decisions = self.decider.snapshot().len();
        let protection = if self.decider.enabled() {
            ""
        } else {
            "protection off; "
        };
        let source = if self.config.standalone() {
            "standalone".to_string()
        } else {
            let s = &self.stats;
            let lapi = if self.config.engine.enabled {
                "the engine's LAPI"
            } else {
                "LAPI"
            };
            match s.failing() {
                Some(reason) => format!("{lapi} failing ({reason})"),
                None if s.first_sync_done.load(Ordering::Relaxed) => {
                    let ago = (crate::clock::now_ms() - s.last_success_ms.load(Ordering::Relaxed))
                        .max(0)
                        / 1000;
                    format!("{lapi} ok, last pull {ago}s ago")
                }
                None => format!("{lapi}: first pull pending"),
            }
        };
        format!("{protection}enforcing {decisions} decisions; {source}")
    }
}

/// The one-line state given with READY=1 and refreshed by the status task.
pub fn status_line(running: &Running) -> String {
    Check {
        config: running.config.clone(),
        decider: running.decider.clone(),
        stats: running.stats.clone(),
    }
    .line()
}

fn ping(socket: PathBuf) -> Result<(), String> {
    let cfg = bouncer_api::BlockingConfig::new(socket).timeout(PING_TIMEOUT);
    bouncer_api::BlockingClient::connect_with(cfg)
        .and_then(|mut c| c.ping())
        .map_err(|e| e.to_string())
}

/// STATUS= is one line: newlines would start new `KEY=VALUE` assignments.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_period_is_half_and_only_for_us() {
        let p = |u, w| watchdog_period(u, w, 42);
        assert_eq!(p(Some("2000000"), None), Ok(Some(Duration::from_secs(1))));
        assert_eq!(
            p(Some("2000000"), Some("42")),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(p(Some("2000000"), Some("7")), Ok(None));
        assert_eq!(p(Some("0"), None), Ok(None));
        assert_eq!(p(None, Some("42")), Ok(None));
        assert!(p(Some("soon"), None).unwrap_err().contains("WATCHDOG_USEC"));
        assert!(p(Some("1"), Some("x"))
            .unwrap_err()
            .contains("WATCHDOG_PID"));
    }

    #[test]
    fn messages_reach_a_path_socket_and_status_stays_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Arc::new(Target::open(path.to_str().unwrap()).unwrap())),
            watchdog: None,
        };
        n.status("two\nlines");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=two lines");
    }

    #[test]
    fn a_relative_notify_socket_is_refused() {
        assert!(Target::open("notify.sock").is_err());
    }
}
