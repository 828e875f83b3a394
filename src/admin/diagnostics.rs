//! `/status`, `/diagnostics/connectivity` and `/diagnostics/config`: what cerberus is
//! doing, whether it can reach LAPI and the central API (with real round-trip times), and
//! every check an operator would otherwise do by hand, each with a fix.

use super::{json_reply, Admin, Reply};
use crate::clock;
use crate::lapi::PullError;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// How long a probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// One diagnostic check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    /// `ok`, `warn`, `fail` or `skip`.
    pub status: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// With several LAPIs in `api_url`, which one is in use: `in use: #2 of 3, `.
fn in_use(admin: &Admin) -> String {
    match admin.lapi() {
        Some(c) if c.endpoints().all().len() > 1 => format!(
            "in use: #{} of {} in api_url, ",
            c.endpoints().position() + 1,
            c.endpoints().all().len()
        ),
        _ => String::new(),
    }
}

/// LAPI `/health`: `{"status": healthy|unhealthy|unreachable|not_configured, ...}`.
async fn lapi_health(admin: &Admin) -> Value {
    let Some(lapi) = admin.lapi() else {
        return match admin.engine {
            Some(_) => {
                json!({"status": "not_configured", "detail": "the managed engine is not running (protection is off, or it is starting)"})
            }
            None => json!({"status": "not_configured", "detail": "standalone mode (no api_url)"}),
        };
    };
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, lapi.health()).await {
        Ok(Ok(rtt)) => json!({"status": "healthy", "latency_ms": ms(rtt), "url": lapi.url()}),
        Ok(Err(PullError::Status { status, .. })) => json!({
            "status": "unhealthy",
            "latency_ms": ms(started.elapsed()),
            "url": lapi.url(),
            "error": format!("GET /health answered HTTP {status}"),
        }),
        Ok(Err(e)) => json!({"status": "unreachable", "url": lapi.url(), "error": e.to_string()}),
        Err(_) => json!({
            "status": "unreachable",
            "url": lapi.url(),
            "error": format!("no answer to GET /health within {}s", PROBE_TIMEOUT.as_secs()),
        }),
    }
}

/// The central API: any HTTP answer means reachable; a failure is classified
/// ([`crate::outbound`]) with its cause, fix, and the proxy when one was used.
async fn capi_probe(admin: &Admin) -> Value {
    let url = &admin.config.capi_url;
    let started = Instant::now();
    match admin.http.get(url).timeout(PROBE_TIMEOUT).send().await {
        Ok(resp) => json!({
            "status": "reachable",
            "latency_ms": ms(started.elapsed()),
            "url": url,
            "http_status": resp.status().as_u16(),
        }),
        Err(e) => {
            let u = crate::outbound::of_reqwest(
                url,
                &e,
                PROBE_TIMEOUT,
                "capi_url in the cerberus config",
            );
            let mut out = json!({
                "status": "unreachable",
                "url": url,
                "cause": u.cause,
                "error": u.message(),
                "fix": u.fix,
            });
            if let (Some(p), Some(var)) = (u.proxy, u.proxy_env) {
                out["proxy"] = json!(p);
                out["proxy_env"] = json!(var);
            }
            out
        }
    }
}

/// The captcha provider's siteverify: any JSON answer (an empty token is rejected by a
/// live provider) means reachable. Null when captcha is off.
async fn captcha_probe(admin: &Admin) -> Value {
    let Some(c) = &admin.captcha else {
        return Value::Null;
    };
    let v = c.verifier();
    match v.probe().await {
        Ok(rtt) => json!({"status": "reachable", "latency_ms": ms(rtt), "url": v.url(),
            "provider": c.provider().name()}),
        Err(e) => json!({"status": "unreachable", "url": v.url(), "error": e,
            "provider": c.provider().name()}),
    }
}

