//! The reference lookup against a brute-force oracle over random decision sets, with
//! and without an overlay; and the checks that refuse damaged files.

use super::*;
use crate::Remediation;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const NOW: u32 = 1_000_000;
const REMS: [Remediation; 4] = [
    Remediation::Ban,
    Remediation::Captcha,
    Remediation::Throttle,
    Remediation::Other,
];

/// One decision: family, first..=last (first == last and exact: a single IP),
/// remediation, expiry, origin number.
#[derive(Debug, Clone)]
struct D {
    v6: bool,
    first: u128,
    last: u128,
    exact: bool,
    rem: usize,
    expires: u32,
    origin: u8,
}

fn decision() -> impl Strategy<Value = D> {
    // Small address spaces so that decisions collide, nest and overlap.
    (
        any::<bool>(),
        0u128..64,
        0u32..9,
        any::<bool>(),
        0usize..4,
        NOW - 5..NOW + 5,
        0u8..3,
    )
        .prop_map(|(v6, addr, prefix_bits, exact, rem, expires, origin)| {
            let base6: u128 = 0x2001_0db8 << 96;
            let base4: u128 = 0xc000_0200;
            let start = if v6 { base6 } else { base4 } + addr;
            if exact {
                D {
                    v6,
                    first: start,
                    last: start,
                    exact,
                    rem,
                    expires,
                    origin,
                }
            } else {
                let span = (1u128 << prefix_bits) - 1;
                let first = start & !span;
                D {
                    v6,
                    first,
                    last: first | span,
                    exact,
                    rem,
                    expires,
                    origin,
                }
            }
        })
}

fn meta_of(b: &mut Builder, d: &D) -> Verdict {
    let rem = REMS[d.rem];
    let meta = b.meta(
        rem,
        rem.as_str(),
        &format!("o{}", d.origin),
        &format!("s{}-{}", d.rem, d.origin),
    );
    Verdict {
        expires: d.expires,
        meta,
    }
}

/// Every exact key of `set` with its decisions.
fn by_key(set: &[D]) -> Vec<((bool, u128), Vec<&D>)> {
    let mut keys: Vec<(bool, u128)> = set
        .iter()
        .filter(|d| d.exact)
        .map(|d| (d.v6, d.first))
        .collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            (
                k,
                set.iter()
                    .filter(|d| d.exact && (d.v6, d.first) == k)
                    .collect(),
            )
        })
        .collect()
}

fn put_exact(b: &mut Builder, key: (bool, u128), ds: &[&D]) {
    let list: Vec<Verdict> = ds.iter().map(|d| meta_of(b, d)).collect();
    if key.0 {
        b.exact6(key.1, &list)
    } else {
        b.exact4(key.1 as u32, &list)
    }
}

fn put_ranges(b: &mut Builder, set: &[D]) {
    for d in set.iter().filter(|d| !d.exact) {
        let v = meta_of(b, d);
        if d.v6 {
            b.range6(d.first, d.last, v)
        } else {
            b.range4(d.first as u32, d.last as u32, v)
        }
    }
}

fn base_of(set: &[D], seed: u64) -> Vec<u8> {
    let mut b = Builder::new(KIND_BASE, 1, 1);
    for (k, ds) in by_key(set) {
        put_exact(&mut b, k, &ds);
    }
    put_ranges(&mut b, set);
    b.finish(seed)
}

