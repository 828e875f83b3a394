//! Unban through the admin API to "allow" in the snapshot segments, the path the Caddy
//! module reads: a standalone daemon in-process holding N single-IP bans (default
//! 100,000), then `POST /unban` for 200 banned IPs, one at a time. After each answer
//! the segment set named by `current` is read (as a reader does: the seqlock, then the
//! named files, looked up with the reference reader `bouncer_api::segment`) until it
//! allows the IP. Times: from sending the request to the segments allowing, and how
//! long after the answer that was. The module's refresher reads `current` every 2 ms,
//! so the module sees the change at most one tick later.
//! Run: `cargo bench --bench segments_unban` (or `-- 1000000` for another size).

mod common;

use bouncer_api::segment::{lookup, Segment};
use common::{ip, percentile, runtime, size_arg, standalone_config};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Reads the segment set in force, keeping files already read (segments never change).
struct SetReader {
    dir: PathBuf,
    files: HashMap<String, Vec<u8>>,
}

impl SetReader {
    /// The base and overlay serials named by `current` (SNAPSHOT.md section 8).
    fn serials(&self) -> (u64, u64) {
        loop {
            let c = std::fs::read(self.dir.join("current")).unwrap();
            let word = |at: usize| u64::from_le_bytes(c[at..at + 8].try_into().unwrap());
            let again = std::fs::read(self.dir.join("current")).unwrap();
            if word(16) % 2 == 0 && again[16..24] == c[16..24] {
                return (word(24), word(32));
            }
        }
    }

    fn file(&mut self, name: String) -> &[u8] {
        let dir = &self.dir;
        self.files
            .entry(name)
            .or_insert_with_key(|n| std::fs::read(dir.join(n)).unwrap())
    }

    /// Whether the set in force refuses `addr` now.
    fn refuses(&mut self, addr: IpAddr) -> bool {
        let (b, o) = self.serials();
        if b == 0 {
            return false;
        }
        let base = self.file(format!("base-{b:020}.seg")).to_vec();
        let overlay = (o != 0).then(|| self.file(format!("overlay-{o:020}.seg")).to_vec());
        let base = Segment::parse(&base).unwrap();
        let overlay = overlay.as_deref().map(|o| Segment::parse(o).unwrap());
        let now = cerberus::clock::now_secs_precise() as u32;
        !lookup(&base, overlay.as_ref(), addr, now)
            .remediation
            .as_str()
            .eq("allow")
    }
}

/// Polls until `want(refuses)` holds, at most 5 s; returns when it did.
fn wait_until(r: &mut SetReader, addr: IpAddr, refused: bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if r.refuses(addr) == refused {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{addr}: segments never showed refused={refused}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn main() {
    let n = size_arg(100_000);
    let rt = runtime();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let config = standalone_config(dir.path());
        let seg_dir = config.snapshot_path().expect("segments on by default");
        let app = cerberus::app::start(config).await.unwrap();
        let expires = cerberus::clock::now_secs_precise() + 86_400;
        common::insert_bans(&app.control, n, expires).await;
        let mut reader = SetReader {
            dir: seg_dir.clone(),
            files: HashMap::new(),
        };
        let last = IpAddr::V4(ip(n as u32 - 1));
        tokio::task::block_in_place(|| wait_until(&mut reader, last, true));
        eprintln!("{n} decisions in the segments ({})", seg_dir.display());

        let base = format!(
            "http://{}/api/v1/cerberus/crowdsec",
            app.admin_addr.as_deref().unwrap()
        );
        let http = reqwest::Client::new();
        let token = app.admin_token.clone();
        let (mut seen, mut after_answer) = (Vec::new(), Vec::new());
        for k in 0..200u32 {
            let addr = IpAddr::V4(ip(k * 4999 % n as u32));
            assert!(reader.refuses(addr), "{addr} is refused before");
            let t = Instant::now();
            let resp = http
                .post(format!("{base}/unban"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"value": addr.to_string()}))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let _ = resp.bytes().await;
            let answered = Instant::now();
            let at = tokio::task::block_in_place(|| wait_until(&mut reader, addr, false));
            seen.push(at - t);
            after_answer.push(at.saturating_duration_since(answered));
        }
        seen.sort();
        after_answer.sort();
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        println!("| {n} IPs, 200 unbans | p50 | p99 | max |");
        println!("|---|---|---|---|");
        for (name, v) in [
            ("request sent to the segments allowing", &seen),
            ("answer to the segments allowing", &after_answer),
        ] {
            println!(
                "| {name} | {} | {} | {} |",
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99)),
                ms(*v.last().unwrap())
            );
        }
        app.stop().await;
    });
}
