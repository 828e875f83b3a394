//! One engine process: spawned in a process group of its own by a thread that lives as
//! long as it (for `PR_SET_PDEATHSIG`), its output kept for error messages, its exit read;
//! the readiness socket; and an engine left behind by an earlier run of cerberus.

use super::credentials::new_key;
use super::{lock, unix_now, Inner, OUTPUT_LINES};
use crate::engine::pidfile;

use serde::Serialize;
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

/// How an engine process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    pub pid: u32,
    /// `exit status 1`, `killed by signal 9 (SIGKILL)`.
    pub status: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Unix time, seconds.
    pub at: u64,
    /// Its last stdout/stderr lines.
    pub last_output: Vec<String>,
}

impl ExitInfo {
    pub(super) fn new(
        pid: u32,
        status: &io::Result<ExitStatus>,
        last_output: Vec<String>,
    ) -> ExitInfo {
        let (text, code, signal) = match status {
            Ok(s) => (describe_status(s), s.code(), s.signal()),
            Err(e) => (format!("unknown exit ({e})"), None, None),
        };
        ExitInfo {
            pid,
            status: text,
            code,
            signal,
            at: unix_now(),
            last_output,
        }
    }
}

pub(super) fn describe_status(s: &ExitStatus) -> String {
    if let Some(code) = s.code() {
        return format!("exit status {code}");
    }
    match s.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => format!("{s}"),
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// One engine process. A thread of its own spawns it and waits for it: `PR_SET_PDEATHSIG`
/// fires when the thread that forked the child ends, and this thread ends only after the
/// engine did (or with cerberus).
pub(super) struct Proc {
    pub(super) pid: u32,
    /// Set, under the lock, once the pid is reaped; signals are sent only under the lock
    /// and while it is false, so never to a recycled pid.
    pub(super) reaped: Arc<Mutex<bool>>,
    pub(super) exit: watch::Receiver<Option<ExitInfo>>,
    pub(super) output: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    pub(super) fn spawn(
        bin: &Path,
        args: &[String],
        cwd: &Path,
        notify_socket: Option<&str>,
    ) -> io::Result<Arc<Proc>> {
        let parent = std::process::id() as libc::pid_t;
        let reaped = Arc::new(Mutex::new(false));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (exit_tx, exit_rx) = watch::channel(None);
        let (spawned_tx, spawned_rx) = mpsc::sync_channel::<io::Result<u32>>(1);
        let mut cmd = std::process::Command::new(bin);
        cmd.args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Never cerberus' own (under systemd): the engine would speak for it.
            .env_remove("NOTIFY_SOCKET")
            .process_group(0);
        if let Some(name) = notify_socket {
            cmd.env("NOTIFY_SOCKET", name);
        }
        // SAFETY: only async-signal-safe calls (prctl, getppid) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGTERM as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // cerberus died between the fork and the prctl: the signal was missed.
                if libc::getppid() != parent {
                    return Err(io::Error::other(
                        "cerberus exited while starting the engine",
                    ));
                }
                Ok(())
            });
        }
        let (thread_reaped, thread_output) = (reaped.clone(), output.clone());
        std::thread::Builder::new()
            .name("crowdsec-engine".into())
            .spawn(move || {
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = spawned_tx.send(Err(e));
                        return;
                    }
                };
                let pid = child.id();
                let (done_tx, done_rx) = mpsc::channel::<()>();
                let mut readers = 0;
                if let Some(out) = child.stdout.take() {
                    readers += read_lines(out, pid, thread_output.clone(), done_tx.clone());
                }
                if let Some(err) = child.stderr.take() {
                    readers += read_lines(err, pid, thread_output.clone(), done_tx.clone());
                }
                drop(done_tx);
                let _ = spawned_tx.send(Ok(pid));
                wait_no_reap(pid);
                let status = {
                    let mut reaped = thread_reaped.lock().unwrap_or_else(|e| e.into_inner());
                    // The pid is a zombie until reaped: its group id cannot be reused, so
                    // this reaches only what is left of the engine's own group.
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
                    let status = child.wait();
                    *reaped = true;
                    status
                };
                // Let the readers drain what was written before the exit (bounded: a
                // process outside the group may still hold the pipe).
                let deadline = Instant::now() + Duration::from_secs(2);
                for _ in 0..readers {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if done_rx.recv_timeout(left).is_err() {
                        break;
                    }
                }
                let lines = thread_output
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                exit_tx.send_replace(Some(ExitInfo::new(pid, &status, lines)));
            })?;
        let pid = spawned_rx
            .recv()
            .map_err(|_| io::Error::other("the engine's spawner thread ended"))??;
        Ok(Arc::new(Proc {
            pid,
            reaped,
            exit: exit_rx,
            output,
        }))
    }

    /// Sends `sig` to the whole process group; false when the engine is already gone.
    pub(super) fn signal_group(&self, sig: libc::c_int) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: kill has no memory-safety preconditions.
        !*reaped && unsafe { libc::kill(-(self.pid as libc::pid_t), sig) } == 0
    }

    /// Sends `sig` to the engine's main process only.
    pub(super) fn signal_leader(&self, sig: libc::c_int) -> bool {
        let reaped = self.reaped.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: kill has no memory-safety preconditions.
        !*reaped && unsafe { libc::kill(self.pid as libc::pid_t, sig) } == 0
    }

    pub(super) fn exited(&self) -> Option<ExitInfo> {
        self.exit.borrow().clone()
    }

    pub(super) async fn wait_exit(&self) -> ExitInfo {
        let mut rx = self.exit.clone();
        let info = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        match info {
            Some(info) => info,
            // The thread never drops the sender before sending; be safe anyway.
            None => std::future::pending().await,
        }
    }

    pub(super) fn last_output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Reads lines of one engine stream into the ring buffer (and the debug log); returns 1
