//! Descriptor exhaustion: the real `cerberus` binary under a low open-file limit, its
//! forward_auth and admin ports flooded with more idle TCP connections than the limit
//! allows (loopback, bounded). The socket door must keep answering, and the shedding
//! must show in the metrics.

mod support;

use bouncer_api::{Client, ClientConfig, Remediation, Status};
use std::net::{IpAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");
/// The soft and hard open-file limit the daemon runs under.
const NOFILE: u64 = 256;
const TOKEN: &str = "0123456789abcdef0123456789abcdef-flood";

/// Starts the daemon with `RLIMIT_NOFILE` at [`NOFILE`] (soft and hard, so it cannot be
/// raised) and waits until all three doors answer.
async fn daemon(dir: &Path, fa: u16, admin: u16) -> Child {
    let cfg = dir.join("cerberus.yaml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir: {d}\nsocket: {d}/cerberus.sock\nforward_auth_listen: 127.0.0.1:{fa}\n\
             admin_listen: 127.0.0.1:{admin}\nadmin_token: {TOKEN}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["-c", cfg.to_str().unwrap(), "run"])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    // SAFETY: only setrlimit runs between fork and exec (async-signal-safe).
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NOFILE as libc::rlim_t,
                rlim_max: NOFILE as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start cerberus");
    let sock = dir.join("cerberus.sock");
    support::wait_for("the daemon's doors", 20, || {
        sock.exists()
            && TcpStream::connect(("127.0.0.1", fa)).is_ok()
            && TcpStream::connect(("127.0.0.1", admin)).is_ok()
    })
    .await;
    child
}

/// Opens up to `n` idle connections to `port` (each waits at most 1 s to connect).
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = ([127, 0, 0, 1], port).into();
    (0..n)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect()
}

/// One lookup on a fresh socket connection (a new accept each time).
async fn lookup(socket: &Path, ip: &str) -> Result<(Status, Remediation), String> {
    let client = Client::new(
        ClientConfig::new(socket)
            .connections(1)
            .timeout(Duration::from_secs(3)),
    );
    let ip: IpAddr = ip.parse().unwrap();
    client
        .lookup(ip)
        .await
        .map(|a| (a.status, a.remediation))
        .map_err(|e| e.to_string())
}

/// The sum of the series of `name` whose line contains `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_lookups_keep_answering_while_the_http_doors_are_flooded() {
    let dir = tempfile::tempdir().unwrap();
    let (fa, admin) = (support::caddy::free_port(), support::caddy::free_port());
    let mut child = daemon(dir.path(), fa, admin).await;
    let base = format!("http://127.0.0.1:{admin}");
    let http = reqwest::Client::new();
    let banned = http
        .post(format!("{base}/api/v1/cerberus/crowdsec/ban"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"value": "192.0.2.7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(banned.status().as_u16(), 201);
    let socket = dir.path().join("cerberus.sock");

    // More idle connections than the daemon has descriptors, on both HTTP doors.
    let held: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        let mut held = flood(fa, NOFILE as usize + 44);
        held.extend(flood(admin, 100));
        held
    })
    .await
    .unwrap();
    assert!(
        held.len() as u64 > NOFILE,
        "the flood got {} connections",
        held.len()
    );

    for round in 0..10 {
        let ban = lookup(&socket, "192.0.2.7").await;
        assert_eq!(
            ban,
            Ok((Status::Ok, Remediation::Ban)),
            "round {round}: a banned IP during the flood; log:\n{}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        let allow = lookup(&socket, "198.51.100.1").await;
        assert_eq!(allow, Ok((Status::Ok, Remediation::Allow)), "round {round}");
    }
    // The CLI's lookup too (its own process, its own connection).
    let out = Command::new(BIN)
        .args(["lookup", "192.0.2.7", "--socket", socket.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["remediation"], "ban");

    drop(held);
    // The admin API serves again once the flood is gone; the shedding was counted.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let r = http.get(format!("{base}/metrics")).send().await;
        if let Ok(r) = r {
            if r.status().is_success() {
                break r.text().await.unwrap();
            }
        }
        assert!(Instant::now() < deadline, "the admin API did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shed = "cerberus_http_connections_shed_total";
    assert!(
        metric(&text, shed, "door=\"forward_auth\"") > 0.0,
        "forward_auth shedding counted:\n{text}"
    );
    assert!(
        metric(&text, shed, "door=\"admin\"") > 0.0,
        "admin shedding counted:\n{text}"
    );
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap();
    assert!(log.contains("closed unserved"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    child.kill().await.unwrap();
}
