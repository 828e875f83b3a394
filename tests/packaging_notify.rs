//! The daemon's sd_notify messages, as systemd gets them under `Type=notify`: the real
//! binary runs with `NOTIFY_SOCKET` naming a datagram socket of this test. READY=1 comes
//! only when the persisted decisions are enforced (a lookup right after it answers ban),
//! STATUS= lines say the state, WATCHDOG=1 comes again and again when `WATCHDOG_USEC` is
//! set and stops when the socket door no longer answers, STOPPING=1 on SIGTERM; a daemon
//! that cannot start never says READY=1.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::caddy::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");
const BANNED: &str = "198.51.100.77";

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, socket: &Path) -> PathBuf {
    let config = dir.join("cerberus.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {}\nsocket: {}\nadmin_listen: 127.0.0.1:{}\nforward_auth_listen: off\n\
             capi_url: http://127.0.0.1:9\nheartbeat_interval: 0s\n",
            dir.display(),
            socket.display(),
            free_port()
        ),
    )
    .unwrap();
    config
}

/// `cerberus run -c config`, telling systemd's messages to `notify` when given, with
/// `WATCHDOG_USEC=usec` when given (and none of the three inherited).
fn command(config: &Path, notify: Option<&Path>, usec: Option<&str>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    if let Some(n) = notify {
        cmd.env("NOTIFY_SOCKET", n);
    }
    if let Some(u) = usec {
        cmd.env("WATCHDOG_USEC", u);
    }
    cmd
}

fn spawn(config: &Path, notify: Option<&Path>, usec: Option<&str>) -> Daemon {
    Daemon(command(config, notify, usec).spawn().unwrap())
}

fn lookup(socket: &Path) -> Result<bouncer_api::LookupAnswer, bouncer_api::ClientError> {
    let cfg = bouncer_api::BlockingConfig::new(socket).timeout(Duration::from_secs(2));
    bouncer_api::BlockingClient::connect_with(cfg)
        .and_then(|mut c| c.lookup(BANNED.parse().unwrap()))
}

/// The next datagram, or None after `secs`.
fn recv(rx: &UnixDatagram, secs: u64) -> Option<String> {
    rx.set_read_timeout(Some(Duration::from_secs(secs)))
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = rx.recv(&mut buf).ok()?;
    Some(String::from_utf8(buf[..n].to_vec()).unwrap())
}

/// Datagrams until one has a line `want`; panics after `secs`.
fn until(rx: &UnixDatagram, want: &str, secs: u64, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(m) = recv(rx, 1) {
            let hit = m.lines().any(|l| l == want);
            seen.push(m);
            if hit {
                return;
            }
        }
    }
    panic!("no {want} within {secs}s; got {seen:?}");
}

/// First run: a local ban, persisted; SIGTERM. Returns the config for the second run.
fn seed(dir: &Path, socket: &Path) -> PathBuf {
    let config = write_config(dir, socket);
    let mut d = spawn(&config, None, None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while lookup(socket).is_err() {
        assert!(Instant::now() < deadline, "the first run did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(BIN)
        .args([
            "-c",
            config.to_str().unwrap(),
            "ban",
            BANNED,
            "--duration",
            "4h",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lookup(socket).unwrap().remediation.as_str(), "ban");
    terminate(&mut d);
    config
}

fn terminate(d: &mut Daemon) -> std::process::ExitStatus {
    assert_eq!(unsafe { libc::kill(d.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = d.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ready_after_persisted_decisions_then_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cerberus.sock");
    let config = seed(dir.path(), &socket);

    let notify = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    // 300 ms: the daemon feeds the watchdog every 150 ms.
    let mut d = spawn(&config, Some(&notify), Some("300000"));
    let mut seen = Vec::new();
    until(&rx, "READY=1", 30, &mut seen);
    // Right after READY=1, the persisted ban is enforced on the socket door.
    let answer = lookup(&socket).expect("the socket door answers once READY=1 is sent");
    assert_eq!(answer.remediation.as_str(), "ban", "{answer:?}");
    let ready = seen.last().unwrap().clone();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("enforcing 1 decisions")),
        "READY=1 comes with the state: {ready:?}"
    );
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=starting")),
        "a STATUS= before READY=1: {seen:?}"
    );

    let mut beats = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while beats < 3 {
        assert!(
            Instant::now() < deadline,
            "only {beats} WATCHDOG=1 in 30s: {seen:?}"
        );
        if let Some(m) = recv(&rx, 1) {
            if m.lines().any(|l| l == "WATCHDOG=1") {
                beats += 1;
                assert!(
                    m.contains("STATUS=enforcing 1 decisions; standalone"),
                    "{m:?}"
                );
            }
            seen.push(m);
        }
    }

    // The socket door gone (its file removed): the watchdog is no longer fed, and
    // STATUS= says why; systemd would restart the daemon after WatchdogSec.
    std::fs::remove_file(&socket).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            Instant::now() < deadline,
            "no STATUS about the socket door: {seen:?}"
        );
        if let Some(m) = recv(&rx, 1) {
            let told = m.starts_with("STATUS=socket door not answering");
            seen.push(m);
            if told {
                break;
            }
        }
    }
    let mut after = Vec::new();
    while after.len() < 4 {
        after.push(recv(&rx, 5).expect("STATUS= goes on every period"));
    }
    assert!(
        after.iter().all(|m| !m.contains("WATCHDOG=1")),
        "fed while the door is gone: {after:?}"
    );

    let status = terminate(&mut d);
    let mut rest = Vec::new();
    until(&rx, "STOPPING=1", 5, &mut rest);
    assert!(status.success(), "exit status {status}");
}

#[test]
fn no_watchdog_without_watchdog_usec_and_no_ready_when_start_fails() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();

    // The socket's directory is a file: the doors cannot open, start fails.
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let bad = write_config(dir.path(), &dir.path().join("not-a-dir/cerberus.sock"));
    let out = command(&bad, Some(&notify), None).output().unwrap();
    assert!(!out.status.success());
    let mut got = Vec::new();
    while let Some(m) = recv(&rx, 1) {
        got.push(m);
    }
    assert!(!got.iter().any(|m| m.contains("READY=1")), "{got:?}");
    assert!(
        got.iter().any(|m| m.starts_with("STATUS=failed to start")),
        "the failure is told: {got:?}"
    );

    // A good start with WATCHDOG_USEC unset: READY=1, and no WATCHDOG=1 afterwards.
    let sub = dir.path().join("ok");
    std::fs::create_dir(&sub).unwrap();
    let config = write_config(&sub, &sub.join("cerberus.sock"));
    let mut d = spawn(&config, Some(&notify), None);
    let mut seen = Vec::new();
    until(&rx, "READY=1", 30, &mut seen);
    let mut after = Vec::new();
    while let Some(m) = recv(&rx, 1) {
        after.push(m);
    }
    assert!(!after.iter().any(|m| m.contains("WATCHDOG=1")), "{after:?}");
    terminate(&mut d);
}
