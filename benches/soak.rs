//! Soak: the release daemon (`target/release/cerberus`, a child process) under steady
//! lookups and deltas for a long time, its RSS and the lookups' p99 sampled every minute.
//!
//! ```text
//! cargo bench --bench soak -- 100000 1800     # DECISIONS SECONDS (the defaults)
//! cargo bench --bench soak -- 2000 6          # the smoke run of scripts/test.sh
//! ```
//!
//! - A LAPI stand-in on loopback holds DECISIONS single-IP bans. Every pull after the
//!   startup one gets a delta: DECISIONS/1000 (at least 1) new bans and as many of the
//!   oldest deleted, so the set keeps its size while all of it turns over.
//! - The daemon pulls every 2 s (`update_frequency: 2s`) and serves its Unix socket and
//!   forward_auth on 127.0.0.1.
//! - Bounded load: two socket connections at 500 lookups/s each, two forward_auth
//!   clients at 100 requests/s each (`X-Forwarded-For` the address asked); half the
//!   addresses asked are live bans, half never banned.
//! - A row every 60 s (every third of the run when it is shorter than 3 minutes): the
//!   daemon's RSS (VmRSS of /proc/PID/status), lookups and p50/p99 per door in that
//!   minute, deltas served so far.
//! - At the end the churn stops; three update periods later (any delta in flight is
//!   served and pulled by then), 100 live bans must answer ban and 100 deleted ones allow
//!   on the socket, and no lookup may have failed.

#[allow(dead_code)]
mod common;

use bouncer_api::{decode_response, encode_request, Remediation, Request, Response};
use bytes::BytesMut;
use common::{ip, percentile};
use std::collections::VecDeque;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");
const UPDATE_SECS: u64 = 2;

/// The decisions the stand-in holds, oldest first, and the addresses deleted lately.
struct Churn {
    active: VecDeque<(i64, u32)>,
    deleted: VecDeque<u32>,
    next_id: i64,
    per_delta: usize,
    stopped: bool,
    deltas: u64,
}

impl Churn {
    fn random_active(&self, r: u64) -> Ipv4Addr {
        Ipv4Addr::from(self.active[(r % self.active.len() as u64) as usize].1)
    }
}

/// Each door's latencies since the last row, and failures over the whole run.
#[derive(Default)]
struct Meter {
    socket: Mutex<Vec<Duration>>,
    forward_auth: Mutex<Vec<Duration>>,
    failures: AtomicU64,
}

fn main() {
    let nums: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = nums.first().copied().unwrap_or(100_000) as usize;
    let secs = nums.get(1).copied().unwrap_or(1800);
    let every = if secs >= 180 { 60 } else { (secs / 3).max(1) };
    common::runtime().block_on(soak(
        n,
        Duration::from_secs(secs),
        Duration::from_secs(every),
    ));
}