/// The captcha block of `/status`: what the last siteverify call showed.
fn captcha_status(admin: &Admin) -> Value {
    use crate::captcha::verify::Reach;
    admin.captcha.as_ref().map_or(Value::Null, |c| {
        let reach = match c.verifier().reach() {
            Reach::Unknown => "unknown",
            Reach::Reachable => "reachable",
            Reach::Unreachable => "unreachable",
        };
        json!({"provider": c.provider().name(), "verify_url": c.verifier().url(), "provider_status": reach})
    })
}

/// `GET /diagnostics/connectivity`.
pub async fn connectivity(admin: &Admin) -> Reply {
    let (lapi, capi, captcha, appsec) = tokio::join!(
        lapi_health(admin),
        capi_probe(admin),
        captcha_probe(admin),
        appsec_health(admin)
    );
    json_reply(
        StatusCode::OK,
        &json!({"lapi": lapi, "capi": capi, "captcha": captcha, "appsec": appsec}),
    )
}

/// AppSec's answer to a probe, or `not_configured` without `appsec_url`.
async fn appsec_health(admin: &Admin) -> Value {
    match &admin.appsec {
        Some(a) => a.health().await,
        None => json!({"status": "not_configured", "detail": "appsec_url is not set"}),
    }
}

fn rfc3339_ms(unix_ms: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64))
        .to_string()
}

/// `GET /status`.
pub async fn status(admin: &Admin) -> Reply {
    let snap = admin.decider.snapshot();
    let now = clock::now_secs_precise();
    let mut by_origin: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    snap.for_each(|_, v, m| {
        if v.expires_at() > now {
            total += 1;
            *by_origin.entry(m.origin.to_string()).or_default() += 1;
        }
    });
    let stats = &admin.stats;
    let lapi = if admin.lapi().is_some() {
        let last = stats.last_success_ms.load(Ordering::Relaxed);
        let (last_sync, age) = if last > 0 {
            (
                Some(rfc3339_ms(last)),
                Some(((clock::now_ms() - last).max(0) / 1000) as u64),
            )
        } else {
            (None, None)
        };
        json!({
            "url": admin.lapi().map(|c| c.url().to_string()),
            // With several LAPIs in api_url: all of them, which one is in use (1-based)
            // and how often the one in use changed.
            "urls": admin.lapi().map(|c| c.endpoints().all().to_vec()),
            "in_use": admin.lapi().map(|c| c.endpoints().position() + 1),
            "switches": admin.lapi().map(|c| c.endpoints().switches()),
            "health": lapi_health(admin).await,
            "last_sync": last_sync,
            "last_sync_age_seconds": age,
            "last_sync_duration_ms": stats.last_duration_ms.load(Ordering::Relaxed),
            "pulls_ok": stats.pulls_ok.load(Ordering::Relaxed),
            "pulls_failed": stats.pulls_failed.load(Ordering::Relaxed),
            "failures": stats.failures(),
            "last_error": stats.last_error(),
            "failing": stats.failing(),
            "outage_policy_active": admin.decider.outage().map(|p| format!("{p:?}").to_lowercase()),
            "watcher": admin.watcher().is_some(),
        })
    } else {
        Value::Null
    };
    json_reply(
        StatusCode::OK,
        &json!({
            "version": env!("CARGO_PKG_VERSION"),
            "mode": admin.mode(),
            "enabled": admin.decider.enabled(),
            "ready": admin.ready.get(),
            "uptime_seconds": admin.started.elapsed().as_secs(),
            "lapi": lapi,
            "captcha": captcha_status(admin),
            "appsec": appsec_health(admin).await,
            "engine": admin.engine.as_ref().map(|e| json!({
                "wanted": e.wanted(),
                "status": e.supervisor.status(),
            })),
            "decisions": {"total": total, "by_origin": by_origin},
            "snapshot": {"generation": snap.generation(), "held": snap.len()},
            "lookups": admin.decider.lookups(),
            "console": admin.console.as_ref().map(|c| c.summary()),
            "rejected_decisions": stats.rejected.load(Ordering::Relaxed),
            "filtered_decisions": stats.filtered.load(Ordering::Relaxed),
            "listeners": {
                "socket": admin.socket_addr,
                "admin": listen_text(&admin.config.admin_listen),
                "forward_auth": listen_text(&admin.config.forward_auth_listen),
            },
        }),
    )
}