/// when its thread started.
pub(super) fn read_lines(
    stream: impl Read + Send + 'static,
    pid: u32,
    ring: Arc<Mutex<VecDeque<String>>>,
    done: mpsc::Sender<()>,
) -> usize {
    let started = std::thread::Builder::new()
        .name("crowdsec-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if line.is_empty() {
                            continue;
                        }
                        debug!(target: "cerberus::engine::output", pid, "{line}");
                        let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
                        if ring.len() == OUTPUT_LINES {
                            ring.pop_front();
                        }
                        ring.push_back(line);
                    }
                }
            }
            let _ = done.send(());
        });
    usize::from(started.is_ok())
}

/// Blocks until `pid` (our child) has exited, without reaping it.
pub(super) fn wait_no_reap(pid: u32) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer to a siginfo_t of ours.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// True once `pid` is gone: no such process, or a zombie whose threads have all ended
/// (an orphan's zombie may wait for a long time for a reaper).
pub(super) fn proc_gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    if state != Some(Some('Z')) {
        return false;
    }
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count() <= 1)
        .unwrap_or(true)
}

/// The live processes of process group `pgid`.
pub(super) fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // After "comm) ": state, ppid, pgrp.
                    let rest = stat.rsplit_once(") ")?.1.to_string();
                    rest.split_whitespace().nth(2)?.parse::<u32>().ok()
                })
                == Some(pgid)
        })
        .filter(|pid| !proc_gone(*pid))
        .collect()
}

/// True when process `pid` runs with `-c config` on its command line.
pub(super) fn runs_config(pid: u32, config: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let want = config.as_os_str().as_encoded_bytes();
    args.windows(2).any(|w| w[0] == b"-c" && w[1] == want)
}

/// The engine's readiness notification: a datagram socket in the abstract namespace
/// (no file to clean up) given to the engine as `NOTIFY_SOCKET`.
pub(super) struct Notify {
    /// `@cerberus-engine-...`, as `NOTIFY_SOCKET` spells an abstract socket.
    pub(super) name: String,
    pub(super) sock: std::os::unix::net::UnixDatagram,
}

