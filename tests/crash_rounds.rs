//! Issue #16, reliability suite, crashes: the real daemon, synced from a real LAPI through
//! a gate ([`support::gate`]), SIGKILLed 20 times at seeded random moments: while its
//! startup pull is answered, while a large delta is applied, and right as a pull's SQLite
//! write begins. Every restart happens with the gate closed (LAPI unreachable: requests
//! wait), so what the daemon enforces then comes from SQLite alone.
//!
//! **Consistent**, as asserted after every restart: the set the daemon enforces before
//! any pull has succeeded (its admin API listing; no `first sync done` in its log, and
//! no startup answer through the gate) is equal to one of the sets LAPI held while the
//! gate was open. LAPI is changed only while the gate is closed (no pull in flight), so
//! those sets are exactly the ones the test records: the empty set (a fresh data
//! directory), then LAPI's active set after each change. Equal means the same ids, and
//! for each the same value, type and expiry (within a second, plus the time LAPI took to
//! answer the test and the longest pull the daemon logged: each side counts LAPI's
//! durations from its own request), among the decisions that are still at least 3 s from expiry on both
//! sides (the persisted set is read later than it was written, so short ones may have
//! expired meanwhile). A half-written delta or full replace would give a set that is
//! none of them: part of a batch added, or part of a bulk delete.
//!
//! After the last round the daemon converges: with the gate open, its set equals LAPI's.
//!
//! Where a kill landed is read from the daemon's log: the sync loop logs a pull that
//! changed something (`first sync done`, `delta sync:`) after handing its write to the
//! persist thread, and the persist thread logs `persisted full replace in` / `persisted
//! delta in` (debug) when that write is committed. More of the first than of the second at
//! the kill: the kill landed while a write was in progress. The test asserts that this
//! happened in at least one round. `CERBERUS_TEST_SEED` replays the schedule.

mod support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use support::daemon::{
    self, differences, lapi_active, longest_pull_secs, unix_now, Daemon, Entry, Set,
};
use support::gate::Gate;
use support::lapi::Lapi;

const ROUNDS: usize = 20;
const BASE: usize = 12_000;
const PER_ROUND: usize = 3_000;
const RUST_LOG: &str = "info,cerberus::persist=debug";

/// A state LAPI held while the gate was open, and how long LAPI took to list it.
struct State {
    set: Set,
    took: f64,
}

