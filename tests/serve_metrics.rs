//! The doors' metrics: `cerberus_lookups_total{door,remediation}` and
//! `cerberus_lookup_duration_seconds{door}`, seen through a small recorder installed
//! for this test binary.

mod support;

use cerberus::config::Listen;
use cerberus::decision::{Decision, Target};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _value: f64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

/// Counters and histogram record counts by "name{label=value,...}" (labels sorted).
#[derive(Default)]
struct Seen(Mutex<HashMap<String, Arc<Cell>>>);

impl Seen {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn get(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map(|c| c.0.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

struct TestRecorder(&'static Seen);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.0.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.0.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.0.cell(key))
    }
}

fn seen() -> &'static Seen {
    static SEEN: OnceLock<&'static Seen> = OnceLock::new();
    SEEN.get_or_init(|| {
        let seen: &'static Seen = Box::leak(Box::default());
        metrics::set_global_recorder(TestRecorder(seen)).expect("one recorder");
        seen
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_counted_by_door_and_remediation() {
    let seen = seen();
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), None, None);
    config.forward_auth_listen = Listen::Tcp("127.0.0.1:0".into());
    let app = cerberus::app::start(config).await.unwrap();
    let w = vec![Decision {
        id: 1,
        target: Target::parse("192.0.2.1").unwrap(),
        type_name: "ban".into(),
        origin: "cscli".into(),
        scenario: "s".into(),
        expires_at: cerberus::clock::now_secs_precise() + 600,
    }];
    app.control.insert(w).await.unwrap();

    let client = bouncer_api::Client::new(
        bouncer_api::ClientConfig::new(&app.config.socket).timeout(Duration::from_secs(5)),
    );
    let addrs: Vec<std::net::IpAddr> = ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    client.lookup_many(&addrs).await.unwrap();

    let url = format!("http://{}", app.forward_auth_addr.clone().unwrap());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (xff, want) in [("192.0.2.1", 403), ("192.0.2.9", 200), ("bogus", 400)] {
        let r = http
            .get(&url)
            .header("X-Forwarded-For", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want);
    }

    assert_eq!(
        seen.get("cerberus_lookups_total{door=socket,remediation=ban}"),
        1
    );
    assert_eq!(
        seen.get("cerberus_lookups_total{door=socket,remediation=allow}"),
        2
    );
    assert_eq!(seen.get("cerberus_lookup_duration_seconds{door=socket}"), 3);
    assert_eq!(
        seen.get("cerberus_lookups_total{door=forward_auth,remediation=ban}"),
        1
    );
    assert_eq!(
        seen.get("cerberus_lookups_total{door=forward_auth,remediation=allow}"),
        1
    );
    assert_eq!(seen.get("cerberus_forward_auth_no_client_ip_total{}"), 1);
    assert_eq!(
        seen.get("cerberus_lookup_duration_seconds{door=forward_auth}"),
        2
    );
    for name in [
        cerberus::metrics::LOOKUPS,
        cerberus::metrics::LOOKUP_DURATION,
        cerberus::metrics::FORWARD_AUTH_NO_CLIENT_IP,
    ] {
        assert!(cerberus::metrics::ALL.contains(&name));
    }
    app.stop().await;
}
