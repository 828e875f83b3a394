//! Load generator for the socket protocol: N connections, each with `depth` lookups
//! in flight, for a fixed time; prints lookups/s and latency percentiles.
//!
//! ```text
//! cargo run --release -p bouncer-api --example socket_load -- --socket /path/cerberus.sock
//! cargo run --release -p bouncer-api --example socket_load -- --serve   # built-in reference server
//! options: --connections 64 --depth 1 --seconds 5 --client-threads 1
//!          --server-threads 1 --server-mode pinned|mt --pool 0
//! ```
//!
//! `--serve` starts, on a temporary socket in this process, a minimal server written
//! the way the daemon should serve the protocol (one task per connection, decode every
//! request in the read buffer, encode all answers into one buffer, one write). It
//! shows what the protocol and the transport cost on this machine, without the
//! daemon's lookup.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bouncer_api::{
    decode_request, decode_response, encode_lookup_answer, encode_request, encode_response, Client,
    ClientConfig, LookupAnswer, Remediation, Request, Response,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

struct Args {
    socket: Option<PathBuf>,
    serve: bool,
    connections: usize,
    depth: usize,
    seconds: u64,
    client_threads: usize,
    server_threads: usize,
    /// Server: one multi-thread runtime (`mt`) or one current-thread runtime per
    /// thread with connections dealt round-robin (`pinned`).
    server_mode: String,
    /// 0: each of `connections` tasks drives its own raw connection. P > 0:
    /// `connections` caller tasks share a `bouncer_api::Client` with P connections.
    pool: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        socket: None,
        serve: false,
        connections: 64,
        depth: 1,
        seconds: 5,
        client_threads: 1,
        server_threads: 1,
        server_mode: "pinned".to_owned(),
        pool: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => a.socket = Some(PathBuf::from(value())),
            "--serve" => a.serve = true,
            "--connections" => a.connections = value().parse().expect("--connections N"),
            "--depth" => a.depth = value().parse().expect("--depth N"),
            "--seconds" => a.seconds = value().parse().expect("--seconds N"),
            "--client-threads" => a.client_threads = value().parse().expect("--client-threads N"),
            "--server-threads" => a.server_threads = value().parse().expect("--server-threads N"),
            "--server-mode" => a.server_mode = value(),
            "--pool" => a.pool = value().parse().expect("--pool N"),
            other => panic!("unknown option {other}"),
        }
    }
    assert!(
        a.serve || a.socket.is_some(),
        "give --socket PATH or --serve"
    );
    a
}

/// Reference server: what a daemon connection handler looks like.
async fn serve_connection(mut stream: UnixStream, table: Arc<HashMap<IpAddr, LookupAnswer>>) {
    let mut input = BytesMut::with_capacity(4096);
    let mut output = BytesMut::with_capacity(4096);
    let allow = LookupAnswer::<&str>::allow();
    loop {
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut fatal = false;
        loop {
            match decode_request(&mut input) {
                Ok(Some(Request::Lookup { id, addr })) => match table.get(&addr) {
                    Some(answer) => encode_lookup_answer(id, answer, &mut output),
                    None => encode_lookup_answer(id, &allow, &mut output),
                },
                Ok(Some(Request::Ping { id })) => {
                    encode_response(&Response::<&str>::Pong { id }, &mut output)
                }
                Ok(None) => break,
                Err(e) => {
                    encode_response(&e.error_response(), &mut output);
                    fatal = true;
                    break;
                }
            }
        }
        if stream.write_all(&output).await.is_err() || fatal {
            return;
        }
        output.clear();
        // read_buf fills only the spare capacity: keep some (reserve also reclaims
        // the space of consumed frames).
        if input.capacity() - input.len() < 1024 {
            input.reserve(4096);
        }
    }
}

fn start_server(path: &Path, threads: usize, mode: &str) -> std::thread::JoinHandle<()> {
    let mode = mode.to_owned();
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    // Half of the test addresses are banned.
    let table: HashMap<IpAddr, LookupAnswer> = (0..50_000u32)
        .map(|i| {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + 2 * i));
            let answer = LookupAnswer {
                remediation: Remediation::Ban,
                expires_in_s: 3600,
                origin: "crowdsec".to_owned(),
                scenario: "crowdsecurity/http-probing".to_owned(),
                decision_type: "ban".to_owned(),
                ..LookupAnswer::allow()
            };
            (addr, answer)
        })
        .collect();
    let table = Arc::new(table);
    if mode == "mt" {
        return std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = UnixListener::from_std(listener).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_connection(stream, Arc::clone(&table)));
                }
            });
        });
    }
    // Pinned: every connection lives on one current-thread runtime, no work
    // stealing and no cross-thread wake-ups.
    let workers: Vec<tokio::sync::mpsc::UnboundedSender<std::os::unix::net::UnixStream>> = (0
        ..threads.max(1))
        .map(|_| {
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<std::os::unix::net::UnixStream>();
            let table = Arc::clone(&table);
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("worker runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    while let Some(std_stream) = rx.recv().await {
                        let stream = UnixStream::from_std(std_stream).expect("stream");
                        tokio::task::spawn_local(serve_connection(stream, Arc::clone(&table)));
                    }
                });
            });
            tx
        })
        .collect();
    listener.set_nonblocking(false).expect("blocking accept");
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let stream = stream.expect("accept");
            stream.set_nonblocking(true).expect("nonblocking");
            let _ = workers[i % workers.len()].send(stream);
        }
    })
}

