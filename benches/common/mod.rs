//! Pieces the whole-daemon benchmarks share: the size argument, the runtime, a
//! standalone daemon's config, the address of the i-th decision, percentiles.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

/// The first numeric argument (`cargo bench --bench NAME -- 100000`), else
/// [`size_env`].
pub fn size_arg(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or_else(|| size_env(default))
}

/// `CERBERUS_BENCH_SIZE` (how criterion benchmarks, whose arguments are filters, take
/// their size), else `default`. A value that is not a number stops the benchmark.
pub fn size_env(default: usize) -> usize {
    match std::env::var("CERBERUS_BENCH_SIZE") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("CERBERUS_BENCH_SIZE={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A two-worker runtime, as the daemon runs on this 2-core machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A standalone daemon in `dir`: no forward_auth, the admin API on a free loopback port.
pub fn standalone_config(dir: &Path) -> cerberus::config::Config {
    cerberus::config::Config {
        data_dir: dir.to_path_buf(),
        socket: dir.join("cerberus.sock"),
        forward_auth_listen: cerberus::config::Listen::Off,
        admin_listen: cerberus::config::Listen::Tcp("127.0.0.1:0".into()),
        ..Default::default()
    }
}

/// The i-th decision's address: spread over 10.0.0.0/8 and beyond, away from the
/// benchmarks' ranges (172.16/12).
pub fn ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761) >> 4))
}

/// The `p` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Inserts `n` single-IP bans (`ip(0)` to `ip(n - 1)`, ids 1 to n, origin `lists`) that
/// expire at `expires`, in batches of 100,000.
#[allow(dead_code)] // not every benchmark starts from plain bans
pub async fn insert_bans(control: &cerberus::control::Control, n: usize, expires: u32) {
    use cerberus::decision::{Decision, Target};
    let mut batch = Vec::with_capacity(100_000);
    for i in 0..n as u32 {
        batch.push(Decision {
            id: i as i64 + 1,
            target: Target::from_ip(std::net::IpAddr::V4(ip(i))),
            type_name: "ban".into(),
            origin: "lists".into(),
            scenario: "bench".into(),
            expires_at: expires,
        });
        if batch.len() == 100_000 || i as usize + 1 == n {
            control.insert(std::mem::take(&mut batch)).await.unwrap();
        }
    }
}
