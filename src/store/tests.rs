use super::*;
use crate::decision::Decision;
use proptest::prelude::*;

fn dec(id: i64, value: &str, type_name: &str, expires_at: u32) -> Decision {
    Decision {
        id,
        target: Target::parse(value).unwrap(),
        type_name: type_name.into(),
        origin: "crowdsec".into(),
        scenario: format!("scenario-{id}"),
        expires_at,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn remediation(snap: &Snapshot, addr: &str, now: u32) -> Option<(Remediation, i64)> {
    snap.lookup(ip(addr), now)
        .map(|h| (h.remediation(), h.verdict.id()))
}

#[test]
fn single_ips_and_ranges_both_families() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "ban", 100));
    w.insert(&dec(2, "2001:db8::1", "captcha", 100));
    w.insert(&dec(3, "10.0.0.0/8", "ban", 100));
    w.insert(&dec(4, "2001:db8:1::/48", "throttle", 100));
    // Nothing visible before publish.
    assert!(d.snapshot().lookup(ip("192.0.2.1"), 0).is_none());
    let snap = w.publish();
    assert_eq!(snap.len(), 4);
    assert_eq!(
        remediation(&snap, "192.0.2.1", 0),
        Some((Remediation::Ban, 1))
    );
    assert_eq!(
        remediation(&snap, "::ffff:192.0.2.1", 0),
        Some((Remediation::Ban, 1))
    );
    assert_eq!(remediation(&snap, "192.0.2.2", 0), None);
    assert_eq!(
        remediation(&snap, "2001:db8::1", 0),
        Some((Remediation::Captcha, 2))
    );
    assert_eq!(
        remediation(&snap, "10.255.255.255", 0),
        Some((Remediation::Ban, 3))
    );
    assert_eq!(remediation(&snap, "11.0.0.0", 0), None);
    assert_eq!(remediation(&snap, "9.255.255.255", 0), None);
    assert_eq!(
        remediation(&snap, "2001:db8:1:ffff::9", 0),
        Some((Remediation::Throttle, 4))
    );
    assert_eq!(remediation(&snap, "2001:db8:2::1", 0), None);
}

#[test]
fn strongest_wins_then_longest_and_delete_keeps_others() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "captcha", 500));
    w.insert(&dec(2, "192.0.2.1", "ban", 100));
    w.insert(&dec(3, "192.0.2.1", "ban", 200));
    w.insert(&dec(4, "192.0.2.0/24", "throttle", 900));
    let snap = w.publish();
    assert_eq!(
        remediation(&snap, "192.0.2.1", 0),
        Some((Remediation::Ban, 3))
    );
    // Ban 3 expired: ban 2 too; captcha 1 is next.
    assert_eq!(
        remediation(&snap, "192.0.2.1", 200),
        Some((Remediation::Captcha, 1))
    );
    assert_eq!(
        remediation(&snap, "192.0.2.1", 500),
        Some((Remediation::Throttle, 4))
    );
    assert_eq!(remediation(&snap, "192.0.2.1", 900), None);
    assert!(w.remove(3, Target::parse("192.0.2.1").unwrap()));
    assert!(!w.remove(3, Target::parse("192.0.2.1").unwrap()), "twice");
    let snap = w.publish();
    assert_eq!(
        remediation(&snap, "192.0.2.1", 0),
        Some((Remediation::Ban, 2))
    );
    w.remove(2, Target::parse("192.0.2.1").unwrap());
    w.remove(1, Target::parse("192.0.2.1").unwrap());
    let snap = w.publish();
    assert_eq!(
        remediation(&snap, "192.0.2.1", 0),
        Some((Remediation::Throttle, 4))
    );
    assert_eq!(snap.len(), 1);
}

#[test]
fn a_ban_range_beats_a_captcha_on_the_ip() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "captcha", 500));
    w.insert(&dec(2, "192.0.0.0/16", "ban", 100));
    let snap = w.publish();
    assert_eq!(
        remediation(&snap, "192.0.2.1", 0),
        Some((Remediation::Ban, 2))
    );
    assert_eq!(
        remediation(&snap, "192.0.2.1", 100),
        Some((Remediation::Captcha, 1))
    );
}