fn ip(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// What the answer must be: the strongest live exact decision, unless a live range
/// decision ranks strictly higher by (remediation, expiry).
fn oracle(set: &[D], v6: bool, a: u128) -> Option<(Remediation, u32, Vec<String>)> {
    fn rank_of(d: &D) -> (u8, u32) {
        (rank(REMS[d.rem] as u8), d.expires)
    }
    let live: Vec<&D> = set
        .iter()
        .filter(|d| d.v6 == v6 && d.first <= a && a <= d.last && d.expires > NOW)
        .collect();
    let exact = live.iter().filter(|d| d.exact).max_by_key(|d| rank_of(d));
    let range = live.iter().filter(|d| !d.exact).max_by_key(|d| rank_of(d));
    let (best, exact_side) = match (exact, range) {
        (Some(e), Some(r)) if rank_of(r) > rank_of(e) => (r, false),
        (Some(e), _) => (e, true),
        (None, Some(r)) => (r, false),
        (None, None) => return None,
    };
    let key = rank_of(best);
    // Equal-ranked decisions on the same side may decide; any of their scenarios is right.
    let scenarios = live
        .iter()
        .filter(|d| d.exact == exact_side && rank_of(d) == key)
        .map(|d| format!("s{}-{}", d.rem, d.origin))
        .collect();
    Some((REMS[best.rem], best.expires - NOW, scenarios))
}

fn probes(set: &[D]) -> Vec<(bool, u128)> {
    let mut out = Vec::new();
    for d in set {
        for a in [d.first.wrapping_sub(1), d.first, d.last, d.last + 1] {
            out.push((d.v6, a));
        }
    }
    out.push((false, 0xc000_0200 + 1000));
    out.push((true, (0x2001_0db8 << 96) + 1000));
    out
}

fn check(
    set: &[D],
    base: &Segment<'_>,
    overlay: Option<&Segment<'_>>,
) -> Result<(), TestCaseError> {
    for (v6, a) in probes(set) {
        let got = lookup(base, overlay, ip(v6, a), NOW);
        match oracle(set, v6, a) {
            None => prop_assert_eq!(got.remediation, Remediation::Allow, "{}", ip(v6, a)),
            Some((rem, expires_in, scenarios)) => {
                prop_assert_eq!(
                    (got.remediation, got.expires_in_s),
                    (rem, expires_in),
                    "{}",
                    ip(v6, a)
                );
                prop_assert!(
                    scenarios.contains(&got.scenario.to_string()),
                    "{}: {} not in {:?}",
                    ip(v6, a),
                    got.scenario,
                    scenarios
                );
                prop_assert_eq!(got.type_name, rem.as_str());
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn base_agrees_with_oracle(set in prop::collection::vec(decision(), 0..40), seed in any::<u64>()) {
        let buf = base_of(&set, seed);
        let base = Segment::parse(&buf).unwrap();
        check(&set, &base, None)?;
    }

    /// The base holds an older set; the overlay brings it to `set`: changed keys get
    /// their new list, vanished keys a tombstone, ranges carried when they changed.
    #[test]
    fn overlay_agrees_with_oracle(
        set in prop::collection::vec(decision(), 0..40),
        old in prop::collection::vec(decision(), 0..40),
        keep_ranges in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let mut older: Vec<D> = old.iter().filter(|d| d.exact).cloned().collect();
        if keep_ranges {
            older.extend(set.iter().filter(|d| !d.exact).cloned());
        } else {
            older.extend(old.iter().filter(|d| !d.exact).cloned());
        }
        let base_buf = base_of(&older, seed);
        let mut o = Builder::new(KIND_OVERLAY, 2, 1);
        let now_keys = by_key(&set);
        for (k, ds) in &now_keys {
            put_exact(&mut o, *k, ds);
        }
        for (k, _) in by_key(&older) {
            if !now_keys.iter().any(|(n, _)| *n == k) {
                put_exact(&mut o, k, &[]);
            }
        }
        if !keep_ranges {
            o.carry_ranges();
            put_ranges(&mut o, &set);
        }
        let over_buf = o.finish(seed ^ 1);
        let base = Segment::parse(&base_buf).unwrap();
        let over = Segment::parse(&over_buf).unwrap();
        prop_assert_eq!(over.base_generation(), base.generation());
        check(&set, &base, Some(&over))?;
    }
}

#[test]
fn switch_and_outage_from_the_newest_segment() {
    let set = vec![D {
        v6: false,
        first: 0xc000_0201,
        last: 0xc000_0201,
        exact: true,
        rem: 0,
        expires: NOW + 60,
        origin: 0,
    }];
    let base_buf = base_of(&set, 7);
    let base = Segment::parse(&base_buf).unwrap();
    let addr = ip(false, 0xc000_0201);
    assert_eq!(lookup(&base, None, addr, NOW).remediation, Remediation::Ban);
    let mut o = Builder::new(KIND_OVERLAY, 2, 1);
    o.set_state(true, Outage::None);
    let buf = o.finish(1);
    let a = lookup(&base, Some(&Segment::parse(&buf).unwrap()), addr, NOW);
    assert!(a.bypassed && a.remediation == Remediation::Allow);
    let mut o = Builder::new(KIND_OVERLAY, 3, 1);
    o.set_state(false, Outage::FailClosed);
    let buf = o.finish(1);
    let a = lookup(
        &base,
        Some(&Segment::parse(&buf).unwrap()),
        ip(false, 1),
        NOW,
    );
    assert!(a.fail_closed && a.remediation == Remediation::Ban);
    let mut o = Builder::new(KIND_OVERLAY, 4, 1);
    o.set_state(false, Outage::FailOpen);
    let buf = o.finish(1);
    assert_eq!(
        lookup(&base, Some(&Segment::parse(&buf).unwrap()), addr, NOW).remediation,
        Remediation::Allow
    );
}

#[test]
fn damaged_segments_are_refused() {
    let good = base_of(&[], 1);
    assert!(Segment::parse(&good).is_ok());
    assert_eq!(
        Segment::parse(&good[..100]).unwrap_err(),
        SegmentError::Short(100)
    );
    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(Segment::parse(&b).unwrap_err(), SegmentError::Magic);
    let mut b = good.clone();
    b[8] = 2;
    assert_eq!(Segment::parse(&b).unwrap_err(), SegmentError::Version(2));
    let mut b = good.clone();
    b[12] = 9;
    assert_eq!(Segment::parse(&b).unwrap_err(), SegmentError::Kind(9));
    let mut b = good.clone();
    b[44] = 3;
    assert_eq!(Segment::parse(&b).unwrap_err(), SegmentError::Outage(3));
    let mut b = good.clone();
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(
        Segment::parse(&b).unwrap_err(),
        SegmentError::Length { .. }
    ));
    let mut b = good.clone();
    b[72..80].copy_from_slice(&3u64.to_le_bytes()); // 3 slots: not a power of two
    assert_eq!(Segment::parse(&b).unwrap_err(), SegmentError::Section(0));
    let mut b = good;
    b[64 + 4 * 16 + 8..64 + 4 * 16 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(Segment::parse(&b).unwrap_err(), SegmentError::Section(4));
}