/// Imports `n` IPv4 decisions 10.`octet`.x.y, a tenth of them for a few seconds only.
fn import(lapi: &Lapi, dir: &Path, octet: usize, n: usize, rng: &mut StdRng) {
    let path = dir.join(format!("import-{octet}.csv"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "duration,type,value,reason").unwrap();
    for i in 0..n {
        let duration = if rng.gen_bool(0.1) {
            format!("{}s", rng.gen_range(4..=20))
        } else {
            format!("{}m", rng.gen_range(60..=240))
        };
        let kind = if rng.gen_bool(0.1) { "captcha" } else { "ban" };
        writeln!(
            f,
            "{duration},{kind},10.{octet}.{}.{},crash",
            i >> 8,
            i & 255
        )
        .unwrap();
    }
    f.flush().unwrap();
    drop(f);
    let file = path.to_str().unwrap();
    daemon::cscli_retrying(lapi, &["decisions", "import", "-i", file, "--scope", "Ip"]);
}

/// Batches kept in LAPI besides the base one; older ones are deleted in bulk.
const KEPT: usize = 3;

/// One change to LAPI: a new batch, and the bulk delete of the oldest one kept
/// (`batches` holds the second octets of those in LAPI).
fn change(
    lapi: &Lapi,
    dir: &Path,
    octet: usize,
    rng: &mut StdRng,
    batches: &mut VecDeque<usize>,
    states: &mut Vec<State>,
) {
    import(lapi, dir, octet, PER_ROUND, rng);
    batches.push_back(octet);
    if batches.len() > KEPT {
        let old = format!("10.{}.0.0/16", batches.pop_front().unwrap());
        daemon::cscli_retrying(
            lapi,
            &["decisions", "delete", "--range", &old, "--contained"],
        );
    }
    let (set, took) = lapi_active(lapi, &lapi.bouncer_key);
    states.push(State { set, took });
}

/// Both sets without the decisions that end within 3 s of `now` plus `slack` in either
/// of them. The daemon's expiries may be later than LAPI's by up to `slack` (they count
/// from when its answer began), so a decision about to expire can be in one set's live
/// part and not the other's; it is left out of both.
fn live_pair(a: &Set, b: &Set, now: f64, slack: f64) -> (Set, Set) {
    let horizon = now + 3.0 + slack;
    let ending = |set: &Set, id: &i64| set.get(id).is_some_and(|e: &Entry| e.expires <= horizon);
    let keep = |set: &Set| -> Set {
        set.iter()
            .filter(|(id, _)| !ending(a, id) && !ending(b, id))
            .map(|(id, e)| (*id, e.clone()))
            .collect()
    };
    (keep(a), keep(b))
}

/// The index of the recorded state the daemon's set equals, if any. `pull_secs`: the
/// longest pull the daemon logged (its expiries are LAPI's durations counted from the
/// moment the answer began, so they are as uncertain as its pulls are long).
fn matching(held: &Set, states: &[State], pull_secs: f64) -> Option<usize> {
    let now = unix_now();
    states.iter().rposition(|s| {
        let slack = 1.0 + s.took + pull_secs;
        let (held, state) = live_pair(held, &s.set, now, slack);
        differences(&held, &state, slack).is_empty()
    })
}

/// Counts of the log lines that tell where a kill landed.
struct Marks {
    synced: usize,
    persisted: usize,
    first_sync: bool,
}

fn marks(log: &str) -> Marks {
    let changed = |l: &&str| {
        l.contains("first sync done")
            || l.contains("startup sync:")
            || (l.contains("delta sync:") && !l.contains(" 0 new, 0 deleted"))
    };
    Marks {
        synced: log.lines().filter(changed).count(),
        persisted: log
            .lines()
            .filter(|l| l.contains("persisted full replace in") || l.contains("persisted delta in"))
            .count(),
        first_sync: log.contains("first sync done"),
    }
}

/// Waits until the log has more pulls that changed something than before, then returns at
/// once (the pull's write was handed to the persist thread just before that line).
async fn until_synced(d: &Daemon, before: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while marks(&d.log_text()).synced <= before {
        assert!(
            Instant::now() < deadline,
            "no sync in {secs}s; log:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_leave_a_consistent_set_then_convergence() {
    let mut rng = StdRng::seed_from_u64(support::seed::seed());
    let lapi = Lapi::start();
    let key = lapi.new_bouncer_key("cerberus-crash");
    let gate = Gate::start(&lapi.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // The empty set: what a fresh data directory holds.
    let mut states = vec![State {
        set: Set::new(),
        took: 0.0,
    }];
    import(&lapi, work.path(), 200, BASE, &mut rng);
    let (set, took) = lapi_active(&lapi, &lapi.bouncer_key);
    states.push(State { set, took });

    let mut landed = std::collections::BTreeMap::<&str, usize>::new();
    let mut batches = VecDeque::new();
    let mut pull_secs: f64 = 0.0;
    for round in 0..=ROUNDS {
        let log_name = format!("round-{round}.log");
        let options = daemon::Options {
            log_name: &log_name,
            rust_log: RUST_LOG,
            extra_config: "full_resync_interval: 10s\n",
        };
        let begun = gate
            .startups_begun
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut d = daemon::start(dir.path(), &gate.url, &key, &options);
        let held = d.decisions().await;
        assert!(
            !marks(&d.log_text()).first_sync,
            "round {round}: a pull succeeded with the gate closed"
        );
        let found = matching(&held, &states, pull_secs);
        assert!(
            found.is_some(),
            "round {round}: the daemon enforces {} decisions at restart, a set LAPI never held; \
             against each state:\n{}\nlog:\n{}",
            held.len(),
            states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let now = unix_now();
                    let slack = 1.0 + s.took + pull_secs;
                    let (h, l) = live_pair(&held, &s.set, now, slack);
                    let diff = differences(&h, &l, slack);
                    format!("state {i} ({} decisions): {}", s.set.len(), diff.join("; "))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            d.log_text()
        );
        if round == ROUNDS {
            eprintln!(
                "final restart: {} decisions from SQLite, state {found:?}",
                held.len()
            );
            converge(&gate, &lapi, &d).await;
            break;
        }
        change(
            &lapi,
            work.path(),
            round + 1,
            &mut rng,
            &mut batches,
            &mut states,
        );
        let plan = rng.gen_range(0..3);
        gate.open().await;
        let started = Instant::now();
        match plan {
            // During the startup pull (or just after it).
            0 => tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await,
            // During a large delta, or right as a pull's write begins.
            _ => {
                until_synced(&d, 0, 120).await;
                gate.close().await;
                let synced = marks(&d.log_text()).synced;
                change(
                    &lapi,
                    work.path(),
                    100 + round,
                    &mut rng,
                    &mut batches,
                    &mut states,
                );
                gate.open().await;
                if plan == 1 {
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..800))).await;
                } else {
                    until_synced(&d, synced, 120).await;
                }
            }
        }
        d.kill();
        gate.close().await;
        let log = d.log_text();
        pull_secs = pull_secs.max(longest_pull_secs(&log));
        let m = marks(&log);
        let startup_seen = gate
            .startups_begun
            .load(std::sync::atomic::Ordering::SeqCst)
            > begun;
        let place = if m.synced > m.persisted {
            "inside a SQLite write"
        } else if !m.first_sync && startup_seen {
            "during the startup pull"
        } else if !m.first_sync {
            "before any pull"
        } else {
            "between writes (pulls and deltas)"
        };
        *landed.entry(place).or_default() += 1;
        eprintln!(
            "round {round}: restart enforced state {found:?} ({} decisions); plan {plan}; \
             killed after {} ms, {place}",
            held.len(),
            started.elapsed().as_millis()
        );
    }
    eprintln!("where the kills landed: {landed:?}");
    assert!(
        landed.get("inside a SQLite write").copied().unwrap_or(0) > 0,
        "no kill landed inside a SQLite write: {landed:?}"
    );
}

/// Opens the gate and waits until the daemon's set equals LAPI's.
async fn converge(gate: &Gate, lapi: &Lapi, d: &Daemon) {
    gate.open().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (want, took) = lapi_active(lapi, &lapi.bouncer_key);
        let held = d.decisions().await;
        let diff = differences(&held, &want, 1.0 + took);
        if diff.is_empty() && marks(&d.log_text()).first_sync {
            eprintln!("converged on LAPI's {} decisions", want.len());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence: {}\nlog:\n{}",
            diff.join("\n"),
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
