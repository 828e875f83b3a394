//! The web console's Live decisions page with a large decision set: a standalone daemon
//! in-process holding N single-IP bans (default 1,000,000), signed in over HTTP, then
//! `GET /decisions` (page 1, a later page, and a filter) timed from request to the end of
//! the answer. Each answer is checked to be the full page. Run:
//! `cargo bench --bench web_decisions` (or `-- 100000` for another size).

mod common;

use cerberus::decision::{Decision, Target};
use common::{ip, percentile, runtime, size_arg, standalone_config};
use std::net::IpAddr;
use std::time::Instant;

fn main() {
    let n = size_arg(1_000_000);
    let rt = runtime();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let config = standalone_config(dir.path());
        let app = cerberus::app::start(config).await.unwrap();
        let expires = cerberus::clock::now_secs_precise() + 86_400;
        let mut batch = Vec::with_capacity(100_000);
        for i in 0..n as u32 {
            batch.push(Decision {
                id: i as i64 + 1,
                target: Target::from_ip(IpAddr::V4(ip(i))),
                type_name: if i % 10 == 0 { "captcha" } else { "ban" }.into(),
                origin: if i % 3 == 0 { "CAPI" } else { "crowdsec" }.into(),
                scenario: format!("crowdsecurity/bench-{}", i % 20),
                expires_at: expires,
            });
            if batch.len() == 100_000 {
                app.control
                    .insert(std::mem::take(&mut batch))
                    .await
                    .unwrap();
            }
        }
        if !batch.is_empty() {
            app.control.insert(batch).await.unwrap();
        }
        let base = format!("http://{}", app.admin_addr.as_deref().unwrap());
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let signin = http
            .post(format!("{base}/signin"))
            .form(&[("token", app.admin_token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(signin.status(), 303);
        let cookie = signin.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        println!("web_decisions: {n} decisions, 50 rows a page");
        let pages = [
            ("page 1", "/decisions".to_string()),
            ("page 2000", "/decisions?page=2000".to_string()),
            ("filter type=captcha", "/decisions?type=captcha".to_string()),
            ("filter ip", format!("/decisions?ip={}", ip(4242))),
        ];
        for (label, path) in pages {
            let mut times = Vec::new();
            for _ in 0..40 {
                let t = Instant::now();
                let body = http
                    .get(format!("{base}{path}"))
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                times.push(t.elapsed());
                assert!(body.contains("decisions)</span>"), "a full page: {label}");
            }
            times.sort();
            println!(
                "  {label:<22} p50 {:>7.1} ms   p95 {:>7.1} ms   max {:>7.1} ms",
                percentile(&times, 0.5).as_secs_f64() * 1e3,
                percentile(&times, 0.95).as_secs_f64() * 1e3,
                times.last().unwrap().as_secs_f64() * 1e3
            );
        }
        app.stop().await;
    });
}
