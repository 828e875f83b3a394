//! The provider's siteverify, called with bounded concurrency (a few per client IP, a
//! cap in total, a short timeout), and what the last calls say about its reachability.
//!
//! Request and answer as the providers document them and crowdsecurity/lua-cs-bouncer
//! `lib/plugins/crowdsec/captcha.lua` (`M.Validate`) sends them: a form POST of
//! `secret`, `response`, `remoteip`; a JSON object whose `success` is the verdict.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::warn;

/// Verifications in flight for one client IP; more are refused at once.
pub const PER_IP: u32 = 2;
/// Verifications in flight in total; more wait for a slot within the timeout.
pub const TOTAL: usize = 64;
/// Bound on one siteverify call (connecting, sending, reading the answer).
pub const TIMEOUT: Duration = Duration::from_secs(3);
/// Failures to reach the provider are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Largest siteverify answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// How a verification ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Solved,
    Rejected,
    /// No usable answer from the provider (connect error, timeout, non-2xx, not JSON).
    Unreachable,
    /// Over the per-IP or total bound.
    Busy,
}

/// What the last call to the provider showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Unknown,
    Reachable,
    Unreachable,
}

pub struct Verifier {
    client: reqwest::Client,
    url: String,
    secret: String,
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    reach: AtomicU8,
    log: Mutex<(Option<Instant>, u64)>,
}

/// Releases a per-IP slot when dropped.
struct IpSlot<'a>(&'a Verifier, IpAddr);

impl Drop for IpSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.0.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

impl Verifier {
    pub fn new(url: String, secret: String) -> anyhow::Result<Verifier> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Verifier {
            client,
            url,
            secret,
            total: Arc::new(Semaphore::new(TOTAL)),
            per_ip: Mutex::new(HashMap::new()),
            reach: AtomicU8::new(0),
            log: Mutex::new((None, 0)),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn reach(&self) -> Reach {
        match self.reach.load(Ordering::Relaxed) {
            1 => Reach::Reachable,
            2 => Reach::Unreachable,
            _ => Reach::Unknown,
        }
    }

    fn ip_slot(&self, ip: IpAddr) -> Option<IpSlot<'_>> {
        let mut m = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= PER_IP {
            return None;
        }
        *n += 1;
        Some(IpSlot(self, ip))
    }

    /// Asks the provider whether `token` is a solve by `ip`.
    pub async fn verify(&self, token: &str, ip: IpAddr) -> Outcome {
        let Some(_slot) = self.ip_slot(ip) else {
            return Outcome::Busy;
        };
        let Ok(Ok(_permit)) = tokio::time::timeout(TIMEOUT, self.total.acquire()).await else {
            return Outcome::Busy;
        };
        match self.call(token, Some(ip)).await {
            Ok(true) => Outcome::Solved,
            Ok(false) => Outcome::Rejected,
            Err(e) => {
                self.unreachable(&e);
                Outcome::Unreachable
            }
        }
    }

    /// One siteverify call: `Ok(success)` when the provider answered.
    async fn call(&self, token: &str, ip: Option<IpAddr>) -> Result<bool, String> {
        let ip_text = ip.map(|i| i.to_string()).unwrap_or_default();
        let mut form = vec![("secret", self.secret.as_str()), ("response", token)];
        if ip.is_some() {
            form.push(("remoteip", ip_text.as_str()));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let res = self
            .client
            .post(&self.url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!("answered HTTP {status}"));
        }
        let mut res = res;
        let mut bytes = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| format!("{e}"))? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_ANSWER {
                return Err(format!("answer larger than {MAX_ANSWER} bytes"));
            }
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
        self.reach.store(1, Ordering::Relaxed);
        match v.get("success") {
            Some(serde_json::Value::Bool(b)) => Ok(*b),
            _ => Err("answer has no boolean `success`".into()),
        }
    }

    fn unreachable(&self, why: &str) {
        self.reach.store(2, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1 += 1;
        if log.0.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            return;
        }
        warn!(
            "captcha: the provider's siteverify {} gave no usable answer ({why}); {} \
             solve(s) refused with 403 since the last such line",
            self.url, log.1
        );
        *log = (Some(Instant::now()), 0);
    }

    /// For diagnostics: does the siteverify endpoint answer at all (an empty token is
    /// rejected by a live provider, which is fine)? Returns the latency or the reason.
    pub async fn probe(&self) -> Result<Duration, String> {
        let started = Instant::now();
        match self.call("", None).await {
            Ok(_) => Ok(started.elapsed()),
            Err(e) => {
                self.reach.store(2, Ordering::Relaxed);
                Err(e)
            }
        }
    }
}
