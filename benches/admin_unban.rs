//! Unban through the admin API to "allow" on the hot path, with a large decision set:
//! a standalone daemon in-process holding N single-IP bans (default 1,000,000) and 10k
//! ranges, then `POST /unban` over HTTP for 200 banned IPs, one at a time. The time is
//! from sending the request to its answer; the answer leaves only after the change is
//! published, and each iteration checks that the hot path allows the IP right after.
//! Also timed: `DELETE /decisions/{id}` (finds the id by a scan) and a `GET /decisions`
//! page. Run: `cargo bench --bench admin_unban` (or `-- 100000` for another size).

mod common;

use cerberus::decision::{Decision, Target};
use common::{ip, percentile, runtime, size_arg, standalone_config};
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn main() {
    let n = size_arg(1_000_000);
    let rt = runtime();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let config = standalone_config(dir.path());
        let app = cerberus::app::start(config).await.unwrap();
        let expires = cerberus::clock::now_secs_precise() + 86_400;
        let started = Instant::now();
        common::insert_bans(&app.control, n, expires).await;
        let mut batch = Vec::with_capacity(10_000);
        for r in 0..10_000u32 {
            batch.push(Decision {
                id: n as i64 + 1 + r as i64,
                target: Target::parse(&format!("172.{}.{}.0/24", 16 + (r >> 8) % 16, r & 0xff))
                    .unwrap(),
                type_name: "ban".into(),
                origin: "lists".into(),
                scenario: "bench ranges".into(),
                expires_at: expires,
            });
        }
        app.control
            .insert(std::mem::take(&mut batch))
            .await
            .unwrap();
        let persist = app.persist.clone();
        tokio::task::spawn_blocking(move || persist.flush())
            .await
            .unwrap();
        eprintln!(
            "{} decisions in place and persisted in {:.1}s",
            app.decider.snapshot().len(),
            started.elapsed().as_secs_f64()
        );

        let base = format!(
            "http://{}/api/v1/cerberus/crowdsec",
            app.admin_addr.as_deref().unwrap()
        );
        let http = reqwest::Client::new();
        let token = app.admin_token.clone();
        let mut unban = Vec::new();
        for k in 0..200u32 {
            let target = ip(k * 4999 % n as u32);
            let addr = IpAddr::V4(target);
            assert!(
                !app.decider.answer(addr).allows(),
                "{target} is banned before"
            );
            let t = Instant::now();
            let resp = http
                .post(format!("{base}/unban"))
                .bearer_auth(&token)
                .json(&serde_json::json!({"value": target.to_string()}))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            unban.push(t.elapsed());
            assert_eq!(status, 200);
            assert!(
                app.decider.answer(addr).allows(),
                "{target} allowed at once"
            );
        }
        let mut delete = Vec::new();
        for k in 0..20u32 {
            let id = (k * 7919 % n as u32) as i64 + 2;
            let t = Instant::now();
            let resp = http
                .delete(format!("{base}/decisions/{id}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            let _ = resp.bytes().await;
            delete.push(t.elapsed());
            assert!(status == 200 || status == 404);
        }
        let mut list = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let resp = http
                .get(format!("{base}/decisions?limit=100"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let _ = resp.bytes().await;
            list.push(t.elapsed());
        }
        for v in [&mut unban, &mut delete, &mut list] {
            v.sort();
        }
        let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
        println!("| operation ({n} IPs + 10k ranges) | runs | p50 | p99 | max |");
        println!("|---|---|---|---|---|");
        for (name, v) in [
            ("POST /unban {value} (answer = published)", &unban),
            ("DELETE /decisions/{id} (scan for the id)", &delete),
            ("GET /decisions?limit=100 (scan + page)", &list),
        ] {
            println!(
                "| {name} | {} | {} | {} | {} |",
                v.len(),
                ms(percentile(v, 0.5)),
                ms(percentile(v, 0.99)),
                ms(*v.last().unwrap())
            );
        }
        app.stop().await;
    });
}
