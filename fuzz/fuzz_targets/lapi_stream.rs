//! The LAPI stream decoder (`cerberus::lapi::stream::parse`) on any body, then the
//! checks a decision passes before the store (`accept_new`, `accept_deleted`) and the
//! store itself.
//!
//! Checked: nothing panics or overflows; the counts returned equal the decisions handed
//! to the callback; reading the body one byte at a time (as a slow LAPI sends it) gives
//! the same result as reading it whole; every accepted decision that has not expired is
//! found by a lookup of its first address once published.
#![no_main]

use cerberus::decision::{accept_deleted, accept_new, Filters, RawDecision};
use cerberus::lapi::stream::{parse, Counts, List};
use cerberus::store::Decider;
use libfuzzer_sys::fuzz_target;
use std::io::Read;

/// Hands out one byte per read.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.is_empty()) {
            (Some((&b, rest)), false) => {
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

type Seen = Vec<(List, RawDecision)>;

fn decode(reader: impl Read) -> (Result<Counts, String>, Seen) {
    let mut seen = Vec::new();
    let result = parse(reader, |list, raw| seen.push((list, raw))).map_err(|e| e.to_string());
    (result, seen)
}

fn same(a: &Seen, b: &Seen) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((la, ra), (lb, rb))| {
            la == lb
                && ra.id == rb.id
                && ra.value == rb.value
                && ra.scope == rb.scope
                && ra.type_name == rb.type_name
                && ra.duration == rb.duration
                && ra.origin == rb.origin
                && ra.scenario == rb.scenario
        })
}

const NOW_MS: i64 = 1_760_000_000_000;

fuzz_target!(|data: &[u8]| {
    let (whole, seen) = decode(data);
    let (trickled, seen_trickled) = decode(Trickle(data));
    assert_eq!(whole.is_ok(), trickled.is_ok(), "{whole:?} / {trickled:?}");
    assert!(
        same(&seen, &seen_trickled),
        "the decisions differ by read size"
    );
    let Ok(counts) = whole else { return };
    assert_eq!(counts, trickled.unwrap());
    let new = seen.iter().filter(|(l, _)| *l == List::New).count();
    assert_eq!(counts.new, new);
    assert_eq!(counts.deleted, seen.len() - new);

    let decider = Decider::new();
    let mut writer = decider.writer();
    let mut accepted = Vec::new();
    let mut deleted = Vec::new();
    for (list, raw) in seen {
        match list {
            List::New => {
                if let Ok(d) = accept_new(raw, NOW_MS, &Filters::default()) {
                    writer.insert(&d);
                    accepted.push(d);
                }
            }
            List::Deleted => {
                if let Ok(key) = accept_deleted(&raw) {
                    deleted.push(key);
                }
            }
        }
    }
    let snapshot = writer.publish();
    let now = (NOW_MS / 1000) as u32;
    // A decision sent again with the same id on the same target replaces the earlier
    // one (the store keys verdicts by target and id; LAPI never repeats an id in one
    // answer, but the store must not keep both): only the last one of each is checked.
    let mut last = std::collections::HashMap::new();
    for d in &accepted {
        last.insert((d.id, d.target), d);
    }
    for d in last.values() {
        if d.expires_at > now {
            let addr = d.target.to_net().network();
            assert!(
                snapshot.lookup(addr, now).is_some(),
                "{d:?} was inserted but {addr} is not found"
            );
        }
    }
    for (id, target) in deleted {
        writer.remove(id, target);
    }
    writer.publish();
});
