//! Scale-out with real parts (issue #16, acceptance 1): PostgreSQL from Debian's package,
//! two CrowdSec LAPIs of the version under test on that one database, and two cerberus
//! nodes, each with its own bouncer key and a watcher. A ban made through either LAPI
//! reaches both nodes; an unban on node A (admin API) reaches node B within two of its
//! update periods; with LAPI 1 killed, node A (listing both) fails over and gets a ban
//! made on LAPI 2; with LAPI 1 back, node A holds exactly LAPI's active set.

mod support;

use cerberus::decision::Remediation;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::admin::{with_admin, AdminClient};
use support::lapi::Lapi;
use support::postgres::Postgres;

const UPDATE: Duration = Duration::from_secs(1);

fn banned(app: &cerberus::app::Running, ip: &str) -> bool {
    app.decider.answer(ip.parse().unwrap()).remediation == Some(Remediation::Ban)
}

/// A node syncing from `urls` in order with its own bouncer key and `watcher`'s login.
async fn node(
    dir: &std::path::Path,
    urls: &[&Lapi],
    key: &str,
    watcher: &Lapi,
) -> cerberus::app::Running {
    let mut c = with_admin(support::config(dir, None, Some(key)));
    c.api_url = urls.iter().map(|l| l.url.clone()).collect();
    c.update_frequency = UPDATE;
    c.lapi_timeout = Duration::from_secs(5);
    c.machine_id = Some(watcher.machine_id.clone());
    c.machine_password = Some(watcher.machine_password.clone());
    cerberus::app::start(c).await.unwrap()
}

/// (id, value) of every active decision LAPI lists.
fn lapi_active(lapi: &Lapi) -> BTreeSet<(i64, String)> {
    let out = lapi.cscli(&["decisions", "list", "-o", "json"]);
    let alerts: Value = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    let mut set = BTreeSet::new();
    for alert in alerts.as_array().cloned().unwrap_or_default() {
        for d in alert["decisions"].as_array().cloned().unwrap_or_default() {
            set.insert((
                d["id"].as_i64().unwrap(),
                d["value"].as_str().unwrap().to_string(),
            ));
        }
    }
    set
}

/// (id, target) of every unexpired decision node enforces, and how many entries that is
/// (more entries than distinct pairs would be a duplicate).
fn node_active(app: &cerberus::app::Running) -> (BTreeSet<(i64, String)>, usize) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    let mut set = BTreeSet::new();
    let mut entries = 0;
    app.decider.snapshot().for_each(|target, v, _| {
        if v.expires_at() > now {
            entries += 1;
            set.insert((v.id(), target.to_string()));
        }
    });
    (set, entries)
}

fn ban(lapi: &Lapi, ip: &str) {
    lapi.cscli(&["decisions", "add", "--ip", ip, "--duration", "4h"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lapis_on_one_postgres_serve_two_nodes_and_fail_over() {
    let pg = Postgres::start();
    // One after the other: the first runs the schema migration on the empty database.
    let lapi1 = Lapi::start_on_postgres(&pg.env_file);
    let lapi2 = Lapi::start_on_postgres(&pg.env_file);
    let key_a = lapi1.new_bouncer_key("node-a");
    let key_b = lapi2.new_bouncer_key("node-b");
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node(dir_a.path(), &[&lapi1, &lapi2], &key_a, &lapi1).await;
    let b = node(dir_b.path(), &[&lapi2], &key_b, &lapi2).await;
    let admin_a = AdminClient::new(&a);
    support::wait_for("the first sync of both nodes", 30, || {
        a.stats.first_sync_done.load(Ordering::Relaxed)
            && b.stats.first_sync_done.load(Ordering::Relaxed)
    })
    .await;

    // A ban through either LAPI reaches both nodes.
    ban(&lapi1, "192.0.2.11");
    ban(&lapi2, "192.0.2.12");
    support::wait_for("both bans on both nodes", 30, || {
        ["192.0.2.11", "192.0.2.12"]
            .iter()
            .all(|ip| banned(&a, ip) && banned(&b, ip))
    })
    .await;

    // An unban on node A deletes in LAPI; node B drops it within two of its pulls.
    let (status, body) = admin_a.post("/unban", json!({"value": "192.0.2.11"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["lapi"]["deleted"].as_u64().unwrap_or(0) >= 1, "{body}");
    assert!(!banned(&a, "192.0.2.11"));
    let pulls = b.stats.pulls_ok.load(Ordering::Relaxed);
    support::wait_for("the unban on node B", 30, || !banned(&b, "192.0.2.11")).await;
    let took = b.stats.pulls_ok.load(Ordering::Relaxed) - pulls;
    assert!(
        took <= 2,
        "node B needed {took} pulls ({UPDATE:?} apart) to drop the unbanned decision"
    );

    // LAPI 1 killed: node A moves to LAPI 2 and gets a ban made there.
    lapi1.stop();
    ban(&lapi2, "192.0.2.13");
    support::wait_for("the ban made on LAPI 2 on node A", 40, || {
        banned(&a, "192.0.2.13")
    })
    .await;
    let (_, status) = admin_a.get("/status").await;
    assert_eq!(status["lapi"]["url"], json!(lapi2.url), "{status}");
    assert_eq!(status["lapi"]["in_use"], json!(2), "{status}");
    support::wait_for("the ban on node B", 30, || banned(&b, "192.0.2.13")).await;

    // LAPI 1 back, a ban made there: nothing lost, nothing twice on node A.
    lapi1.restart();
    ban(&lapi1, "192.0.2.14");
    support::wait_for("the ban made on LAPI 1 after its comeback", 30, || {
        banned(&a, "192.0.2.14") && banned(&b, "192.0.2.14")
    })
    .await;
    let want = lapi_active(&lapi1);
    assert_eq!(
        want,
        lapi_active(&lapi2),
        "the LAPIs do not share one database"
    );
    let values: BTreeSet<&str> = want.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(
        values,
        BTreeSet::from(["192.0.2.12", "192.0.2.13", "192.0.2.14"]),
        "{want:?}"
    );
    for app in [&a, &b] {
        // The next pull may still be on its way: wait for the sets to settle.
        support::wait_for("the node's set to equal LAPI's", 10, || {
            node_active(app).0 == want
        })
        .await;
        let (set, entries) = node_active(app);
        assert_eq!(entries, set.len(), "a decision is held twice: {set:?}");
    }
    a.stop().await;
    b.stop().await;
    drop((lapi1, lapi2));
    drop(pg);
}

/// The node configs of examples/multi-node pass the config check, with their secret
/// files and data_dir moved into a temporary directory.
#[test]
fn the_example_node_configs_are_valid() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().to_str().unwrap();
    for name in ["api_key", "machine_password"] {
        let path = dir.path().join(name);
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    for (file, first) in [
        ("node-a.yaml", "http://10.0.0.11:8080"),
        ("node-b.yaml", "http://10.0.0.12:8080"),
    ] {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples/multi-node")
                .join(file),
        )
        .unwrap()
        .replace("/etc/cerberus", base)
        .replace("/var/lib/cerberus", base);
        let path = dir.path().join(file);
        std::fs::write(&path, text).unwrap();
        let c = cerberus::config::Config::load_with_env(Some(&path), &[])
            .unwrap_or_else(|p| panic!("{file}: {p:?}"));
        assert_eq!(c.api_url.len(), 2, "{file}");
        assert_eq!(c.api_url[0], first, "{file}");
        assert!(
            c.machine_id.is_some() && c.machine_password.is_some(),
            "{file}"
        );
    }
}
