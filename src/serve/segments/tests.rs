//! The segment writer against the store: after any sequence of inserts, removes and
//! publishes (bases, overlays, folds, range changes, switch and outage), the segment set
//! on disk answers every address as the decider does.

use super::*;
use crate::decision::{Decision, Target};
use crate::store::UnreachablePolicy;
use bouncer_api::segment::{lookup, Segment};
use proptest::prelude::*;
use std::net::IpAddr;

const NOW: u32 = 1_000_000;

fn dec(id: i64, value: &str, type_name: &str) -> Decision {
    Decision {
        id,
        target: Target::parse(value).unwrap(),
        type_name: type_name.into(),
        origin: "crowdsec".into(),
        scenario: format!("scenario-{id}"),
        // distinct expiries: no ties, so the deciding decision is unique
        expires_at: NOW - 50 + id as u32,
    }
}

fn settings(dir: &Path) -> SegmentSettings {
    SegmentSettings {
        dir: dir.to_path_buf(),
        gid: None,
        grace: Duration::ZERO,
    }
}

/// The set named by `current`, read from disk as a reader would.
fn read_set(dir: &Path) -> (Vec<u8>, Option<Vec<u8>>) {
    let cur = std::fs::read(dir.join("current")).unwrap();
    assert_eq!(&cur[..8], CURRENT_MAGIC);
    let word = |i: usize| u64::from_le_bytes(cur[8 * i..8 * i + 8].try_into().unwrap());
    assert_eq!(word(2) % 2, 0, "seqlock left odd");
    let base = std::fs::read(dir.join(seg::base_name(word(3)))).unwrap();
    let overlay =
        (word(4) != 0).then(|| std::fs::read(dir.join(seg::overlay_name(word(4)))).unwrap());
    (base, overlay)
}

fn check_agrees(dir: &Path, decider: &Decider, probes: &[IpAddr]) -> Result<(), TestCaseError> {
    let (base, overlay) = read_set(dir);
    let b = Segment::parse(&base).unwrap();
    let o = overlay.as_deref().map(|o| Segment::parse(o).unwrap());
    if let Some(o) = &o {
        prop_assert_eq!(o.base_generation(), b.generation());
        prop_assert_eq!(o.generation(), decider.snapshot().generation());
    }
    for ip in probes {
        let want = decider.answer_at(*ip, NOW);
        let got = lookup(&b, o.as_ref(), *ip, NOW);
        let want_rem = want.remediation.map_or(
            bouncer_api::Remediation::Allow,
            crate::serve::wire_remediation,
        );
        prop_assert_eq!(got.remediation, want_rem, "{}", ip);
        prop_assert_eq!(got.bypassed, !decider.enabled(), "{}", ip);
        if let (Some(exp), Some(scenario)) = (want.expires_at, want.scenario.as_deref()) {
            prop_assert_eq!(got.expires_in_s, exp - NOW, "{}", ip);
            prop_assert_eq!(got.scenario, scenario, "{}", ip);
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u8, u8, u8),
    Remove(u8),
    Publish,
    Toggle,
    Outage(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), 0u8..6, 0u8..4).prop_map(|(a, k, t)| Op::Insert(a, k, t)),
        3 => any::<u8>().prop_map(Op::Remove),
        2 => Just(Op::Publish),
        1 => Just(Op::Toggle),
        1 => (0u8..3).prop_map(Op::Outage),
    ]
}

fn value_of(a: u8, kind: u8) -> String {
    match kind {
        0 | 1 => format!("10.0.{}.{}", a % 4, a),
        2 => format!("2001:db8::{:x}", a % 64),
        3 => format!("10.0.{}.0/24", a % 4),
        4 => format!("10.0.{}.{}/30", a % 4, a & 0xfc),
        _ => "2001:db8::/120".to_string(),
    }
}