#[test]
fn nested_and_edge_ranges() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "0.0.0.0/0", "throttle", 100));
    w.insert(&dec(2, "255.255.255.0/24", "ban", 100));
    w.insert(&dec(3, "10.0.0.0/8", "captcha", 100));
    w.insert(&dec(4, "10.1.0.0/16", "ban", 50));
    w.insert(&dec(5, "::/0", "captcha", 100));
    let snap = w.publish();
    assert_eq!(
        remediation(&snap, "255.255.255.255", 0),
        Some((Remediation::Ban, 2))
    );
    assert_eq!(
        remediation(&snap, "0.0.0.0", 0),
        Some((Remediation::Throttle, 1))
    );
    assert_eq!(
        remediation(&snap, "10.1.2.3", 0),
        Some((Remediation::Ban, 4))
    );
    assert_eq!(
        remediation(&snap, "10.1.2.3", 60),
        Some((Remediation::Captcha, 3))
    );
    assert_eq!(
        remediation(&snap, "10.2.0.0", 0),
        Some((Remediation::Captcha, 3))
    );
    assert_eq!(
        remediation(&snap, "ffff::1", 0),
        Some((Remediation::Captcha, 5))
    );
    assert!(w.remove(1, Target::parse("0.0.0.0/0").unwrap()));
    let snap = w.publish();
    assert_eq!(remediation(&snap, "0.0.0.0", 0), None);
}

#[test]
fn reinserting_an_id_replaces_it() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "ban", 100));
    w.insert(&dec(1, "192.0.2.1", "ban", 300));
    w.insert(&dec(2, "10.0.0.0/8", "ban", 100));
    w.insert(&dec(2, "10.0.0.0/8", "ban", 300));
    let snap = w.publish();
    assert_eq!(snap.len(), 2);
    assert_eq!(
        remediation(&snap, "192.0.2.1", 200),
        Some((Remediation::Ban, 1))
    );
    assert_eq!(
        remediation(&snap, "10.0.0.1", 200),
        Some((Remediation::Ban, 2))
    );
}

#[test]
fn purge_drops_expired_only() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "ban", 100));
    w.insert(&dec(2, "192.0.2.1", "captcha", 300));
    w.insert(&dec(3, "10.0.0.0/8", "ban", 100));
    w.insert(&dec(4, "2001:db8::1", "ban", 300));
    assert_eq!(w.purge_expired(100), 2);
    let snap = w.publish();
    assert_eq!(snap.len(), 2);
    assert_eq!(
        remediation(&snap, "192.0.2.1", 0),
        Some((Remediation::Captcha, 2))
    );
}

#[test]
fn decider_toggle_and_outage_policies() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "ban", u32::MAX));
    w.publish();
    assert_eq!(
        d.answer(ip("192.0.2.1")).remediation,
        Some(Remediation::Ban)
    );
    assert_eq!(
        d.answer(ip("192.0.2.1")).origin.as_deref(),
        Some("crowdsec")
    );
    assert!(d.answer(ip("192.0.2.9")).allows());
    d.set_enabled(false);
    let a = d.answer(ip("192.0.2.1"));
    assert!(a.allows());
    assert_eq!(a.source, Source::Bypassed);
    d.set_enabled(true);
    d.set_outage(Some(UnreachablePolicy::Closed));
    let a = d.answer(ip("192.0.2.9"));
    assert_eq!(
        (a.remediation, a.source),
        (Some(Remediation::Ban), Source::FailClosed)
    );
    d.set_outage(Some(UnreachablePolicy::Open));
    assert_eq!(d.answer(ip("192.0.2.1")).source, Source::FailOpen);
    d.set_outage(Some(UnreachablePolicy::Keep));
    assert_eq!(
        d.answer(ip("192.0.2.1")).remediation,
        Some(Remediation::Ban)
    );
    assert!(d.lookups() >= 7);
}

// ---- property test against a reference model ----

#[derive(Debug, Clone)]
enum Op {
    Add(Decision),
    Delete(usize),
    Publish,
    Purge(u32),
    Lookup(IpAddr, u32),
}

/// A small universe so that collisions, nesting and shared keys are frequent.
fn universe_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        (
            0u32..4,
            0u32..4,
            prop_oneof![Just(32u8), Just(24), Just(16), Just(8), Just(30), Just(0)]
        )
            .prop_map(|(a, b, p)| Target::from_net(
                format!("10.{a}.{b}.{}/{p}", a * 3 + b).parse().unwrap()
            )),
        (
            0u16..4,
            prop_oneof![Just(128u8), Just(64), Just(48), Just(127), Just(0)]
        )
            .prop_map(|(a, p)| Target::from_net(format!("2001:db8:{a}::{a}/{p}").parse().unwrap())),
        (0u8..4).prop_map(|a| Target::parse(&format!("::ffff:10.0.0.{a}")).unwrap()),
    ]
}