impl Notify {
    pub(super) fn bind() -> Option<Notify> {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("cerberus-engine-{}-{}", std::process::id(), new_key());
        let bound = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|addr| std::os::unix::net::UnixDatagram::bind_addr(&addr))
            .and_then(|sock| sock.set_nonblocking(true).map(|_| sock));
        match bound {
            Ok(sock) => Some(Notify {
                name: format!("@{name}"),
                sock,
            }),
            Err(e) => {
                warn!("cannot open a readiness socket for the engine ({e}); relying on GET /health alone");
                None
            }
        }
    }

    /// True when a `READY=1` arrived (reads what is queued, never waits).
    pub(super) fn ready(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut ready = false;
        while let Ok(n) = self.sock.recv(&mut buf) {
            ready |= buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1");
        }
        ready
    }
}

impl Inner {
    pub(super) fn write_pid_file(&self, pid: u32) {
        let path = self.pid_file();
        let write = || -> io::Result<()> {
            std::fs::create_dir_all(&self.settings.data_dir)?;
            // With its start time: a later run can tell the engine from a process that
            // got the same pid after a reboot or a wrap-around.
            pidfile::write(&path, pid)
        };
        if let Err(e) = write() {
            warn!(
                "cannot write the engine pid file {}: {e} (a leftover engine would not be found after a crash)",
                path.display()
            );
        }
    }

    /// Stops an engine that an earlier run of cerberus left behind: the process group
    /// named by the pid file, when its leader or another member still runs this config.
    pub(super) async fn stop_leftover(&self) {
        let path = self.pid_file();
        let recorded = match pidfile::read(&path) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(why) => {
                warn!("ignoring {}: {why}", path.display());
                let _ = std::fs::remove_file(&path);
                return;
            }
        };
        let pid = recorded.pid;
        let config = self.config();
        let ours = lock(&self.current)
            .as_ref()
            .is_some_and(|p| p.pid == pid && p.exited().is_none());
        let leader_alive = !proc_gone(pid);
        // A live process with that pid that started at another time is not the engine
        // that was recorded, whatever its command line says.
        let recycled = leader_alive && !recorded.same_process();
        if recycled {
            info!(
                "pid {pid} of {} now belongs to another process (it started at another time); leaving it alone",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            return;
        }
        // A live leader that runs something else: the pid was recycled; a dead leader:
        // its group (which keeps the id from being recycled) may still hold the engine.
        let leftover = !ours
            && if leader_alive {
                runs_config(pid, config)
            } else {
                group_members(pid).iter().any(|m| runs_config(*m, config))
            };
        if !leftover {
            let _ = std::fs::remove_file(&path);
            return;
        }
        warn!(
            "a CrowdSec engine from an earlier run still runs (process group {pid}, -c {}); stopping it",
            config.display()
        );
        // SAFETY: getpgid has no memory-safety preconditions.
        let leader_of_group = unsafe { libc::getpgid(pid as libc::pid_t) } == pid as libc::pid_t;
        let target = if leader_alive && !leader_of_group {
            pid as libc::pid_t
        } else {
            -(pid as libc::pid_t)
        };
        let gone = move || proc_gone(pid) && group_members(pid).is_empty();
        let wait = |limit: Duration| async move {
            let deadline = Instant::now() + limit;
            while !gone() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            gone()
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(target, libc::SIGTERM) };
        if !wait(self.settings.stop_grace).await {
            warn!("the leftover CrowdSec engine (process group {pid}) ignored SIGTERM; sending SIGKILL");
            // SAFETY: as above.
            unsafe { libc::kill(target, libc::SIGKILL) };
            if !wait(Duration::from_secs(10)).await {
                error!("the leftover CrowdSec engine (process group {pid}) survived SIGKILL");
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exit_statuses_read_well() {
        assert_eq!(
            describe_status(&ExitStatus::from_raw(1 << 8)),
            "exit status 1"
        );
        assert_eq!(
            describe_status(&ExitStatus::from_raw(9)),
            "killed by signal 9 (SIGKILL)"
        );
    }
}