fn listen_text(l: &crate::config::Listen) -> Option<String> {
    match l {
        crate::config::Listen::Off => None,
        crate::config::Listen::Tcp(a) => Some(a.clone()),
        crate::config::Listen::Unix(p) => Some(format!("unix:{}", p.display())),
    }
}

/// Every check, in the order an operator would go through them.
pub async fn checks(admin: &Admin) -> Vec<Check> {
    let c = &admin.config;
    let mut out = vec![Check::new(
        "config",
        "ok",
        match c.api_url.as_slice() {
            [url] => format!(
                "loaded; syncing from LAPI at {url} every {:?}",
                c.update_frequency
            ),
            [_, ..] => format!(
                "loaded; syncing every {:?} from the first answering of {} LAPIs: {}",
                c.update_frequency,
                c.api_url.len(),
                c.api_url.join(", ")
            ),
            [] => "loaded; standalone mode (no api_url): decisions come from the admin API".into(),
        },
    )];
    if c.insecure_skip_verify {
        out.push(
            Check::new(
                "tls",
                "warn",
                "insecure_skip_verify is on: LAPI's certificate is not checked",
            )
            .fix("set ca_cert_path to LAPI's CA and turn insecure_skip_verify off"),
        );
    }

    let appsec = appsec_health(admin).await;
    out.push(match appsec["status"].as_str().unwrap_or("") {
        "not_configured" => Check::new("appsec", "skip", "AppSec is off (no appsec_url)"),
        "answering" => Check::new(
            "appsec",
            "ok",
            format!(
                "AppSec at {} answers in {} ms",
                appsec["url"].as_str().unwrap_or(""),
                appsec["latency_ms"]
            ),
        ),
        status => Check::new(
            "appsec",
            "fail",
            format!(
                "AppSec at {} gives no verdict ({status}): {}; requests get appsec_fail",
                appsec["url"].as_str().unwrap_or(""),
                appsec["error"].as_str().unwrap_or("")
            ),
        )
        .fix(if status == "unauthorized" {
            "use a bouncer key of the LAPI that the AppSec engine reports to (api_key)"
        } else {
            "check that CrowdSec runs an acquisition `source: appsec` listening on appsec_url"
        }),
    });

    let health = lapi_health(admin).await;
    let lapi_up = health["status"] == "healthy";
    out.push(match health["status"].as_str().unwrap_or("") {
        "not_configured" => Check::new("lapi", "skip", "standalone mode: no LAPI"),
        "healthy" => Check::new(
            "lapi",
            "ok",
            format!("{}{} answers /health in {} ms", in_use(admin), health["url"].as_str().unwrap_or(""), health["latency_ms"]),
        ),
        _ => Check::new(
            "lapi",
            "fail",
            format!(
                "{}LAPI at {} is not usable: {}",
                in_use(admin),
                health["url"].as_str().unwrap_or(""),
                health["error"].as_str().unwrap_or("unknown error")
            ),
        )
        .fix("start CrowdSec (`systemctl start crowdsec`), check api_url and that LAPI listens there (`cscli lapi status`); cerberus keeps enforcing what it knows meanwhile"),
    });

    if admin.lapi().is_some() {
        let stats = &admin.stats;
        let what = if c.api_key.is_some() {
            "bouncer key"
        } else {
            "bouncer certificate"
        };
        out.push(match stats.failing() {
            Some("forbidden") => Check::new("bouncer_key", "fail", format!("LAPI refuses the {what} (HTTP 403)"))
                .fix("create a key with `cscli bouncers add cerberus` and set api_key (or api_key_file); each cerberus needs its own"),
            _ if stats.pulls_ok.load(Ordering::Relaxed) > 0 => Check::new(
                "bouncer_key",
                "ok",
                format!("accepted by LAPI (last pull {})", rfc3339_ms(stats.last_success_ms.load(Ordering::Relaxed))),
            ),
            _ => Check::new("bouncer_key", "warn", format!("not known yet: no pull has succeeded, so the {what} is untested"))
                .fix("see the lapi check; once LAPI answers, the first pull tests the key"),
        });
    }

    out.push(match (admin.watcher(), admin.lapi().is_some()) {
        (Some(w), _) => match tokio::time::timeout(PROBE_TIMEOUT, w.check_login()).await {
            Ok(Ok(())) => Check::new("watcher", "ok", "machine login accepted: unban and ban reach every bouncer through LAPI"),
            Ok(Err(crate::lapi::watcher::WatcherError::LoginRefused(code))) => Check::new(
                "watcher",
                "fail",
                format!("LAPI refused the machine login (HTTP {code})"),
            )
            .fix("check machine_id and machine_password against `cscli machines list` (or recreate: `cscli machines add cerberus --password ...`)"),
            Ok(Err(e)) if !lapi_up => Check::new("watcher", "warn", format!("cannot test the machine login while LAPI is down: {e}")),
            Ok(Err(e)) => Check::new("watcher", "fail", e.to_string()),
            Err(_) => Check::new("watcher", "fail", "no answer to the machine login within 5s"),
        },
        (None, true) => Check::new(
            "watcher",
            "warn",
            "no machine_id/machine_password: unbans are local to this cerberus and bans through the admin API are refused",
        )
        .fix("`cscli machines add cerberus --password PW`, then set machine_id and machine_password (or machine_password_file)"),
        (None, false) => Check::new("watcher", "skip", "standalone mode: no LAPI to write to"),
    });

    out.extend(console_checks(admin));
    if let Some(engine) = &admin.engine {
        out.extend(engine_checks(&admin.config, engine));
    }
    out.push(socket_check(admin));
    out.push(data_dir_check(c));
    out.push(if admin.decider.enabled() {
        Check::new("protection", "ok", "on: decisions are enforced")
    } else {
        Check::new("protection", "warn", "off: every request is allowed")
            .fix("POST /api/v1/cerberus/crowdsec/enable when it should protect again")
    });
    out
}

