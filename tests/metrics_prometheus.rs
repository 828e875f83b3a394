//! The Prometheus exporter end to end: a daemon started in-process (which installs the
//! exporter), lookups through both doors (allow, ban, captcha, bypassed), then a scrape
//! of `GET /metrics` on the admin listener, read back with a strict parser of the text
//! format: lookup counters move by exactly the traffic made, active decisions are
//! counted by origin, scope and type (expired ones left out, vanished ones set to 0),
//! the protection gauge follows the switch.

mod support;

use cerberus::config::Listen;
use cerberus::decision::{Decision, Target};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(10);

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: samples, and the TYPE and HELP of each family.
#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    types: HashMap<String, String>,
    helps: HashMap<String, String>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// Reads `{a="x",b="y"}` from the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name} value is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name} value is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name}")),
                },
                Some((_, '\n')) => return Err("raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        rest = &rest[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after label {name}"));
        }
    }
}

/// The family a sample belongs to (histogram and summary series carry suffixes).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return Some(base);
            }
        }
    }
    None
}

/// A strict reader of the Prometheus text format (0.0.4).
fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen_families: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let (keyword, rest) = rest.split_once(' ').ok_or_else(|| at("bare #".into()))?;
            match keyword {
                "HELP" => {
                    let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                    if !is_name(name) {
                        return Err(at(format!("bad name {name:?}")));
                    }
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(at("bad escape in HELP".into()));
                        }
                    }
                    if out.helps.insert(name.into(), help.into()).is_some() {
                        return Err(at(format!("second HELP for {name}")));
                    }
                }
                "TYPE" => {
                    let (name, kind) = rest.split_once(' ').ok_or_else(|| at("TYPE".into()))?;
                    if !is_name(name) {
                        return Err(at(format!("bad name {name:?}")));
                    }
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return Err(at(format!("bad type {kind:?}")));
                    }
                    if seen_families.iter().any(|f| f == name) {
                        return Err(at(format!("TYPE for {name} after its samples")));
                    }
                    if out.types.insert(name.into(), kind.into()).is_some() {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("trailing fields".into()));
        }
        let fam = family(name, &out.types)
            .ok_or_else(|| at(format!("{name} has no TYPE line before it")))?;
        if out.types[fam] == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter".into()));
        }
        if !seen_families.iter().any(|f| f == fam) {
            seen_families.push(fam.to_string());
        }
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(out)
}

impl Exposition {
    /// The value of the series with exactly these labels, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} appears twice");
        found.first().map(|s| s.value)
    }

    /// Like `get`, 0 when absent (a counter not touched yet).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// `GET /metrics` on the admin listener, without a token, as Prometheus scrapes it.
async fn scrape(app: &cerberus::app::Running) -> Exposition {
    let url = format!(
        "http://{}/metrics",
        app.admin_addr.as_deref().expect("admin on")
    );
    let resp = reqwest::get(&url).await.expect("/metrics answers");
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = resp.text().await.unwrap();
    if std::env::var("SHOW_EXPOSITION").is_ok() {
        eprintln!("{text}");
    }
    parse(&text).unwrap_or_else(|e| panic!("{e}\n--- exposition ---\n{text}"))
}

