//! Issue #16, reliability suite, reconciliation: the real daemon syncs from a real LAPI
//! (the CrowdSec version under test) every 500 ms while 100k decisions are imported in
//! batches with `cscli decisions import` and deleted at random with `cscli decisions
//! delete` (by id, by IP, by range, and by `--range --contained` in bulk); some last only
//! seconds and expire during the test. At the end, the set the daemon enforces (its admin
//! API listing, page by page) equals LAPI's active set (`/v1/decisions/stream?startup=true`
//! with a key of the test's own): the same ids, and for each the same value (IPv4, IPv6,
//! ranges of both), type, and expiry within a second (plus the time LAPI took to answer
//! the test and the longest pull the daemon logged: each side counts LAPI's durations
//! from its own request).
//!
//! LAPI's deltas miss some decisions imported while it answers a pull (its cursor moves
//! past rows not committed yet); only a full pull brings them. The daemon runs with
//! `full_resync_interval: 10s` (default 5m) so that its periodic full pull lands within
//! the test; with none, this test fails with a few hundred ids only in LAPI.
//!
//! `CERBERUS_RECONCILE_DECISIONS` makes it smaller for local iteration (the test command
//! runs the full 100k); `CERBERUS_TEST_SEED` replays a run (the seed is printed).

mod support;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use support::daemon::{self, differences, lapi_active, unix_now, Set};
use support::lapi::Lapi;

const BATCHES: usize = 10;
/// Batches before this one carry some decisions of a few seconds, which expire mid-test.
const SHORT_BATCHES: usize = 6;
const SHORT_MAX_SECS: u64 = 30;

/// The value of decision number `i`: mostly IPv4 addresses, and IPv4 ranges, IPv6
/// addresses and IPv6 ranges, each written as the daemon lists them (canonical form).
fn value(i: usize) -> (&'static str, String) {
    if i % 50 == 7 {
        let k = i / 50;
        (
            "range",
            format!("172.{}.{}.0/24", 16 + ((k >> 8) & 15), k & 255),
        )
    } else if i % 97 == 3 {
        (
            "ip",
            format!("2001:db8::{:x}:{:x}", (i >> 16) + 1, i & 0xffff),
        )
    } else if i % 499 == 5 {
        ("range", format!("2001:db8:{:x}::/48", i / 499 + 1))
    } else {
        (
            "ip",
            format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        )
    }
}

/// Writes batch `b` of `per` decisions as two CSV files for `cscli decisions import`
/// (`ips` and `ranges`: cscli 1.4.6 reads the scope from its `--scope` flag only, not
/// from the file); returns the latest expiry among its short ones (0 when none).
fn write_batch(ips: &Path, ranges: &Path, b: usize, per: usize, rng: &mut StdRng) -> f64 {
    let open = |path: &Path| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        writeln!(f, "duration,type,value,reason").unwrap();
        f
    };
    let (mut ip_file, mut range_file) = (open(ips), open(ranges));
    let mut short_until: f64 = 0.0;
    let start = unix_now();
    for i in b * per..(b + 1) * per {
        let (scope, v) = value(i);
        let f = if scope == "range" {
            &mut range_file
        } else {
            &mut ip_file
        };
        let kind = if rng.gen_bool(0.1) { "captcha" } else { "ban" };
        let duration = if b < SHORT_BATCHES && rng.gen_bool(0.15) {
            let secs = rng.gen_range(5..=SHORT_MAX_SECS);
            short_until = short_until.max(start + secs as f64);
            format!("{secs}s")
        } else {
            format!("{}m", rng.gen_range(60..=240))
        };
        writeln!(f, "{duration},{kind},{v},reconcile").unwrap();
        // Now and then a second decision of the other type on the same value.
        if i % 1000 == 11 {
            let other = if kind == "ban" { "captcha" } else { "ban" };
            writeln!(f, "3h,{other},{v},reconcile-second").unwrap();
        }
    }
    ip_file.flush().unwrap();
    range_file.flush().unwrap();
    short_until
}