/// `console` (the enrollment), `heartbeat` (the last one, and whether the poller still
/// runs) and `console_online` (whether the console shows the engine online).
fn console_checks(admin: &Admin) -> [Check; 3] {
    use crate::console::EnrollState;
    let Some(console) = &admin.console else {
        let why =
            "no engine config (console_engine_config): console enrollment and heartbeats are off";
        return [
            Check::new("console", "skip", why),
            Check::new("heartbeat", "skip", why),
            Check::new("console_online", "skip", why),
        ];
    };
    let status = console.status();
    let reason = status["reason"].as_str().unwrap_or("").to_string();
    let enroll = match console.state() {
        EnrollState::Enrolled => Check::new(
            "console",
            "ok",
            format!(
                "enrolled in the CrowdSec console{}",
                status["enrolled_at"].as_str().map(|t| format!(" ({t})")).unwrap_or_default()
            ),
        ),
        EnrollState::Enrolling => Check::new("console", "ok", "an enrollment is running"),
        EnrollState::NotEnrolled => Check::new("console", "warn", "the engine is not enrolled in the CrowdSec console")
            .fix("POST /api/v1/cerberus/crowdsec/console/enroll {\"enrollment_key\": \"...\"} with the key from app.crowdsec.net"),
        EnrollState::Failed => Check::new("console", "fail", format!("the last enrollment failed: {reason}"))
            .fix("follow the advice in the reason, then enroll again (POST /api/v1/cerberus/crowdsec/console/enroll)"),
    };
    let standing = console.standing();
    let heartbeat = match console.last_heartbeat() {
        _ if standing.poller == "not_running" => {
            Check::new("heartbeat", "fail", standing.detail.clone())
        }
        Some(hb) if hb.ok => Check::new(
            "heartbeat",
            "ok",
            format!(
                "the central API accepted the engine's heartbeat at {} ({} ms)",
                hb.at, hb.latency_ms
            ),
        ),
        // Only an enrolled engine is expected to stand well with the central API.
        Some(hb) => Check::new(
            "heartbeat",
            if console.state() == EnrollState::Enrolled {
                "fail"
            } else {
                "warn"
            },
            format!(
                "the last heartbeat ({}) failed: {}",
                hb.at,
                hb.error.unwrap_or_default()
            ),
        ),
        None => Check::new("heartbeat", "warn", standing.detail.clone()),
    };
    let heartbeat = match (&standing.fix, heartbeat.status) {
        (Some(fix), "fail" | "warn") => heartbeat.fix(fix.clone()),
        _ => heartbeat,
    };
    let online = match standing.console {
        "online" => Check::new(
            "console_online",
            "ok",
            "the CrowdSec console shows this engine online",
        ),
        "offline" => Check::new("console_online", "fail", standing.detail.clone()),
        "not_enrolled" => Check::new(
            "console_online",
            "skip",
            "the engine is not enrolled in the console",
        ),
        _ => Check::new(
            "console_online",
            "warn",
            format!("not known yet: {}", standing.detail),
        ),
    };
    let online = match (&standing.fix, online.status) {
        (Some(fix), "fail" | "warn") => online.fix(fix.clone()),
        _ => online,
    };
    [enroll, heartbeat, online]
}

