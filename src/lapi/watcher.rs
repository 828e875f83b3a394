//! Writes to LAPI, which need a watcher (machine) login rather than the bouncer key:
//! deleting decisions (unban for every bouncer) and creating them (a ban as an alert).
//! The JWT from `/v1/watchers/login` is cached and renewed before it expires (LAPI gives
//! one hour) or when LAPI answers 401. It logs in where the stream is: it follows the
//! bouncer client's [`Endpoints`], and a token is used only with the LAPI that issued it
//! (each LAPI signs its own).

use super::{Endpoints, USER_AGENT};
use crate::decision::Target;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Mutex;

/// Renew the token this long before LAPI's one-hour expiry.
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

#[derive(Debug, thiserror::Error)]
pub enum WatcherError {
    #[error("watcher login refused by LAPI (HTTP {0}): check machine_id and machine_password against `cscli machines list`")]
    LoginRefused(u16),
    #[error("cannot reach LAPI: {0}")]
    Unreachable(String),
    #[error("LAPI answered HTTP {status} to {what}: {body}")]
    Status {
        what: &'static str,
        status: u16,
        body: String,
    },
    #[error("unexpected answer from LAPI to {what}: {detail}")]
    BadAnswer { what: &'static str, detail: String },
}

/// A ban to create in LAPI.
#[derive(Debug, Clone)]
pub struct NewBan {
    pub target: Target,
    /// Go duration string, e.g. `4h`.
    pub duration: String,
    pub reason: String,
    /// Decision type: `ban`, `captcha`, `throttle` or custom.
    pub type_name: String,
}

pub struct Watcher {
    http: reqwest::Client,
    endpoints: Arc<Endpoints>,
    machine_id: String,
    password: String,
    /// The token, when it was issued, and by which LAPI of `endpoints` (its position).
    token: Mutex<Option<(String, Instant, usize)>>,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Deserialize)]
struct AlertCountry {
    source: Option<AlertSource>,
    decisions: Option<Vec<AlertDecision>>,
}

#[derive(Deserialize)]
struct AlertSource {
    cn: Option<String>,
}

#[derive(Deserialize)]
struct AlertDecision {
    id: i64,
}

#[derive(Deserialize)]
struct Deleted {
    #[serde(rename = "nbDeleted")]
    nb_deleted: String,
}

impl Watcher {
    /// A watcher of the one LAPI at `base`.
    pub fn new(http: reqwest::Client, base: &str, machine_id: &str, password: &str) -> Watcher {
        let one = Endpoints::new(vec![base.trim_end_matches('/').to_string()])
            .expect("one URL is a list of endpoints");
        Watcher::following(http, Arc::new(one), machine_id, password)
    }

    /// A watcher that logs in wherever the bouncer client of `endpoints` pulls from.
    pub fn following(
        http: reqwest::Client,
        endpoints: Arc<Endpoints>,
        machine_id: &str,
        password: &str,
    ) -> Watcher {
        Watcher {
            http,
            endpoints,
            machine_id: machine_id.into(),
            password: password.into(),
            token: Mutex::new(None),
        }
    }

    /// A token and the base URL of the LAPI that issued it (the one in use).
    async fn token(&self, renew: bool) -> Result<(String, String), WatcherError> {
        let mut cached = self.token.lock().await;
        let at_pos = self.endpoints.position();
        let base = self.endpoints.all()[at_pos].clone();
        if let Some((token, at, pos)) = cached.as_ref() {
            if !renew && at.elapsed() < TOKEN_LIFETIME && *pos == at_pos {
                return Ok((token.clone(), base));
            }
        }
        let resp = self
            .http
            .post(format!("{base}/v1/watchers/login"))
            .header("User-Agent", USER_AGENT)
            .json(&serde_json::json!({"machine_id": self.machine_id, "password": self.password}))
            .send()
            .await
            .map_err(|e| WatcherError::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            return Err(WatcherError::LoginRefused(status));
        }
        if !resp.status().is_success() {
            return Err(status_error("login", resp).await);
        }
        let login: Login = resp.json().await.map_err(|e| WatcherError::BadAnswer {
            what: "login",
            detail: e.to_string(),
        })?;
        *cached = Some((login.token.clone(), Instant::now(), at_pos));
        Ok((login.token, base))
    }