/// One connection: keeps `depth` lookups in flight until `end`; returns latencies in
/// nanoseconds.
async fn drive(path: PathBuf, conn: usize, depth: usize, end: Instant) -> Vec<u64> {
    let mut stream = UnixStream::connect(&path).await.expect("connect");
    let mut out = BytesMut::with_capacity(1024);
    let mut input = BytesMut::with_capacity(8192);
    let mut sent_at: HashMap<u32, Instant> = HashMap::with_capacity(depth);
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut next = 1u32;
    let mut addr_n = (conn as u32).wrapping_mul(7919);
    loop {
        let now = Instant::now();
        if now < end {
            while sent_at.len() < depth {
                let addr = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (addr_n % 100_000)));
                addr_n = addr_n.wrapping_add(1);
                encode_request(&Request::Lookup { id: next, addr }, &mut out);
                sent_at.insert(next, now);
                next = next.wrapping_add(1).max(1);
            }
            stream.write_all(&out).await.expect("write");
            out.clear();
        } else if sent_at.is_empty() {
            return latencies;
        }
        if input.capacity() - input.len() < 1024 {
            input.reserve(8192);
        }
        if stream.read_buf(&mut input).await.expect("read") == 0 {
            panic!("server closed the connection");
        }
        let now = Instant::now();
        while let Some(resp) = decode_response(&mut input).expect("valid response") {
            let Response::Lookup { id, .. } = resp else {
                panic!("unexpected {resp:?}");
            };
            let t0 = sent_at.remove(&id).expect("known id");
            latencies.push(now.duration_since(t0).as_nanos() as u64);
        }
    }
}

/// One caller task on a shared pooled client: one lookup at a time until `end`.
async fn drive_pooled(client: Client, caller: usize, end: Instant) -> Vec<u64> {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut addr_n = (caller as u32).wrapping_mul(7919);
    while Instant::now() < end {
        let addr = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + (addr_n % 100_000)));
        addr_n = addr_n.wrapping_add(1);
        let t0 = Instant::now();
        client.lookup(addr).await.expect("lookup");
        latencies.push(t0.elapsed().as_nanos() as u64);
    }
    latencies
}

fn main() {
    let args = parse_args();
    let dir = std::env::temp_dir().join(format!("socket-load-{}", std::process::id()));
    let path = match (&args.socket, args.serve) {
        (Some(p), false) => p.clone(),
        _ => {
            std::fs::create_dir_all(&dir).expect("temp dir");
            let p = dir.join("ref.sock");
            start_server(&p, args.server_threads, &args.server_mode);
            p
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .expect("client runtime");
    let (lat, elapsed) = rt.block_on(async {
        // Warm-up, then the measured run.
        let warm = Instant::now() + Duration::from_millis(300);
        let pool = (args.pool > 0).then(|| {
            Client::new(
                ClientConfig::new(&path)
                    .connections(args.pool)
                    .timeout(Duration::from_secs(10)),
            )
        });
        let spawn = |c: usize, end: Instant| match &pool {
            Some(client) => tokio::spawn(drive_pooled(client.clone(), c, end)),
            None => tokio::spawn(drive(path.clone(), c, args.depth, end)),
        };
        let tasks: Vec<_> = (0..args.connections).map(|c| spawn(c, warm)).collect();
        for t in tasks {
            t.await.expect("warm-up task");
        }
        let start = Instant::now();
        let end = start + Duration::from_secs(args.seconds);
        let tasks: Vec<_> = (0..args.connections).map(|c| spawn(c, end)).collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("load task"));
        }
        (all, start.elapsed())
    });
    let mut lat = lat;
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    println!(
        "connections={} depth={} pool={} client_threads={} server={} lookups={} rate={:.0}/s p50={:.1}us p99={:.1}us p99.9={:.1}us max={:.1}us",
        args.connections,
        args.depth,
        args.pool,
        args.client_threads,
        if args.serve { format!("reference({} {} threads)", args.server_mode, args.server_threads) } else { path.display().to_string() },
        lat.len(),
        lat.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        *lat.last().unwrap_or(&0) as f64 / 1000.0,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