/// The managed engine: its config, acquisition and credential files, and its process.
fn engine_checks(
    config: &crate::config::Config,
    engine: &crate::engine::managed::EngineControl,
) -> Vec<Check> {
    use crate::engine::supervisor::read_engine_config;
    let file = &config.engine.config_file;
    let mut out = Vec::new();
    let info = match read_engine_config(file) {
        Ok(i) => {
            out.push(Check::new(
                "engine_config",
                "ok",
                format!("{} is usable; its LAPI is {}", file.display(), i.lapi_url),
            ));
            i
        }
        Err(e) => {
            out.push(
                Check::new("engine_config", "fail", format!("{}: {e}", file.display())).fix(
                    "fix engine.config_file (crowdsec -c FILE -t shows the engine's own view)",
                ),
            );
            return out;
        }
    };
    out.push(acquisition_check(file));
    out.push(match std::fs::metadata(&info.credentials_path) {
        Ok(_) => Check::new(
            "engine_credentials",
            "ok",
            format!(
                "the agent's LAPI login is in {}",
                info.credentials_path.display()
            ),
        ),
        Err(_) if engine.wanted() => Check::new(
            "engine_credentials",
            "warn",
            format!(
                "{} is missing; cerberus creates it at the next engine start",
                info.credentials_path.display()
            ),
        ),
        Err(e) => Check::new(
            "engine_credentials",
            "warn",
            format!("{}: {e}", info.credentials_path.display()),
        ),
    });
    let status = engine.supervisor.status();
    let state = serde_json::to_value(&status)
        .ok()
        .and_then(|v| v["state"].as_str().map(str::to_string))
        .unwrap_or_default();
    out.push(match (engine.wanted(), state.as_str()) {
        (true, "running") => Check::new("engine", "ok", "the CrowdSec engine runs"),
        (false, _) => Check::new("engine", "skip", "protection is off, so the engine is stopped"),
        (true, "starting" | "restarting") => Check::new("engine", "warn", format!("the engine is {state}")),
        (true, other) => Check::new(
            "engine",
            "fail",
            format!(
                "the engine is {other}: {}",
                serde_json::to_value(&status)
                    .ok()
                    .and_then(|v| v["last_error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "see the log".into())
            ),
        )
        .fix("run `crowdsec -c ENGINE_CONFIG -t` to see the engine's complaint; cerberus retries the start"),
    });
    out
}

/// `crowdsec_service.acquisition_path`: present, YAML, each source naming what it reads;
/// log files that do not exist yet are named (CrowdSec 1.4 does not pick them up later).
fn acquisition_check(file: &std::path::Path) -> Check {
    let yaml = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&t).ok());
    let Some(path) = yaml.as_ref().and_then(|v| {
        v["crowdsec_service"]["acquisition_path"]
            .as_str()
            .map(std::path::PathBuf::from)
    }) else {
        return Check::new("engine_acquisition", "fail", "crowdsec_service.acquisition_path is not set: the engine reads no logs")
            .fix("point it at a file such as acquis.yaml with `filenames: [/var/log/caddy/access.log]` and `labels: {type: caddy}`");
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Check::new(
                "engine_acquisition",
                "fail",
                format!("{}: {e}", path.display()),
            )
            .fix("create the acquisition file the engine config names")
        }
    };
    let mut sources = 0;
    let mut missing = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let v = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                return Check::new(
                    "engine_acquisition",
                    "fail",
                    format!("{}: invalid YAML: {e}", path.display()),
                )
            }
        };
        if v.is_null() {
            continue;
        }
        sources += 1;
        let files = v["filenames"].as_sequence().cloned().unwrap_or_default();
        for f in files.iter().chain(v.get("filename")) {
            if let Some(f) = f.as_str() {
                if !f.contains('*') && !std::path::Path::new(f).exists() {
                    missing.push(f.to_string());
                }
            }
        }
    }
    match (sources, missing.is_empty()) {
        (0, _) => Check::new("engine_acquisition", "fail", format!("{} names no log source", path.display()))
            .fix("add a source, e.g. `filenames: [/var/log/caddy/access.log]` with `labels: {type: caddy}`"),
        (_, true) => Check::new("engine_acquisition", "ok", format!("{} names {sources} source(s)", path.display())),
        (_, false) => Check::new(
            "engine_acquisition",
            "warn",
            format!("{}: these logs do not exist yet: {}", path.display(), missing.join(", ")),
        )
        .fix("create the files before the engine starts (CrowdSec 1.4 does not pick up files created later), e.g. `touch` them"),
    }
}

