//! Shared by the segment tests: decisions as the tests describe them, filling a
//! [`Builder`] with them, the addresses to ask, and the reference lookup's answers in the
//! `expected.json` form that the Go reader's tests read.

use bouncer_api::segment::{lookup, Builder, Segment, Verdict};
use bouncer_api::Remediation;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A small deterministic generator (xorshift64*), so that a seed gives the same set.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One decision: an exact address (`first == last`, `exact`) or a range.
#[derive(Clone)]
pub struct Dec {
    pub v6: bool,
    pub first: u128,
    pub last: u128,
    pub exact: bool,
    pub rem: Remediation,
    pub expires: u32,
    pub origin: String,
    pub scenario: String,
}

pub const REMS: [Remediation; 4] = [
    Remediation::Ban,
    Remediation::Captcha,
    Remediation::Throttle,
    Remediation::Other,
];

pub fn exact(
    v6: bool,
    a: u128,
    rem: Remediation,
    expires: u32,
    origin: &str,
    scenario: &str,
) -> Dec {
    Dec {
        v6,
        first: a,
        last: a,
        exact: true,
        rem,
        expires,
        origin: origin.into(),
        scenario: scenario.into(),
    }
}

/// The range of `prefix` bits around `a`.
pub fn range(
    v6: bool,
    a: u128,
    prefix: u32,
    rem: Remediation,
    expires: u32,
    origin: &str,
    scenario: &str,
) -> Dec {
    let bits = if v6 { 128 } else { 32 } - prefix;
    let span = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    Dec {
        first: a & !span,
        last: (a & !span) | span,
        exact: false,
        ..exact(v6, a, rem, expires, origin, scenario)
    }
}

pub fn verdict(b: &mut Builder, d: &Dec) -> Verdict {
    let meta = b.meta(d.rem, d.rem.as_str(), &d.origin, &d.scenario);
    Verdict {
        expires: d.expires,
        meta,
    }
}

/// Puts every exact key of `set` (and a tombstone for each of `gone`) and, when asked,
/// every range.
pub fn fill(b: &mut Builder, set: &[Dec], gone: &[(bool, u128)], ranges: bool) {
    let mut keys: Vec<(bool, u128)> = set
        .iter()
        .filter(|d| d.exact)
        .map(|d| (d.v6, d.first))
        .collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let list: Vec<Verdict> = set
            .iter()
            .filter(|d| d.exact && (d.v6, d.first) == k)
            .map(|d| verdict(b, d))
            .collect();
        put(b, k, &list);
    }
    for &k in gone {
        put(b, k, &[]);
    }
    if ranges {
        fill_ranges(b, set);
    }
}

/// Puts every range of `set`.
pub fn fill_ranges(b: &mut Builder, set: &[Dec]) {
    for d in set.iter().filter(|d| !d.exact) {
        let v = verdict(b, d);
        if d.v6 {
            b.range6(d.first, d.last, v)
        } else {
            b.range4(d.first as u32, d.last as u32, v)
        }
    }
}

fn put(b: &mut Builder, k: (bool, u128), list: &[Verdict]) {
    if k.0 {
        b.exact6(k.1, list)
    } else {
        b.exact4(k.1 as u32, list)
    }
}

pub fn ip_of(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// Addresses to ask: each decision's edges and neighbours, mapped forms, strangers.
pub fn probes(set: &[Dec]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for d in set {
        for a in [
            d.first.wrapping_sub(1),
            d.first,
            d.last,
            d.last.wrapping_add(1),
        ] {
            let a = if d.v6 { a } else { a & 0xffff_ffff };
            out.push(ip_of(d.v6, a));
        }
    }
    for s in [
        "::ffff:192.0.2.1",
        "::ffff:198.51.100.129",
        "::",
        "::1",
        "255.255.255.255",
        "0.0.0.0",
        "2001:db8:1:2:3::9",
    ] {
        out.push(s.parse().unwrap());
    }
    out.sort();
    out.dedup();
    out
}

/// The reference lookup's answer at `now` for each probe, as `expected.json` holds it.
pub fn answers(base: &[u8], overlay: Option<&[u8]>, probes: &[IpAddr], now: u32) -> Value {
    let b = Segment::parse(base).unwrap();
    let o = overlay.map(|o| Segment::parse(o).unwrap());
    let list: Vec<Value> = probes
        .iter()
        .map(|ip| {
            let a = lookup(&b, o.as_ref(), *ip, now);
            json!({"ip": ip.to_string(), "remediation": a.remediation.as_str(), "bypassed": a.bypassed,
                   "fail_closed": a.fail_closed, "expires_in_s": a.expires_in_s, "origin": a.origin,
                   "scenario": a.scenario, "type": a.type_name})
        })
        .collect();
    Value::Array(list)
}