    /// Sends a request with the token, logging in again once if LAPI says 401.
    async fn send(
        &self,
        build: impl Fn(&str, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, WatcherError> {
        for renew in [false, true] {
            let (token, base) = self.token(renew).await?;
            let resp = build(&base, &token)
                .header("User-Agent", USER_AGENT)
                .send()
                .await
                .map_err(|e| WatcherError::Unreachable(e.to_string()))?;
            if resp.status() != reqwest::StatusCode::UNAUTHORIZED || renew {
                return Ok(resp);
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    /// Deletes every decision on `target` in LAPI (for an IP, LAPI also expires the ranges
    /// that contain it). Returns how many LAPI deleted.
    pub async fn delete(&self, target: Target) -> Result<u64, WatcherError> {
        let key = if target.is_single() { "ip" } else { "range" };
        let value = target.to_string();
        let resp = self
            .send(|base, token| {
                self.http
                    .delete(format!("{base}/v1/decisions"))
                    .query(&[(key, value.as_str())])
                    .bearer_auth(token)
            })
            .await?;
        deleted_count("delete decisions", resp).await
    }

    /// Logs in now (not from the cache): whether the credentials work.
    pub async fn check_login(&self) -> Result<(), WatcherError> {
        self.token(true).await.map(|_| ())
    }

    /// Deletes one decision by its LAPI id. Returns how many LAPI deleted (0 or 1).
    pub async fn delete_id(&self, id: i64) -> Result<u64, WatcherError> {
        let resp = self
            .send(|base, token| {
                self.http
                    .delete(format!("{base}/v1/decisions/{id}"))
                    .bearer_auth(token)
            })
            .await?;
        deleted_count("delete decision", resp).await
    }

    /// The source country of the alerts behind active decisions, by decision id (LAPI
    /// keeps the country on the alert, not on the decision). At most `limit` alerts.
    pub async fn countries(
        &self,
        limit: usize,
    ) -> Result<std::collections::HashMap<i64, String>, WatcherError> {
        let resp = self
            .send(|base, token| {
                self.http
                    .get(format!("{base}/v1/alerts"))
                    .query(&[
                        ("has_active_decision", "true"),
                        ("limit", &limit.to_string()),
                    ])
                    .bearer_auth(token)
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error("list alerts", resp).await);
        }
        let alerts: Option<Vec<AlertCountry>> =
            resp.json().await.map_err(|e| WatcherError::BadAnswer {
                what: "list alerts",
                detail: e.to_string(),
            })?;
        let mut out = std::collections::HashMap::new();
        for alert in alerts.unwrap_or_default() {
            let Some(cn) = alert.source.and_then(|s| s.cn).filter(|c| !c.is_empty()) else {
                continue;
            };
            for d in alert.decisions.unwrap_or_default() {
                out.insert(d.id, cn.clone());
            }
        }
        Ok(out)
    }

    /// Creates a decision in LAPI as an alert (LAPI counts the duration from `stop_at`, which
    /// is now). Every bouncer gets it at its next pull.
    pub async fn ban(&self, ban: &NewBan) -> Result<(), WatcherError> {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let value = ban.target.to_string();
        let scope = ban.target.scope();
        let alert = serde_json::json!([{
            "scenario": ban.reason,
            "scenario_hash": "",
            "scenario_version": "",
            "message": format!("{} '{}' on {} {} from cerberus: {}", ban.type_name, ban.duration, scope, value, ban.reason),
            "events_count": 1,
            "start_at": now,
            "stop_at": now,
            "capacity": 0,
            "leakspeed": "0",
            "simulated": false,
            "events": [],
            "source": {"scope": scope, "value": value},
            "decisions": [{
                "origin": "cscli",
                "type": ban.type_name,
                "scope": scope,
                "value": value,
                "duration": ban.duration,
                "scenario": ban.reason,
            }],
        }]);
        let resp = self
            .send(|base, token| {
                self.http
                    .post(format!("{base}/v1/alerts"))
                    .bearer_auth(token)
                    .json(&alert)
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(status_error("create alert", resp).await)
        }
    }
}

/// The `{"nbDeleted":"N"}` of a delete, as a number.
async fn deleted_count(what: &'static str, resp: reqwest::Response) -> Result<u64, WatcherError> {
    if !resp.status().is_success() {
        return Err(status_error(what, resp).await);
    }
    let deleted: Deleted = resp.json().await.map_err(|e| WatcherError::BadAnswer {
        what,
        detail: e.to_string(),
    })?;
    deleted
        .nb_deleted
        .parse()
        .map_err(|_| WatcherError::BadAnswer {
            what,
            detail: format!("nbDeleted {:?}", deleted.nb_deleted),
        })
}

async fn status_error(what: &'static str, resp: reqwest::Response) -> WatcherError {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    WatcherError::Status {
        what,
        status,
        body: body.chars().take(200).collect(),
    }
}