/// A few deletes at random among what LAPI holds: by id, by IP, by exact range, and one
/// IPv4 /24 in bulk (`--contained`). Returns how many cscli calls it made.
fn delete_some(lapi: &Lapi, active: &Set, rng: &mut StdRng) -> usize {
    let all: Vec<_> = active.iter().collect();
    let ips: Vec<_> = all.iter().filter(|(_, e)| !e.value.contains('/')).collect();
    let ranges: Vec<_> = all.iter().filter(|(_, e)| e.value.contains('/')).collect();
    let mut calls = 0;
    for (id, _) in all.choose_multiple(rng, 5) {
        daemon::cscli_retrying(lapi, &["decisions", "delete", "--id", &id.to_string()]);
        calls += 1;
    }
    for (_, e) in ips.choose_multiple(rng, 5) {
        daemon::cscli_retrying(lapi, &["decisions", "delete", "--ip", &e.value]);
        calls += 1;
    }
    for (_, e) in ranges.choose_multiple(rng, 2) {
        daemon::cscli_retrying(lapi, &["decisions", "delete", "--range", &e.value]);
        calls += 1;
    }
    if let Some((_, e)) = ips.iter().find(|(_, e)| e.value.starts_with("10.")) {
        let net: Vec<&str> = e.value.split('.').take(3).collect();
        let net = format!("{}.0/24", net.join("."));
        daemon::cscli_retrying(
            lapi,
            &["decisions", "delete", "--range", &net, "--contained"],
        );
        calls += 1;
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_ends_with_exactly_lapis_active_set() {
    let total: usize = std::env::var("CERBERUS_RECONCILE_DECISIONS")
        .map(|s| {
            s.parse()
                .expect("CERBERUS_RECONCILE_DECISIONS is not a number")
        })
        .unwrap_or(100_000);
    let mut rng = StdRng::seed_from_u64(support::seed::seed());
    let per = total / BATCHES;
    let lapi = Lapi::start();
    let key = lapi.new_bouncer_key("cerberus-reconcile");
    let dir = tempfile::tempdir().unwrap();
    let options = daemon::Options {
        log_name: "daemon.log",
        rust_log: "info",
        extra_config: "full_resync_interval: 10s\n",
    };
    let d = daemon::start(dir.path(), &lapi.url, &key, &options);

    let mut short_until: f64 = 0.0;
    let mut deletes = 0;
    for b in 0..BATCHES {
        let ips = dir.path().join(format!("batch-{b}-ips.csv"));
        let ranges = dir.path().join(format!("batch-{b}-ranges.csv"));
        short_until = short_until.max(write_batch(&ips, &ranges, b, per, &mut rng));
        for (file, scope) in [(&ips, "Ip"), (&ranges, "Range")] {
            let file = file.to_str().unwrap();
            daemon::cscli_retrying(
                &lapi,
                &["decisions", "import", "-i", file, "--scope", scope],
            );
        }
        let (active, _) = lapi_active(&lapi, &lapi.bouncer_key);
        deletes += delete_some(&lapi, &active, &mut rng);
        eprintln!(
            "batch {b}: {} decisions imported, {} active in LAPI",
            (b + 1) * per,
            active.len()
        );
    }
    assert!(short_until > 0.0, "no decision was short-lived");
    // Every short decision is past its expiry (with margin for the import's own time).
    let wait = short_until + 3.0 - unix_now();
    if wait > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    }

    // The daemon gets a few update periods to catch up with the last change.
    let deadline = unix_now() + 30.0;
    loop {
        let (want, took) = lapi_active(&lapi, &lapi.bouncer_key);
        let held = d.decisions().await;
        // Each side counts LAPI's durations from its own request: the daemon's expiries
        // are as uncertain as its pulls are long (seconds on a loaded machine).
        let slack = 1.0 + took + daemon::longest_pull_secs(&d.log_text());
        let diff = differences(&held, &want, slack);
        if diff.is_empty() {
            eprintln!(
                "agreed: {} active decisions after {total} imported and {deletes} cscli deletes",
                want.len()
            );
            assert!(want.len() > total / 2, "the deletes took out too much");
            break;
        }
        assert!(
            unix_now() < deadline,
            "the daemon ({} decisions) differs from LAPI ({}):\n{}\n--- daemon log (tail) ---\n{}",
            held.len(),
            want.len(),
            diff.join("\n"),
            tail(&d.log_text(), 40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