fn socket_check(admin: &Admin) -> Check {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = &admin.config.socket;
    match std::fs::metadata(path) {
        Ok(m) if m.file_type().is_socket() => Check::new(
            "socket",
            "ok",
            format!(
                "{} (mode {:04o}) serves the Caddy module",
                path.display(),
                m.permissions().mode() & 0o7777
            ),
        ),
        Ok(_) => Check::new(
            "socket",
            "fail",
            format!("{} exists but is not a socket", path.display()),
        )
        .fix("remove the file, or point `socket` elsewhere, and restart cerberus"),
        Err(e) => Check::new("socket", "fail", format!("{}: {e}", path.display()))
            .fix("check that `socket` names a directory cerberus can write and restart it"),
    }
}

fn data_dir_check(c: &crate::config::Config) -> Check {
    let probe = c.data_dir.join(".cerberus-write-test");
    let result = std::fs::write(&probe, b"ok").and_then(|_| std::fs::remove_file(&probe));
    match result {
        Ok(()) => Check::new("data_dir", "ok", format!("{} is writable", c.data_dir.display())),
        Err(e) => Check::new("data_dir", "fail", format!("{}: cannot write: {e}", c.data_dir.display()))
            .fix("give the cerberus user write access to data_dir (the database and the admin token live there)"),
    }
}

/// `GET /diagnostics/config`.
pub async fn config(admin: &Admin) -> Reply {
    let checks = checks(admin).await;
    let ok = checks.iter().all(|c| c.status != "fail");
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == "fail")
        .map(|c| c.name)
        .collect();
    json_reply(
        StatusCode::OK,
        &json!({"ok": ok, "failed": failed, "checks": checks}),
    )
}