fn probes() -> Vec<IpAddr> {
    let mut out = Vec::new();
    for a in 0..=255u8 {
        out.push(format!("10.0.{}.{}", a % 4, a).parse().unwrap());
        out.push(format!("::ffff:10.0.{}.{}", a % 4, a).parse().unwrap());
    }
    for a in 0..70u32 {
        out.push(format!("2001:db8::{a:x}").parse().unwrap());
    }
    out.push("2001:db8::1:0".parse().unwrap());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn segments_answer_as_the_decider(
        seed in prop::collection::vec((any::<u8>(), 0u8..6, 0u8..4), 0..60),
        ops in prop::collection::vec(op(), 1..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let decider = Decider::new();
        let mut w = decider.writer();
        let mut seg = SegmentWriter::open(settings(dir.path())).unwrap();
        let types = ["ban", "captcha", "throttle", "mfa"];
        let mut live: Vec<(i64, Target)> = Vec::new();
        let mut id = 0i64;
        for (a, k, t) in seed {
            id += 1;
            let d = dec(id, &value_of(a, k), types[t as usize]);
            live.push((id, d.target));
            w.insert(&d);
        }
        w.publish();
        seg.sync(&decider);
        let probes = probes();
        check_agrees(dir.path(), &decider, &probes)?;
        for op in ops {
            match op {
                Op::Insert(a, k, t) => {
                    id += 1;
                    let d = dec(id, &value_of(a, k), types[t as usize]);
                    live.push((id, d.target));
                    w.insert(&d);
                }
                Op::Remove(i) if !live.is_empty() => {
                    let (id, t) = live.remove(i as usize % live.len());
                    w.remove(id, t);
                }
                Op::Remove(_) => {}
                Op::Publish => {
                    w.publish();
                }
                Op::Toggle => decider.set_enabled(!decider.enabled()),
                Op::Outage(p) => decider.set_outage([None, Some(UnreachablePolicy::Open), Some(UnreachablePolicy::Closed)][p as usize]),
            }
            seg.sync(&decider);
            // Fail states answer without decisions; check the decisions with them off.
            if decider.outage().is_none() {
                check_agrees(dir.path(), &decider, &probes)?;
            } else {
                let (base, overlay) = read_set(dir.path());
                let b = Segment::parse(&base).unwrap();
                let o = overlay.as_deref().map(|o| Segment::parse(o).unwrap());
                let top = o.as_ref().unwrap_or(&b);
                let want = if decider.outage() == Some(UnreachablePolicy::Closed) { Outage::FailClosed } else { Outage::FailOpen };
                prop_assert_eq!(top.outage(), want);
            }
        }
    }
}

/// A set grown past the fold threshold gets a new base; replaced files are unlinked
/// after the grace period, files are 0640, and nothing but the set stays.
#[test]
fn new_bases_overlays_and_unlinking() {
    let dir = tempfile::tempdir().unwrap();
    let decider = Decider::new();
    let mut w = decider.writer();
    let mut seg = SegmentWriter::open(settings(dir.path())).unwrap();
    for i in 0..100 {
        w.insert(&dec(i, &format!("10.1.0.{i}"), "ban"));
    }
    w.publish();
    seg.sync(&decider);
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(dir.path()),
        ["base-00000000000000000001.seg", "current"]
    );
    // An unban: one small overlay with a tombstone.
    w.remove(5, Target::parse("10.1.0.5").unwrap());
    w.publish();
    seg.sync(&decider);
    let (_, overlay) = read_set(dir.path());
    let overlay = overlay.expect("an overlay");
    let o = Segment::parse(&overlay).unwrap();
    assert_eq!(o.keys(), 1);
    assert!(
        overlay.len() <= 1024,
        "overlay of one tombstone is {} bytes",
        overlay.len()
    );
    // Thousands of new keys: the store folds them into a new base.
    for i in 0..5000 {
        w.insert(&dec(
            1000 + i,
            &format!("10.2.{}.{}", i / 256, i % 256),
            "ban",
        ));
    }
    w.publish();
    seg.sync(&decider);
    let (base, overlay) = read_set(dir.path());
    assert!(overlay.is_none(), "everything folded into the base");
    assert_eq!(Segment::parse(&base).unwrap().keys(), 5099);
    seg.unlink_retired(false); // grace 0
    let left = names(dir.path());
    assert_eq!(left.len(), 2, "old files unlinked: {left:?}");
    for name in left {
        let mode = std::fs::metadata(dir.path().join(&name)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640, "{name}");
    }
    // A writer restarted on the same directory keeps `current` (same inode) and goes on
    // with higher serials.
    let ino = std::fs::metadata(dir.path().join("current")).unwrap().ino();
    drop(seg);
    let mut again = SegmentWriter::open(settings(dir.path())).unwrap();
    again.sync(&decider);
    assert_eq!(
        std::fs::metadata(dir.path().join("current")).unwrap().ino(),
        ino
    );
    let cur = std::fs::read(dir.path().join("current")).unwrap();
    assert!(
        u64::from_le_bytes(cur[24..32].try_into().unwrap()) > 3,
        "serials go on after a restart"
    );
    let (base2, _) = read_set(dir.path());
    assert_eq!(
        Segment::parse(&base2).unwrap().generation(),
        decider.snapshot().generation()
    );
}

/// The publish hook wakes the thread: a publish reaches the files without a sync call.
#[test]
fn publish_hook_drives_the_thread() {
    let dir = tempfile::tempdir().unwrap();
    let decider = Arc::new(Decider::new());
    let (tx, rx) = watch::channel(false);
    let handle = spawn(
        settings(dir.path()),
        decider.clone(),
        Readiness::ready(),
        rx,
    )
    .unwrap();
    let mut w = decider.writer();
    w.insert(&dec(1, "192.0.2.1", "ban"));
    let generation = w.publish().generation();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(cur) = std::fs::read(dir.path().join("current")) {
            let base = u64::from_le_bytes(cur[24..32].try_into().unwrap());
            if base != 0 {
                let b = std::fs::read(dir.path().join(seg::base_name(base))).unwrap();
                assert_eq!(Segment::parse(&b).unwrap().generation(), generation);
                break;
            }
        }
        assert!(Instant::now() < deadline, "no segment written");
        std::thread::sleep(Duration::from_millis(5));
    }
    tx.send(true).unwrap();
    decider.writer().publish(); // wakes the thread to see the shutdown
    handle.join().unwrap();
}
