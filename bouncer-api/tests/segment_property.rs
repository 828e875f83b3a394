//! Property test across languages: random decision sets (IPv4 and IPv6, nested and
//! overlapping ranges, several decisions per address, expiries on both sides of the
//! clock, overlays with tombstones, new keys, new ranges and header states) are written
//! by the reference writer, answered by the reference lookup, and then read by the Go
//! reader of `caddy-module` (`TestSegmentCasesFromEnv`), which must give the same answer
//! for every address. One `go test` run checks every case.
//!
//! `CERBERUS_SEGMENT_SEED=N` replays one run (the seed is printed); `CERBERUS_SEGMENT_CASES`
//! sets how many decision sets (default 48). Needs `go` on PATH (the test command checks).

mod segment_cases;

use bouncer_api::segment::{Builder, Outage, KIND_BASE, KIND_OVERLAY};
use segment_cases::{answers, exact, fill, fill_ranges, ip_of, probes, range, Dec, Rng, REMS};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NOW: u32 = 1_800_000_000;
const V4_BLOCK: u128 = 0x0a01_0000; // 10.1.0.0
const V6_BLOCK: u128 = 0x2001_0db8_0100_0000_0000_0000_0000_0000; // 2001:db8:100::

/// An expiry around `NOW`: mostly live, some gone, some exactly at the edge.
fn expiry(rng: &mut Rng) -> u32 {
    match rng.below(10) {
        0 => NOW,     // expired: a verdict lives while expires > now
        1 => NOW + 1, // the last live second
        2 => NOW - 1 - rng.below(5000) as u32,
        _ => NOW + 1 + rng.below(100_000) as u32,
    }
}

/// An address in a small block, so decisions collide and nest.
fn addr(rng: &mut Rng, v6: bool, spread: u64) -> u128 {
    let block = if v6 { V6_BLOCK } else { V4_BLOCK };
    block + u128::from(rng.below(spread))
}

/// One random decision; several decisions per address come from the small spread.
fn decision(rng: &mut Rng, i: usize, spread: u64) -> Dec {
    let v6 = rng.below(3) == 0;
    let a = addr(rng, v6, spread);
    let rem = REMS[rng.below(4) as usize];
    let expires = expiry(rng);
    let origin = ["crowdsec", "CAPI", "cscli", "lists"][rng.below(4) as usize];
    let scenario = format!("set/{i}");
    match rng.below(6) {
        0 => {
            // Nested prefixes inside the block, and now and then a wide one over it.
            let prefix = match (v6, rng.below(8)) {
                (false, 0) => 8 + rng.below(9) as u32,
                (true, 0) => 32 + rng.below(60) as u32,
                (false, _) => 20 + rng.below(13) as u32,
                (true, _) => 112 + rng.below(17) as u32,
            };
            range(v6, a, prefix, rem, expires, origin, &scenario)
        }
        _ => exact(v6, a, rem, expires, origin, &scenario),
    }
}

/// A random decision set, its base, an overlay over it (or none), and the probes.
struct Case {
    base: Vec<u8>,
    overlay: Option<Vec<u8>>,
    probes: Vec<IpAddr>,
}

fn case(rng: &mut Rng, generation: u64) -> Case {
    let spread = [64, 512, 4096][rng.below(3) as usize];
    let n = 1 + rng.below(400) as usize;
    let all: Vec<Dec> = (0..n).map(|i| decision(rng, i, spread)).collect();
    let mut base = Builder::new(KIND_BASE, generation, generation);
    fill(&mut base, &all, &[], true);
    let base = base.finish(rng.next());
    let mut probe = probes(&all);
    for _ in 0..64 {
        let v6 = rng.below(2) == 0;
        probe.push(ip_of(v6, addr(rng, v6, spread * 2)));
    }
    if rng.below(4) == 0 {
        probe.sort();
        probe.dedup();
        return Case {
            base,
            overlay: None,
            probes: probe,
        };
    }
    // The overlay: some exact keys unbanned (tombstones), others given new lists, new
    // keys, and sometimes a new range table.
    let keys: Vec<(bool, u128)> = all
        .iter()
        .filter(|d| d.exact)
        .map(|d| (d.v6, d.first))
        .collect();
    let mut gone = Vec::new();
    let mut changed: Vec<Dec> = Vec::new();
    for k in &keys {
        match rng.below(6) {
            0 => gone.push(*k),
            1 => {
                let mut d = decision(rng, n + changed.len(), spread);
                (d.v6, d.first, d.last, d.exact) = (k.0, k.1, k.1, true);
                changed.push(d);
            }
            _ => {}
        }
    }
    for i in 0..rng.below(20) as usize {
        let mut d = decision(rng, n + 1000 + i, spread);
        d.last = d.first;
        d.exact = true;
        changed.push(d);
    }
    gone.sort();
    gone.dedup();
    gone.retain(|k| !changed.iter().any(|d| (d.v6, d.first) == *k));
    let mut o = Builder::new(KIND_OVERLAY, generation + 1, generation);
    fill(&mut o, &changed, &gone, false);
    if rng.below(2) == 0 {
        let mut ranges: Vec<Dec> = all
            .iter()
            .filter(|d| !d.exact && rng.below(3) != 0)
            .cloned()
            .collect();
        for i in 0..rng.below(6) as usize {
            let mut d = decision(rng, n + 2000 + i, spread);
            if d.exact {
                d = range(
                    d.v6,
                    d.first,
                    if d.v6 { 120 } else { 28 },
                    d.rem,
                    d.expires,
                    &d.origin,
                    &d.scenario,
                );
            }
            ranges.push(d);
        }
        o.carry_ranges();
        fill_ranges(&mut o, &ranges);
        probe.extend(probes(&ranges));
    }
    match rng.below(10) {
        0 => o.set_state(true, Outage::None),
        1 => o.set_state(false, Outage::FailClosed),
        2 => o.set_state(false, Outage::FailOpen),
        _ => {}
    }
    probe.extend(probes(&changed));
    probe.sort();
    probe.dedup();
    Case {
        base,
        overlay: Some(o.finish(rng.next())),
        probes: probe,
    }
}