fn lookup_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u32..4, 0u32..4, 0u32..16).prop_map(|(a, b, c)| ip(&format!("10.{a}.{b}.{c}"))),
        (0u16..4, 0u16..4).prop_map(|(a, b)| ip(&format!("2001:db8:{a}::{b}"))),
        (0u8..4).prop_map(|a| ip(&format!("::ffff:10.0.0.{a}"))),
        Just(ip("11.0.0.1")),
        Just(ip("2001:db9::1")),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let types = prop_oneof![
        Just("ban"),
        Just("captcha"),
        Just("throttle"),
        Just("custom")
    ];
    prop_oneof![
        4 => (0i64..40, universe_target(), types, 1u32..60).prop_map(|(id, target, t, exp)| Op::Add(Decision {
            id,
            target,
            type_name: t.into(),
            origin: "o".into(),
            scenario: "s".into(),
            expires_at: exp,
        })),
        2 => (0usize..64).prop_map(Op::Delete),
        1 => Just(Op::Publish),
        1 => (0u32..60).prop_map(Op::Purge),
        4 => (lookup_ip(), 0u32..60).prop_map(|(ip, now)| Op::Lookup(ip, now)),
    ]
}

fn model_answer(model: &[Decision], ip: IpAddr, now: u32) -> Option<(Remediation, u32)> {
    model
        .iter()
        .filter(|d| d.expires_at > now && d.target.contains(ip))
        .map(|d| (d.remediation(), d.expires_at))
        .max()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn snapshot_matches_reference_model(ops in proptest::collection::vec(op(), 1..120)) {
        let d = Decider::new();
        let mut w = d.writer();
        // `published` is the model as of the last publish; `model` the pending one.
        let mut model: Vec<Decision> = Vec::new();
        let mut published: Vec<Decision> = Vec::new();
        for op in ops {
            match op {
                Op::Add(dec) => {
                    // Same id on the same target replaces (LAPI ids are unique per decision).
                    model.retain(|m| !(m.id == dec.id && m.target == dec.target));
                    w.insert(&dec);
                    model.push(dec);
                }
                Op::Delete(i) => {
                    if let Some(victim) = model.get(i % model.len().max(1)).cloned() {
                        prop_assert!(w.remove(victim.id, victim.target));
                        model.retain(|m| !(m.id == victim.id && m.target == victim.target));
                    }
                }
                Op::Publish => {
                    w.publish();
                    published = model.clone();
                }
                Op::Purge(now) => {
                    let before = model.len();
                    model.retain(|m| m.expires_at > now);
                    prop_assert_eq!(w.purge_expired(now), before - model.len());
                }
                Op::Lookup(ip, now) => {
                    let got = d.snapshot().lookup(ip, now).map(|h| (h.remediation(), h.verdict.expires_at()));
                    prop_assert_eq!(got, model_answer(&published, ip, now), "ip {} now {}", ip, now);
                }
            }
        }
        w.publish();
        prop_assert_eq!(d.snapshot().len(), model.len());
        for ipn in ["10.0.0.1", "10.1.2.3", "2001:db8:1::1", "::ffff:10.0.0.2", "10.3.3.9"] {
            for now in [0, 30] {
                let got = d.snapshot().lookup(ip(ipn), now).map(|h| (h.remediation(), h.verdict.expires_at()));
                prop_assert_eq!(got, model_answer(&model, ip(ipn), now), "final ip {} now {} model {:?}", ipn, now, model);
            }
        }
    }
}

#[test]
fn generation_stays_monotonic_when_a_fresh_writer_replaces_a_busier_one() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "ban", 100));
    let g1 = w.publish().generation();
    // A full pull starts building from nothing...
    let mut full = w.fresh();
    full.insert(&dec(1, "192.0.2.1", "ban", 100));
    // ...while commands publish twice on the current writer.
    w.insert(&dec(2, "192.0.2.2", "ban", 100));
    let g2 = w.publish().generation();
    w.remove(2, Target::parse("192.0.2.2").unwrap());
    let g3 = w.publish().generation();
    assert!(g1 < g2 && g2 < g3, "{g1} {g2} {g3}");
    let g4 = full.publish().generation();
    assert!(
        g4 > g3,
        "the full pull's snapshot went back: {g3} then {g4}"
    );
    assert_eq!(d.snapshot().generation(), g4);
}

#[test]
fn contains_matches_id_and_target() {
    let d = Decider::new();
    let mut w = d.writer();
    w.insert(&dec(1, "192.0.2.1", "ban", 100));
    w.insert(&dec(2, "192.0.2.1", "captcha", 100));
    w.insert(&dec(3, "10.0.0.0/8", "ban", 100));
    w.insert(&dec(4, "2001:db8::1", "ban", 100));
    let t = |v: &str| Target::parse(v).unwrap();
    for (id, v) in [
        (1, "192.0.2.1"),
        (2, "192.0.2.1"),
        (3, "10.0.0.0/8"),
        (4, "2001:db8::1"),
    ] {
        assert!(w.contains(id, t(v)), "{id} {v}");
    }
    for (id, v) in [
        (3, "192.0.2.1"),
        (1, "192.0.2.2"),
        (1, "10.0.0.0/8"),
        (3, "10.0.0.0/9"),
    ] {
        assert!(!w.contains(id, t(v)), "{id} {v}");
    }
}
