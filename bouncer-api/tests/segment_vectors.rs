//! The shared segment vectors in `testdata/segments/`: segment files written by the
//! reference writer and `expected.json`, the reference lookup's answer for a set of
//! addresses. This test regenerates them in memory and requires the checked-in files
//! to be the same; `CERBERUS_UPDATE_SEGMENTS=1 cargo test -p bouncer-api --test
//! segment_vectors` rewrites them. The Go reader's tests read the same files.

mod segment_cases;

use bouncer_api::segment::{Builder, Outage, KIND_BASE, KIND_OVERLAY};
use bouncer_api::Remediation;
use segment_cases::{self as cases, answers, fill, fill_ranges, probes, Dec, Rng, REMS};
use serde_json::json;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

const NOW: u32 = 1_800_000_000;

fn v4(s: &str) -> u128 {
    u128::from(u32::from(s.parse::<Ipv4Addr>().unwrap()))
}
fn v6(s: &str) -> u128 {
    u128::from(s.parse::<Ipv6Addr>().unwrap())
}

/// An exact decision that expires `ttl` seconds after `NOW`.
fn exact(v6: bool, a: u128, rem: Remediation, ttl: i64, origin: &str, scenario: &str) -> Dec {
    cases::exact(v6, a, rem, (NOW as i64 + ttl) as u32, origin, scenario)
}

/// A range decision that expires `ttl` seconds after `NOW`.
fn range(
    v6: bool,
    a: u128,
    prefix: u32,
    rem: Remediation,
    ttl: i64,
    origin: &str,
    scenario: &str,
) -> Dec {
    cases::range(
        v6,
        a,
        prefix,
        rem,
        (NOW as i64 + ttl) as u32,
        origin,
        scenario,
    )
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
        fill_ranges(&mut o, &now_set);
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
            {"name": "base only", "base": "base.seg", "overlay": null, "answers": answers(&base, None, &probe, NOW)},
            {"name": "base and overlay", "base": "base.seg", "overlay": "overlay.seg", "answers": answers(&base, Some(&overlay), &probe, NOW)},
            {"name": "protection disabled", "base": "base.seg", "overlay": "overlay-disabled.seg", "answers": answers(&base, Some(&disabled), &probe, NOW)},
            {"name": "LAPI stale, fail closed", "base": "base.seg", "overlay": "overlay-closed.seg", "answers": answers(&base, Some(&closed), &probe, NOW)},
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