#[test]
fn go_reader_agrees_with_the_reference_on_random_decision_sets() {
    let seed = std::env::var("CERBERUS_SEGMENT_SEED")
        .ok()
        .map(|s| s.parse::<u64>().expect("CERBERUS_SEGMENT_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let count: usize = std::env::var("CERBERUS_SEGMENT_CASES")
        .ok()
        .map(|s| s.parse().expect("CERBERUS_SEGMENT_CASES: a number"))
        .unwrap_or(48);
    eprintln!("segment property test: CERBERUS_SEGMENT_SEED={seed}, {count} decision sets");
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let mut cases = Vec::new();
    let mut total = 0;
    for i in 0..count {
        let c = case(&mut rng, 10 + 2 * i as u64);
        let base_name = format!("case-{i}-base.seg");
        std::fs::write(dir.path().join(&base_name), &c.base).unwrap();
        let overlay_name = c.overlay.as_ref().map(|o| {
            let name = format!("case-{i}-overlay.seg");
            std::fs::write(dir.path().join(&name), o).unwrap();
            name
        });
        let list = answers(&c.base, c.overlay.as_deref(), &c.probes, NOW);
        total += list.as_array().unwrap().len();
        cases.push(
            json!({"name": format!("seed {seed} set {i}"), "base": base_name,
                          "overlay": overlay_name, "answers": list}),
        );
    }
    let expected = json!({"now": NOW, "cases": cases});
    std::fs::write(
        dir.path().join("expected.json"),
        serde_json::to_vec(&expected).unwrap(),
    )
    .unwrap();
    // Every kind of answer occurs, so agreement means something.
    let all_answers: Vec<&Value> = cases
        .iter()
        .flat_map(|c| c["answers"].as_array().unwrap())
        .collect();
    for rem in ["allow", "ban", "captcha", "throttle", "other"] {
        assert!(
            all_answers.iter().any(|a| a["remediation"] == rem),
            "no {rem} answer"
        );
    }
    assert!(
        all_answers
            .iter()
            .any(|a| a["bypassed"] == true || a["fail_closed"] == true)
            || count < 16
    );

    let checked = run_go(dir.path());
    assert_eq!(
        checked, total,
        "the Go reader checked {checked} answers of {total}"
    );
}

/// Runs the Go reader's test on `dir`; returns the number of answers it checked.
fn run_go(dir: &Path) -> usize {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("../caddy-module");
    // Output to a file, so a long list of differences cannot fill a pipe and stall it.
    let log_path = dir.join("go-test.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new("go")
        .args([
            "test",
            "-count=1",
            "-v",
            "-run",
            "^TestSegmentCasesFromEnv$",
            ".",
        ])
        .current_dir(&module)
        .env("CERBERUS_SEGMENT_CASES_DIR", dir)
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("running `go test` in caddy-module (is go on PATH?)");
    // Bounded: a cold build of the module's test binary takes a minute or two here.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("go test did not finish in 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "the Go reader disagrees:\n{text}");
    assert!(
        text.contains("--- PASS: TestSegmentCasesFromEnv"),
        "the Go test did not run:\n{text}"
    );
    text.lines()
        .find_map(|l| {
            l.split("checked ")
                .nth(1)?
                .split(" answers")
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count in the Go test's output:\n{text}"))
}
