//! `geoip_database`: the country of every decision comes from the mmdb, in
//! `GET /decisions`, `cerberus decisions list` and the console's Live decisions; the
//! real binary with a config file, as an operator runs it. Its log lines, with a sign-in
//! through the console, never hold the admin token.

mod support;

use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::caddy::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_cerberus");

#[test]
fn the_country_comes_from_the_mmdb_and_the_token_stays_out_of_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mmdb = d.join("countries.mmdb");
    std::fs::write(
        &mmdb,
        support::mmdb::write(&[
            ("192.0.2.0".parse().unwrap(), 24, "FR"),
            ("198.51.100.0".parse().unwrap(), 24, "JP"),
        ]),
    )
    .unwrap();
    // The reader of the daemon reads it back.
    let geo = cerberus::geoip::GeoIp::open(&mmdb).unwrap();
    assert_eq!(
        geo.country("192.0.2.9".parse().unwrap()).as_deref(),
        Some("FR")
    );
    assert_eq!(geo.country("203.0.113.1".parse().unwrap()), None);

    let port = free_port();
    let config = d.join("cerberus.yaml");
    std::fs::write(
        &config,
        format!(
            "data_dir: {dir}\nsocket: {dir}/cerberus.sock\nadmin_listen: 127.0.0.1:{port}\n\
             forward_auth_listen: off\ncapi_url: http://127.0.0.1:9\nlog_level: debug\ngeoip_database: {mmdb}\n",
            dir = d.display(),
            mmdb = mmdb.display()
        ),
    )
    .unwrap();
    let log = d.join("daemon.log");
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(std::fs::File::create(d.join("daemon.out")).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the admin API did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = config.to_str().unwrap();
    let cli = |args: &[&str]| {
        Command::new(BIN)
            .args(["-c", c])
            .args(args)
            .output()
            .unwrap()
    };
    for v in ["192.0.2.7", "198.51.100.0/24", "203.0.113.5"] {
        let out = cli(&["ban", v]);
        assert!(out.status.success(), "{out:?}");
    }
    let out = cli(&["decisions", "list", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let country = |v: &str| {
        list["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["value"] == v)
            .map(|d| d["country"].clone())
            .unwrap()
    };
    assert_eq!(country("192.0.2.7"), "FR");
    assert_eq!(country("198.51.100.0/24"), "JP");
    assert_eq!(country("203.0.113.5"), Value::Null);
    let human = String::from_utf8_lossy(&cli(&["decisions", "list"]).stdout).to_string();
    assert!(
        human
            .lines()
            .any(|l| l.contains("192.0.2.7") && l.contains("FR")),
        "{human}"
    );

    // The console shows name and code; sign in, look, sign out, and a wrong try.
    let token = std::fs::read_to_string(d.join("admin_token"))
        .unwrap()
        .trim()
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let wrong = http
            .post(format!("{base}/signin"))
            .form(&[("token", "wrong-token-attempt")])
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let ok = http
            .post(format!("{base}/signin"))
            .form(&[("token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 303);
        let cookie = ok.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let page = http
            .get(format!("{base}/decisions"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("France (FR)"), "{page}");
        assert!(page.contains("Japan (JP)"));
        assert!(!page.contains(&token));
    });
    let _ = child.kill();
    let _ = child.wait();
    // Log lines go to stderr or stdout depending on the log format: read both.
    let logged = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(d.join("daemon.out")).unwrap();
    assert!(logged.contains("countries of decisions from"), "{logged}");
    assert!(logged.contains("web console: signed in"), "{logged}");
    assert!(logged.contains("wrong admin token"), "{logged}");
    assert!(!logged.contains(&token), "the token is in a log line");
    assert!(
        !logged.contains("wrong-token-attempt"),
        "a tried token is in a log line"
    );
}
