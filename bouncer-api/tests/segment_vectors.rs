//! The shared segment vectors in `testdata/segments/`: segment files written by the
//! reference writer and `expected.json`, the reference lookup's answer for a set of
//! addresses. This test regenerates them in memory and requires the checked-in files
//! to be the same; `CERBERUS_UPDATE_SEGMENTS=1 cargo test -p bouncer-api --test
//! segment_vectors` rewrites them. The Go reader's tests read the same files.

use bouncer_api::segment::{lookup, Builder, Outage, Segment, Verdict, KIND_BASE, KIND_OVERLAY};
use bouncer_api::Remediation;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

const NOW: u32 = 1_800_000_000;

/// A small deterministic generator (xorshift64*), so the vectors never change by accident.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone)]
struct Dec {
    v6: bool,
    first: u128,
    last: u128,
    exact: bool,
    rem: Remediation,
    expires: u32,
    origin: String,
    scenario: String,
}

const REMS: [Remediation; 4] = [
    Remediation::Ban,
    Remediation::Captcha,
    Remediation::Throttle,
    Remediation::Other,
];

fn v4(s: &str) -> u128 {
    u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()))
}
fn v6(s: &str) -> u128 {
    u128::from(s.parse::<Ipv6Addr>().unwrap())
}

fn exact(v6: bool, a: u128, rem: Remediation, ttl: i64, origin: &str, scenario: &str) -> Dec {
    Dec {
        v6,
        first: a,
        last: a,
        exact: true,
        rem,
        expires: (NOW as i64 + ttl) as u32,
        origin: origin.into(),
        scenario: scenario.into(),
    }
}

fn range(
    v6: bool,
    a: u128,
    prefix: u32,
    rem: Remediation,
    ttl: i64,
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
        ..exact(v6, a, rem, ttl, origin, scenario)
    }
}

/// Hand-picked cases, then random ones in small address blocks (so they collide and nest).
fn decisions() -> Vec<Dec> {
    use Remediation::*;
    let mut d = vec![
        exact(
            false,
            v4("192.0.2.1"),
            Ban,
            3600,
            "crowdsec",
            "crowdsecurity/ssh-bf",
        ),
        exact(false, v4("192.0.2.2"), Ban, -10, "crowdsec", "expired"),
        exact(
            false,
            v4("192.0.2.2"),
            Captcha,
            600,
            "CAPI",
            "crowdsecurity/http-probing",
        ),
        exact(
            false,
            v4("192.0.2.3"),
            Throttle,
            60,
            "cscli",
            "<script>alert(1)</script>",
        ),
        exact(
            false,
            v4("192.0.2.3"),
            Throttle,
            120,
            "cscli",
            "longer throttle",
        ),
        exact(false, v4("192.0.2.4"), Other, 30, "lists", "mfa wanted"),
        exact(false, v4("192.0.2.5"), Ban, 1, "cscli", "ünïcödé ✓"),
        range(
            false,
            v4("198.51.100.0"),
            24,
            Captcha,
            900,
            "lists",
            "outer /24",
        ),
        range(
            false,
            v4("198.51.100.128"),
            25,
            Ban,
            300,
            "lists",
            "inner /25",
        ),
        range(
            false,
            v4("198.51.100.200"),
            30,
            Throttle,
            5000,
            "cscli",
            "nested /30",
        ),
        exact(
            false,
            v4("198.51.100.7"),
            Throttle,
            99999,
            "cscli",
            "exact inside range",
        ),
        exact(
            false,
            v4("198.51.100.201"),
            Ban,
            10,
            "cscli",
            "exact ban inside /30",
        ),
        range(
            false,
            v4("203.0.113.0"),
            24,
            Ban,
            -5,
            "lists",
            "expired range",
        ),
        exact(true, v6("2001:db8::1"), Ban, 3600, "crowdsec", "v6 exact"),
        range(true, v6("2001:db8:1::"), 48, Ban, 7200, "CAPI", "v6 /48"),
        range(
            true,
            v6("2001:db8:1:2::"),
            64,
            Captcha,
            9000,
            "CAPI",
            "v6 /64 in /48",
        ),
        range(false, 0, 0, Other, 5, "lists", "everything v4"),
        range(true, v6("ffff:ffff::"), 32, Ban, 50, "lists", "top of v6"),
    ];
    let mut rng = Rng(0x5eed_cafe);
    for i in 0..600 {
        let v6b = rng.below(3) == 0;
        let base = if v6b {
            v6("2001:db8:100::")
        } else {
            v4("10.1.0.0")
        };
        let a = base + u128::from(rng.below(512) as u32);
        let rem = REMS[rng.below(4) as usize];
        let ttl = rng.below(4000) as i64 - 1000;
        let origin = ["crowdsec", "CAPI", "cscli"][rng.below(3) as usize];
        let scenario = format!("random/{i}");
        if rng.below(8) == 0 {
            let prefix = if v6b {
                120 + rng.below(8) as u32
            } else {
                24 + rng.below(8) as u32
            };
            d.push(range(v6b, a, prefix, rem, ttl, origin, &scenario));
        } else {
            d.push(exact(v6b, a, rem, ttl, origin, &scenario));
        }
    }
    d
}

fn verdict(b: &mut Builder, d: &Dec) -> Verdict {
    let meta = b.meta(d.rem, d.rem.as_str(), &d.origin, &d.scenario);
    Verdict {
        expires: d.expires,
        meta,
    }
}