async fn soak(n: usize, total: Duration, every: Duration) {
    let churn = Arc::new(Mutex::new(Churn {
        active: (1..=n as i64).map(|id| (id, address(id))).collect(),
        deleted: VecDeque::new(),
        next_id: n as i64 + 1,
        per_delta: (n / 1000).max(1),
        stopped: false,
        deltas: 0,
    }));
    let lapi = lapi_stand_in(churn.clone()).await;

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cerberus.sock");
    let fa_port = free_port();
    let config = dir.path().join("cerberus.yaml");
    std::fs::write(
        &config,
        format!(
            "api_url: {lapi}\napi_key: soak\nupdate_frequency: {UPDATE_SECS}s\n\
             usage_metrics_interval: 0s\ndata_dir: {data}\nsocket: {sock}\n\
             forward_auth_listen: 127.0.0.1:{fa_port}\nadmin_listen: \"off\"\nlog_level: warn\n",
            data = dir.path().join("data").display(),
            sock = socket.display(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon(
        Command::new(BIN)
            .args(["run", "-c", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cerberus"),
    );
    let pid = daemon.0.id();

    // Ready: the socket answers, and the first decision is banned.
    let started = Instant::now();
    let first = Ipv4Addr::from(address(1));
    loop {
        if let Ok(mut c) = Client::connect(&socket).await {
            if c.lookup(IpAddr::V4(first)).await == Remediation::Ban {
                break;
            }
        }
        assert!(daemon.0.try_wait().unwrap().is_none(), "cerberus exited");
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no startup pull"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "soak: {n} decisions, {} s, {} adds and deletes per delta every {UPDATE_SECS} s; \
         startup to first ban {:.1} s; RSS at start {:.1} MiB",
        total.as_secs(),
        churn.lock().unwrap().per_delta,
        started.elapsed().as_secs_f64(),
        rss_mib(pid)
    );
    println!();
    println!("| minute | RSS | socket lookups | socket p50 | socket p99 | forward_auth requests | forward_auth p50 | forward_auth p99 | deltas served |");
    println!("|---|---|---|---|---|---|---|---|---|");

    let meter = Arc::new(Meter::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for k in 0..2u64 {
        load.push(tokio::spawn(socket_load(
            socket.clone(),
            churn.clone(),
            meter.clone(),
            stop.clone(),
            k,
        )));
        load.push(tokio::spawn(forward_auth_load(
            fa_port,
            churn.clone(),
            meter.clone(),
            stop.clone(),
            k,
        )));
    }

    let began = Instant::now();
    let mut row = 0;
    while began.elapsed() < total {
        tokio::time::sleep(every.min(total - began.elapsed())).await;
        assert!(daemon.0.try_wait().unwrap().is_none(), "cerberus exited");
        row += 1;
        let socket_lat = std::mem::take(&mut *meter.socket.lock().unwrap());
        let fa_lat = std::mem::take(&mut *meter.forward_auth.lock().unwrap());
        println!(
            "| {:.1} | {:.1} MiB | {} | {} | {} | {} | {} | {} | {} |",
            began.elapsed().as_secs_f64() / 60.0,
            rss_mib(pid),
            socket_lat.len(),
            pct(socket_lat.clone(), 0.50),
            pct(socket_lat, 0.99),
            fa_lat.len(),
            pct(fa_lat.clone(), 0.50),
            pct(fa_lat, 0.99),
            churn.lock().unwrap().deltas,
        );
        std::io::stdout().flush().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(row > 0);
    let failures = meter.failures.load(Ordering::Relaxed);
    assert_eq!(
        failures, 0,
        "lookups that failed (connection or protocol errors)"
    );

    // The churn stops; three update periods later the daemon holds the stand-in's set.
    churn.lock().unwrap().stopped = true;
    tokio::time::sleep(Duration::from_secs(3 * UPDATE_SECS)).await;
    let (live, gone) = {
        let c = churn.lock().unwrap();
        let live: Vec<Ipv4Addr> = (0..100).map(|i| c.random_active(i * 7919 + 1)).collect();
        let gone: Vec<Ipv4Addr> = c
            .deleted
            .iter()
            .rev()
            .take(100)
            .map(|&a| a.into())
            .collect();
        (live, gone)
    };
    let mut client = Client::connect(&socket).await.expect("connect");
    for a in &live {
        assert_eq!(
            client.lookup(IpAddr::V4(*a)).await,
            Remediation::Ban,
            "{a} is banned at LAPI"
        );
    }
    for a in &gone {
        assert_eq!(
            client.lookup(IpAddr::V4(*a)).await,
            Remediation::Allow,
            "{a} was deleted at LAPI"
        );
    }
    println!();
    println!(
        "end: {} deltas served, {} live bans answer ban and {} deleted ones allow, 0 failed lookups; RSS {:.1} MiB",
        churn.lock().unwrap().deltas,
        live.len(),
        gone.len(),
        rss_mib(pid)
    );
    daemon.stop();
}

/// The address of decision `id`: 10.0.0.0/8 and up (see `common::ip`); never 198.18/15,
/// where the misses are asked.
fn address(id: i64) -> u32 {
    u32::from(ip(id as u32))
}

fn miss(r: u64) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0000 | (r as u32 & 0x1_ffff))
}

fn pct(mut v: Vec<Duration>, p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    format!("{:.0} us", percentile(&v, p).as_secs_f64() * 1e6)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The child daemon, stopped with SIGTERM (then SIGKILL) when dropped.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_decision(out: &mut String, id: i64, addr: u32, duration: &str) {
    if !out.ends_with('[') {
        out.push(',');
    }
    out.push_str(&format!(
        r#"{{"duration":"{duration}","id":{id},"origin":"crowdsec","scenario":"crowdsecurity/soak","scope":"Ip","type":"ban","value":"{}","simulated":false}}"#,
        Ipv4Addr::from(addr)
    ));
}

/// GET /v1/decisions/stream as LAPI 1.4.6 answers it (crowdsec
/// pkg/apiserver/controllers/v1/decisions.go, StreamDecision: `{"new": [...], "deleted":
/// [...]}`, null for an empty list; deleted decisions carry a negative remaining
/// duration). A delta is only counted as served once written whole.
async fn lapi_stand_in(churn: Arc<Mutex<Churn>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let churn = churn.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let line = head.lines().next().unwrap_or("");
                if !line.contains("/v1/decisions/stream") {
                    let _ = sock
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                let (body, commit) = {
                    let c = churn.lock().unwrap();
                    if line.contains("startup=true") {
                        let mut b = String::from(r#"{"new":["#);
                        for &(id, a) in &c.active {
                            json_decision(&mut b, id, a, "167h59m59s");
                        }
                        b.push_str(r#"],"deleted":null}"#);
                        (b, 0)
                    } else if c.stopped {
                        (r#"{"new":null,"deleted":null}"#.to_string(), 0)
                    } else {
                        let k = c.per_delta;
                        let mut b = String::from(r#"{"new":["#);
                        for j in 0..k as i64 {
                            json_decision(&mut b, c.next_id + j, address(c.next_id + j), "4h");
                        }
                        b.push_str(r#"],"deleted":["#);
                        for &(id, a) in c.active.iter().take(k) {
                            json_decision(&mut b, id, a, "-1s");
                        }
                        b.push_str("]}");
                        (b, k)
                    }
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if sock.write_all(reply.as_bytes()).await.is_err()
                    || sock.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
                let _ = sock.shutdown().await;
                if commit > 0 {
                    let mut c = churn.lock().unwrap();
                    for _ in 0..commit {
                        let (_, a) = c.active.pop_front().unwrap();
                        c.deleted.push_back(a);
                        let id = c.next_id;
                        c.active.push_back((id, address(id)));
                        c.next_id += 1;
                    }
                    while c.deleted.len() > 10_000 {
                        c.deleted.pop_front();
                    }
                    c.deltas += 1;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// One socket connection, one lookup at a time.
struct Client {
    stream: UnixStream,
    input: BytesMut,
    out: BytesMut,
    id: u32,
}

impl Client {
    async fn connect(path: &Path) -> std::io::Result<Client> {
        Ok(Client {
            stream: UnixStream::connect(path).await?,
            input: BytesMut::with_capacity(4096),
            out: BytesMut::with_capacity(64),
            id: 0,
        })
    }

    async fn try_lookup(&mut self, addr: IpAddr) -> Result<Remediation, String> {
        self.id = self.id.wrapping_add(1);
        self.out.clear();
        encode_request(&Request::Lookup { id: self.id, addr }, &mut self.out);
        self.stream
            .write_all(&self.out)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            match decode_response(&mut self.input).map_err(|e| format!("{e:?}"))? {
                Some(Response::Lookup { id, answer }) if id == self.id => {
                    return Ok(answer.remediation)
                }
                Some(other) => return Err(format!("unexpected answer {other:?}")),
                None => {}
            }
            self.input.reserve(4096);
            let k = self
                .stream
                .read_buf(&mut self.input)
                .await
                .map_err(|e| e.to_string())?;
            if k == 0 {
                return Err("the daemon closed the connection".into());
            }
        }
    }

    async fn lookup(&mut self, addr: IpAddr) -> Remediation {
        self.try_lookup(addr).await.expect("socket lookup")
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The address to ask next: a live ban or a never-banned address, in turn.
fn next_address(churn: &Mutex<Churn>, state: &mut u64) -> Ipv4Addr {
    let r = xorshift(state);
    if r & 1 == 0 {
        churn.lock().unwrap().random_active(r >> 1)
    } else {
        miss(r >> 1)
    }
}

async fn socket_load(
    socket: std::path::PathBuf,
    churn: Arc<Mutex<Churn>>,
    meter: Arc<Meter>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut client = Client::connect(&socket)
        .await
        .expect("connect to the socket");
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut state = 0x9e37_79b9_7f4a_7c15 ^ (seed + 1);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let addr = next_address(&churn, &mut state);
        let t = Instant::now();
        match client.try_lookup(IpAddr::V4(addr)).await {
            Ok(_) => meter.socket.lock().unwrap().push(t.elapsed()),
            Err(e) => {
                eprintln!("soak: socket lookup of {addr}: {e}");
                meter.failures.fetch_add(1, Ordering::Relaxed);
                client = Client::connect(&socket)
                    .await
                    .expect("reconnect to the socket");
            }
        }
    }
}

async fn forward_auth_load(
    port: u16,
    churn: Arc<Mutex<Churn>>,
    meter: Arc<Meter>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/");
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut state = 0x2545_f491_4f6c_dd1d ^ (seed + 1);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let addr = next_address(&churn, &mut state);
        let t = Instant::now();
        let answer = http
            .get(&url)
            .header("X-Forwarded-For", addr.to_string())
            .send()
            .await;
        let ok = match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                r.bytes().await.is_ok() && (status == 200 || status == 403)
            }
            Err(_) => false,
        };
        if ok {
            meter.forward_auth.lock().unwrap().push(t.elapsed());
        } else {
            eprintln!("soak: forward_auth request for {addr} failed");
            meter.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}