fn decision(id: i64, value: &str, type_name: &str, origin: &str, expires_at: u32) -> Decision {
    Decision {
        id,
        target: Target::parse(value).unwrap(),
        type_name: type_name.into(),
        origin: origin.into(),
        scenario: format!("scenario {id}"),
        expires_at,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const LOOKUPS: &str = "cerberus_lookups_total";
const ACTIVE: &str = "cerberus_active_decisions";

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total Things \\\\ done.\n# TYPE a_total counter\na_total{x=\"q\\\"\\n\",y=\"\"} 3\n\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n";
    let e = parse(good).unwrap();
    assert_eq!(e.get("a_total", &[("x", "q\"\n"), ("y", "")]), Some(3.0));
    assert_eq!(e.get("h_count", &[]), Some(1.0));
    for bad in [
        "a_total 1\n",                              // no TYPE
        "# TYPE a counter\na{x=y} 1\n",             // unquoted
        "# TYPE a counter\na{x=\"y} 1\n",           // unclosed
        "# TYPE a counter\na{x=\"\\t\"} 1\n",       // bad escape
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n", // label twice
        "# TYPE a counter\na -1\n",                 // negative counter
        "# TYPE a counter\na one\n",                // not a number
        "# TYPE a counter\na{x=\"1\"}1\n",          // no space
        "# TYPE a gauge\na 1\n# TYPE a gauge\n",    // TYPE twice
        "# TYPE a widget\na 1\n",                   // unknown type
        "# TYPE 1a gauge\n",                        // bad name
        "# TYPE a gauge\na{1x=\"1\"} 1\n",          // bad label name
        "# TYPE a gauge\na 1 2 3\n",                // trailing
        "# HELP a x\n# HELP a y\n",                 // HELP twice
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_decisions_and_protection_in_the_exposition() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::admin::with_admin(support::config(dir.path(), None, None));
    config.forward_auth_listen = Listen::Tcp("127.0.0.1:0".into());
    let app = tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .unwrap()
        .unwrap();

    let before = scrape(&app).await;
    // Every described metric that the daemon has touched carries HELP and TYPE.
    for (name, kind, _, _) in cerberus::metrics::DESCRIPTIONS {
        if let Some(t) = before.types.get(*name) {
            let want = match kind {
                cerberus::metrics::Kind::Counter => "counter",
                cerberus::metrics::Kind::Gauge => "gauge",
                cerberus::metrics::Kind::Histogram => "histogram",
            };
            assert_eq!(t, want, "{name}");
            assert!(
                before.helps.get(*name).is_some_and(|h| !h.is_empty()),
                "{name} has no HELP"
            );
        }
    }
    // forward_auth registered its counters when it was built (the socket does per
    // connection): they are there, at zero, before any request.
    for r in cerberus::serve::REMEDIATION_LABELS {
        let l = [("door", "forward_auth"), ("remediation", r)];
        assert_eq!(before.get(LOOKUPS, &l), Some(0.0), "forward_auth/{r}");
    }
    assert_eq!(before.get("cerberus_protection_enabled", &[]), Some(1.0));
    assert!(before
        .samples
        .iter()
        .all(|s| s.name != ACTIVE || s.value == 0.0));

    let now = cerberus::clock::now_secs_precise();
    app.control
        .insert(vec![
            decision(1, "192.0.2.1", "ban", "cscli", now + 3600),
            decision(2, "2001:db8::1", "captcha", "crowdsec", now + 3600),
            decision(3, "198.51.100.0/24", "ban", "lists", now + 3600),
            decision(4, "192.0.2.9", "ban", "cscli", now.saturating_sub(5)),
            decision(5, "203.0.113.7", "ban", "crowdsec", now + 3600),
        ])
        .await
        .unwrap();

    let socket =
        bouncer_api::Client::new(bouncer_api::ClientConfig::new(&app.config.socket).timeout(LIMIT));
    let answers = socket
        .lookup_many(&[
            ip("192.0.2.1"),
            ip("192.0.2.2"),
            ip("198.51.100.5"),
            ip("2001:db8::1"),
            ip("192.0.2.9"),
        ])
        .await
        .unwrap();
    let got: Vec<_> = answers.iter().map(|a| a.remediation.as_str()).collect();
    assert_eq!(got, ["ban", "allow", "ban", "captcha", "allow"]);

    let url = format!("http://{}", app.forward_auth_addr.clone().unwrap());
    let http = reqwest::Client::builder().timeout(LIMIT).build().unwrap();
    let fa = |xff: &'static str| {
        let req = http.get(&url).header("X-Forwarded-For", xff);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(fa("192.0.2.1").await, 403);
    assert_eq!(fa("192.0.2.3").await, 200);

    // Protection off: every answer is allow, counted as bypassed.
    app.decider.set_enabled(false);
    let a = socket.lookup(ip("192.0.2.1")).await.unwrap();
    assert!(a.flags.is_bypassed());
    assert_eq!(fa("192.0.2.1").await, 200);
    assert_eq!(fa("198.51.100.5").await, 200);

    let after = scrape(&app).await;
    let moved = |door: &str, r: &str| {
        let l = [("door", door), ("remediation", r)];
        after.count(LOOKUPS, &l) - before.count(LOOKUPS, &l)
    };
    let want = [
        ("socket", "allow", 2.0),
        ("socket", "ban", 2.0),
        ("socket", "captcha", 1.0),
        ("socket", "throttle", 0.0),
        ("socket", "other", 0.0),
        ("socket", "bypassed", 1.0),
        ("forward_auth", "allow", 1.0),
        ("forward_auth", "ban", 1.0),
        ("forward_auth", "captcha", 0.0),
        ("forward_auth", "throttle", 0.0),
        ("forward_auth", "other", 0.0),
        ("forward_auth", "bypassed", 2.0),
    ];
    for (door, r, n) in want {
        assert_eq!(
            moved(door, r),
            n,
            "{LOOKUPS}{{door={door},remediation={r}}}"
        );
    }
    // The duration histogram saw the same lookups.
    for (door, n) in [("socket", 6.0), ("forward_auth", 4.0)] {
        let name = "cerberus_lookup_duration_seconds_count";
        let l = [("door", door)];
        assert_eq!(after.count(name, &l) - before.count(name, &l), n, "{door}");
    }

    let active = |e: &Exposition, origin: &str, scope: &str, t: &str| {
        e.get(ACTIVE, &[("origin", origin), ("scope", scope), ("type", t)])
    };
    // The expired cscli ban (id 4) is not counted.
    assert_eq!(active(&after, "cscli", "Ip", "ban"), Some(1.0));
    assert_eq!(active(&after, "crowdsec", "Ip", "captcha"), Some(1.0));
    assert_eq!(active(&after, "crowdsec", "Ip", "ban"), Some(1.0));
    assert_eq!(active(&after, "lists", "Range", "ban"), Some(1.0));
    let series = after.samples.iter().filter(|s| s.name == ACTIVE).count();
    assert_eq!(series, 4, "{:?}", after.samples);
    assert_eq!(after.get("cerberus_snapshot_decisions", &[]), Some(5.0));
    assert_eq!(after.get("cerberus_protection_enabled", &[]), Some(0.0));

    // Back on; one decision gone: its series drops to 0, the others stay.
    app.decider.set_enabled(true);
    let lifted = app.control.delete_id(2).await.unwrap();
    assert_eq!(lifted.len(), 1);
    app.control
        .insert(vec![decision(6, "192.0.2.60", "ban", "cscli", now + 3600)])
        .await
        .unwrap();
    let last = scrape(&app).await;
    assert_eq!(last.get("cerberus_protection_enabled", &[]), Some(1.0));
    assert_eq!(active(&last, "crowdsec", "Ip", "captcha"), Some(0.0));
    assert_eq!(active(&last, "cscli", "Ip", "ban"), Some(2.0));
    assert_eq!(active(&last, "crowdsec", "Ip", "ban"), Some(1.0));
    assert_eq!(active(&last, "lists", "Range", "ban"), Some(1.0));
    // Nothing looked up since: the counters did not move.
    for (door, r, _) in want {
        let l = [("door", door), ("remediation", r)];
        assert_eq!(last.count(LOOKUPS, &l), after.count(LOOKUPS, &l));
    }

    // The usage counters (pushed to LAPI in LAPI mode) saw the same traffic: 10 lookups,
    // 4 of them blocked (bypassed ones pass).
    let usage = app.decider.usage().totals();
    assert_eq!(usage.processed, 10);
    let dropped: BTreeMap<(String, String), u64> = [
        (("cscli", "ban"), 2),
        (("lists:scenario 3", "ban"), 1),
        (("crowdsec", "captcha"), 1),
    ]
    .into_iter()
    .map(|((o, r), n)| ((o.to_string(), r.to_string()), n))
    .collect();
    assert_eq!(usage.dropped, dropped);

    // install() is idempotent and keeps the exporter.
    assert!(cerberus::metrics::install());
    assert!(cerberus::metrics::render().is_some());
    app.stop().await;
}