/// Puts every exact key of `set` (and a tombstone for each of `gone`) and, when asked,
/// every range.
fn fill(b: &mut Builder, set: &[Dec], gone: &[(bool, u128)], ranges: bool) {
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
            .cloned()
            .collect::<Vec<_>>()
            .iter()
            .map(|d| verdict(b, d))
            .collect();
        put(b, k, &list);
    }
    for &k in gone {
        put(b, k, &[]);
    }
    if ranges {
        for d in set.iter().filter(|d| !d.exact) {
            let v = verdict(b, d);
            if d.v6 {
                b.range6(d.first, d.last, v)
            } else {
                b.range4(d.first as u32, d.last as u32, v)
            }
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

fn ip_of(v6: bool, a: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(a))
    } else {
        IpAddr::V4(Ipv4Addr::from(a as u32))
    }
}

/// Addresses to ask: each decision's edges and neighbours, mapped forms, strangers.
fn probes(set: &[Dec]) -> Vec<IpAddr> {
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

fn answers(base: &[u8], overlay: Option<&[u8]>, probes: &[IpAddr]) -> Value {
    let b = Segment::parse(base).unwrap();
    let o = overlay.map(|o| Segment::parse(o).unwrap());
    let list: Vec<Value> = probes
        .iter()
        .map(|ip| {
            let a = lookup(&b, o.as_ref(), *ip, NOW);
            json!({"ip": ip.to_string(), "remediation": a.remediation.as_str(), "bypassed": a.bypassed,
                   "fail_closed": a.fail_closed, "expires_in_s": a.expires_in_s, "origin": a.origin,
                   "scenario": a.scenario, "type": a.type_name})
        })
        .collect();
    Value::Array(list)
}

#[test]
fn segment_vectors_match_the_reference_writer() {
    let all = decisions();
    // The base holds everything; the overlay unbans 192.0.2.1, the nested /30 and every
    // fifth random exact key, adds a ban on 192.0.2.9, and so carries new ranges.
    let base = {
        let mut b = Builder::new(KIND_BASE, 10, 10);
        fill(&mut b, &all, &[], true);
        b.finish(0x0123_4567_89ab_cdef)
    };
    let mut now_set: Vec<Dec> = Vec::new();
    let mut gone = Vec::new();
    for (i, d) in all.iter().enumerate() {
        let drop = (d.exact && d.first == v4("192.0.2.1"))
            || d.scenario == "nested /30"
            || (d.scenario.starts_with("random/") && d.exact && i % 5 == 0);
        if drop {
            if d.exact {
                gone.push((d.v6, d.first));
            }
        } else {
            now_set.push(d.clone());
        }
    }
    gone.retain(|k| !now_set.iter().any(|d| d.exact && (d.v6, d.first) == *k));
    gone.sort();
    gone.dedup();
    now_set.push(exact(
        false,
        v4("192.0.2.9"),
        Remediation::Ban,
        77,
        "cscli",
        "new in overlay",
    ));
    let changed: Vec<Dec> = {
        let mut keys: Vec<(bool, u128)> = gone.clone();
        keys.push((false, v4("192.0.2.9")));
        now_set
            .iter()
            .filter(|d| d.exact && keys.contains(&(d.v6, d.first)))
            .cloned()
            .collect()
    };
    let overlay_with = |generation: u64, disabled: bool, outage: Outage| {
        let mut o = Builder::new(KIND_OVERLAY, generation, 10);
        fill(&mut o, &changed, &gone, false);
        o.carry_ranges();
        for d in now_set.iter().filter(|d| !d.exact) {
            let v = verdict(&mut o, d);
            if d.v6 {
                o.range6(d.first, d.last, v)
            } else {
                o.range4(d.first as u32, d.last as u32, v)
            }
        }
        o.set_state(disabled, outage);
        o.finish(0xfeed_f00d ^ generation)
    };
    let overlay = overlay_with(11, false, Outage::None);
    let disabled = overlay_with(12, true, Outage::None);
    let closed = overlay_with(13, false, Outage::FailClosed);
    let mut probe = probes(&all);
    probe.extend(probes(&now_set));
    probe.sort();
    probe.dedup();

    let expected = json!({
        "now": NOW,
        "cases": [
            {"name": "base only", "base": "base.seg", "overlay": null, "answers": answers(&base, None, &probe)},
            {"name": "base and overlay", "base": "base.seg", "overlay": "overlay.seg", "answers": answers(&base, Some(&overlay), &probe)},
            {"name": "protection disabled", "base": "base.seg", "overlay": "overlay-disabled.seg", "answers": answers(&base, Some(&disabled), &probe)},
            {"name": "LAPI stale, fail closed", "base": "base.seg", "overlay": "overlay-closed.seg", "answers": answers(&base, Some(&closed), &probe)},
        ]
    });
    let mut text = serde_json::to_string(&expected).unwrap();
    text.push('\n');
    let files: [(&str, &[u8]); 5] = [
        ("base.seg", &base),
        ("overlay.seg", &overlay),
        ("overlay-disabled.seg", &disabled),
        ("overlay-closed.seg", &closed),
        ("expected.json", text.as_bytes()),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/segments");
    if std::env::var_os("CERBERUS_UPDATE_SEGMENTS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in files {
        let on_disk = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}; regenerate with CERBERUS_UPDATE_SEGMENTS=1"));
        assert!(on_disk == bytes, "testdata/segments/{name} differs from the writer's output; regenerate with CERBERUS_UPDATE_SEGMENTS=1");
    }
    // The vectors are not trivial: each kind of answer occurs.
    let base_answers = expected["cases"][0]["answers"].as_array().unwrap();
    for rem in ["allow", "ban", "captcha", "throttle", "other"] {
        assert!(
            base_answers.iter().any(|a| a["remediation"] == rem),
            "no {rem} answer in the vectors"
        );
    }
}
