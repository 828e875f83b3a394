//! Caddy for end-to-end tests: a Caddy binary run on a Caddyfile of the test's own, with
//! its own HOME and XDG directories, killed when dropped; clients bound to chosen
//! loopback addresses so that Caddy sees each as a different client.

use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Caddy {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Caddy {
    /// Runs `binary` on `caddyfile` (global options `admin off` and `auto_https off` are
    /// prepended).
    pub fn start(binary: &str, caddyfile: &str) -> Caddy {
        Caddy::start_with_global(binary, "admin off\n\tauto_https off", caddyfile)
    }

    /// Runs `binary` on `caddyfile` with the given global options block content.
    pub fn start_with_global(binary: &str, global: &str, caddyfile: &str) -> Caddy {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("Caddyfile");
        std::fs::write(&file, format!("{{\n\t{global}\n}}\n\n{caddyfile}")).unwrap();
        let log = std::fs::File::create(dir.path().join("caddy.log")).unwrap();
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&file)
            .args(["--adapter", "caddyfile"])
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
        Caddy { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP client whose connections come from `local`.
pub fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(local.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The status of a GET, with an optional client-sent X-Forwarded-For.
pub async fn status(client: &reqwest::Client, url: &str, xff: Option<&str>) -> Option<u16> {
    let mut req = client.get(url);
    if let Some(v) = xff {
        req = req.header("X-Forwarded-For", v);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}

/// Polls until `url` answers `want` for a client bound to `local`; bounded.
pub async fn wait_status(what: &str, local: &str, url: &str, want: u16, secs: u64) {
    let client = client_from(local);
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = status(&client, url, None).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}: last answer {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds our Caddy once (about 7 s with a warm Go cache, minutes from nothing).
pub fn our_caddy() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/build-caddy.sh"))
        .output()
        .expect("run scripts/build-caddy.sh");
    assert!(
        out.status.success(),
        "scripts/build-caddy.sh failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("caddy-module/bin/caddy").display().to_string()
}
