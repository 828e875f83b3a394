//! The commands that talk to a running cerberus over its admin API: `status`,
//! `decisions list`, `ban`, `unban`, `enable`, `disable`, `diagnose`.
//!
//! The API address comes from `admin_listen` in the config (or `--admin`), the token from
//! `--token`, `CERBERUS_ADMIN_TOKEN`, `admin_token`/`admin_token_file`, or the file
//! `data_dir/admin_token` that the daemon writes. Requests are plain HTTP/1.1 with
//! `Connection: close`, over TCP or a Unix socket.

use crate::admin::PREFIX;
use crate::config::{Config, Listen};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where and how to reach the admin API.
pub struct Target {
    pub listen: Listen,
    pub token: Option<String>,
    /// Where the token file was looked for (for the error message).
    pub token_file: PathBuf,
}

impl Target {
    /// From the config, with overrides from flags.
    pub fn new(
        config: &Config,
        admin: Option<&str>,
        token: Option<String>,
    ) -> Result<Target, String> {
        let listen = match admin {
            Some(a) => {
                let a = a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/');
                Listen::parse(a).map_err(|e| format!("--admin: {e}"))?
            }
            None => config.admin_listen.clone(),
        };
        let token_file = config.data_dir.join("admin_token");
        let token = token
            .or_else(|| config.admin_token.clone())
            .or_else(|| {
                std::fs::read_to_string(&token_file)
                    .ok()
                    .map(|t| t.trim().to_string())
            })
            .filter(|t| !t.is_empty());
        Ok(Target {
            listen,
            token,
            token_file,
        })
    }

    fn no_token(&self) -> String {
        format!(
            "no admin token: pass --token, set CERBERUS_ADMIN_TOKEN or admin_token, or run where {} is readable (--data-dir or -c)",
            self.token_file.display()
        )
    }

    fn describe(&self) -> String {
        match &self.listen {
            Listen::Tcp(a) => format!("http://{a}"),
            Listen::Unix(p) => format!("unix:{}", p.display()),
            Listen::Off => "off".into(),
        }
    }
}

/// An answer: status and JSON body (or `{"text": ...}` when not JSON).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// One request with `Connection: close`; errors are about reaching the daemon.
pub fn request(
    t: &Target,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, String> {
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: cerberus\r\nConnection: close\r\nAccept: application/json\r\n");
    if path.starts_with(PREFIX) {
        let token = t.token.as_deref().ok_or_else(|| t.no_token())?;
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if body.is_some() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            payload.len()
        ));
    }
    head.push_str("\r\n");
    head.push_str(&payload);
    let timeout = Duration::from_secs(30);
    let raw = match &t.listen {
        Listen::Off => return Err("the admin API is off (admin_listen: off)".into()),
        Listen::Tcp(addr) => {
            let mut s = connect_tcp(addr, timeout)?;
            exchange(&mut s, head.as_bytes())
        }
        Listen::Unix(p) => {
            let mut s = std::os::unix::net::UnixStream::connect(p)
                .map_err(|e| format!("cannot connect to {}: {e}", p.display()))?;
            s.set_read_timeout(Some(timeout)).ok();
            exchange(&mut s, head.as_bytes())
        }
    }
    .map_err(|e| format!("{}: {e}", t.describe()))?;
    parse_response(&raw)
}

fn connect_tcp(addr: &str, timeout: Duration) -> Result<std::net::TcpStream, String> {
    use std::net::ToSocketAddrs;
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {addr}: {e}"))?;
    let mut last = format!("{addr}: no address");
    for a in addrs {
        match std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)) {
            Ok(s) => {
                s.set_read_timeout(Some(timeout)).ok();
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

fn exchange<S: Read + Write>(s: &mut S, request: &[u8]) -> Result<Vec<u8>, String> {
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

fn parse_response(raw: &[u8]) -> Result<Answer, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the daemon closed the connection before a whole answer")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", head.lines().next()))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&body)}));
    Ok(Answer { status, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 || pos + 2 + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = &b[(pos + 4 + size).min(b.len())..];
    }
    out
}

/// Prints an API error and gives the exit code.
fn refused(what: &str, a: &Answer) -> ExitCode {
    let msg = a.body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| a.body.to_string());
    match a.body["field"].as_str() {
        Some(f) => eprintln!("cerberus {what}: {msg} (field `{f}`, HTTP {})", a.status),
        None => eprintln!("cerberus {what}: {msg} (HTTP {})", a.status),
    }
    ExitCode::FAILURE
}

fn unreachable(what: &str, e: &str) -> ExitCode {
    eprintln!("cerberus {what}: cannot reach the admin API: {e} (is cerberus running? see admin_listen, or pass --admin)");
    ExitCode::FAILURE
}

fn call(
    t: &Target,
    what: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, ExitCode> {
    match request(t, method, &format!("{PREFIX}{path}"), body.as_ref()) {
        Ok(a) if (200..300).contains(&a.status) => Ok(a.body),
        Ok(a) => Err(refused(what, &a)),
        Err(e) => Err(unreachable(what, &e)),
    }
}

pub fn status(t: &Target, as_json: bool) -> ExitCode {
    let s = match call(t, "status", "GET", "/status", None) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if as_json {
        println!("{s}");
        return ExitCode::SUCCESS;
    }
    println!(
        "cerberus {} ({} mode)",
        s["version"].as_str().unwrap_or("?"),
        s["mode"].as_str().unwrap_or("?")
    );
    println!(
        "protection:  {}",
        if s["enabled"] == true {
            "on"
        } else {
            "OFF (every request is allowed)"
        }
    );
    println!("decisions:   {} active", s["decisions"]["total"]);
    if let Some(by) = s["decisions"]["by_origin"].as_object() {
        for (origin, n) in by {
            println!("  {origin:<12} {n}");
        }
    }
    if s["lapi"].is_object() {
        let l = &s["lapi"];
        println!(
            "LAPI:        {} ({})",
            l["url"].as_str().unwrap_or("?"),
            l["health"]["status"].as_str().unwrap_or("?")
        );
        match l["last_sync_age_seconds"].as_u64() {
            Some(age) => println!(
                "last sync:   {}s ago ({})",
                age,
                l["last_sync"].as_str().unwrap_or("")
            ),
            None => println!("last sync:   never"),
        }
        if let Some(e) = l["last_error"].as_str() {
            println!("last error:  {e}");
        }
    }
    let a = &s["appsec"];
    match a["status"].as_str() {
        None | Some("not_configured") => println!("AppSec:      off"),
        Some(status) => println!(
            "AppSec:      {} ({status}{})",
            a["url"].as_str().unwrap_or("?"),
            a["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
    }
    println!("snapshot:    generation {}", s["snapshot"]["generation"]);
    println!("lookups:     {}", s["lookups"]);
    ExitCode::SUCCESS
}

/// Filters for `decisions list`, passed through as query parameters.
pub fn decisions_list(t: &Target, query: &[(&str, Option<String>)], as_json: bool) -> ExitCode {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in query {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    let q = q.finish();
    let path = if q.is_empty() {
        "/decisions".to_string()
    } else {
        format!("/decisions?{q}")
    };
    let l = match call(t, "decisions list", "GET", &path, None) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if as_json {
        println!("{l}");
        return ExitCode::SUCCESS;
    }
    let rows = l["decisions"].as_array().cloned().unwrap_or_default();
    println!(
        "{:>10}  {:<40} {:<8} {:<10} {:<8} {:>9}  scenario",
        "id", "value", "type", "origin", "country", "left"
    );
    for d in &rows {
        println!(
            "{:>10}  {:<40} {:<8} {:<10} {:<8} {:>9}  {}",
            d["id"].as_i64().unwrap_or(0),
            d["value"].as_str().unwrap_or(""),
            d["type"].as_str().unwrap_or(""),
            d["origin"].as_str().unwrap_or(""),
            d["country"].as_str().unwrap_or("-"),
            crate::duration::format_secs(d["remaining_seconds"].as_u64().unwrap_or(0)),
            d["scenario"].as_str().unwrap_or(""),
        );
    }
    println!("{} of {} shown", rows.len(), l["total"]);
    ExitCode::SUCCESS
}

pub fn ban(
    t: &Target,
    value: &str,
    duration: Option<String>,
    reason: Option<String>,
    type_name: Option<String>,
    as_json: bool,
) -> ExitCode {
    let mut body = json!({"value": value});
    for (k, v) in [
        ("duration", duration),
        ("reason", reason),
        ("type", type_name),
    ] {
        if let Some(v) = v {
            body[k] = json!(v);
        }
    }
    match call(t, "ban", "POST", "/ban", Some(body)) {
        Ok(b) if as_json => {
            println!("{b}");
            ExitCode::SUCCESS
        }
        Ok(b) => {
            println!(
                "banned {} ({} for {}, via {}){}",
                b["value"].as_str().unwrap_or(value),
                b["type"].as_str().unwrap_or("ban"),
                b["duration"].as_str().unwrap_or("?"),
                b["via"].as_str().unwrap_or("?"),
                if b["enforced"] == true {
                    ""
                } else {
                    "; not yet enforced here"
                }
            );
            if let Some(w) = b["warning"].as_str() {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn unban(t: &Target, value: &str, as_json: bool) -> ExitCode {
    match call(t, "unban", "POST", "/unban", Some(json!({"value": value}))) {
        Ok(u) if as_json => {
            println!("{u}");
            ExitCode::SUCCESS
        }
        Ok(u) => {
            let n = u["lifted"].as_array().map_or(0, |l| l.len());
            println!("unbanned {value}: {n} decision(s) lifted here");
            match (&u["lapi"]["deleted"], u["lapi"]["error"].as_str()) {
                (Value::Number(d), _) => println!("LAPI deleted {d} decision(s): every bouncer sees it"),
                (_, Some(e)) => eprintln!("warning: LAPI could not be told ({e}); kept as a local override"),
                _ => println!("no watcher credentials: the unban is local to this cerberus (kept until the decisions expire)"),
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

pub fn switch(t: &Target, on: bool) -> ExitCode {
    let path = if on { "/enable" } else { "/disable" };
    match call(t, if on { "enable" } else { "disable" }, "POST", path, None) {
        Ok(_) => {
            println!(
                "protection is {}",
                if on {
                    "on"
                } else {
                    "off: every request is allowed"
                }
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `cerberus capi-register`: registers the managed engine with the central API.
pub fn capi_register(t: &Target, as_json: bool) -> ExitCode {
    match call(t, "capi-register", "POST", "/capi/register", None) {
        Ok(v) => {
            if as_json {
                println!("{v}");
            } else {
                let capi = &v["capi"];
                match capi["enabled"].as_bool() {
                    Some(true) => println!(
                        "registered with the central API (credentials in {}); the engine runs with the community blocklist",
                        capi["credentials_path"].as_str().unwrap_or("?")
                    ),
                    _ => println!(
                        "registered, but the community blocklist is still off: {}",
                        capi["reason"].as_str().unwrap_or("see cerberus status")
                    ),
                }
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// One line of `diagnose`.
fn check(name: &str, status: &str, detail: impl Into<String>, fix: Option<&str>) -> Value {
    let mut c = json!({"name": name, "status": status, "detail": detail.into()});
    if let Some(f) = fix {
        c["fix"] = json!(f);
    }
    c
}

/// `cerberus diagnose`: the daemon's own checks plus reachability of the daemon itself;
/// when the daemon cannot be reached, what can be checked from here (config, LAPI).
pub fn diagnose(config: &Config, t: &Target, as_json: bool) -> ExitCode {
    let mut checks: Vec<Value> = Vec::new();
    let daemon = request(t, "GET", &format!("{PREFIX}/diagnostics/config"), None);
    match daemon {
        Err(_) if t.token.is_none() => {
            checks.push(check(
                "admin_token",
                "fail",
                t.no_token(),
                Some("cerberus writes it into data_dir on its first start"),
            ));
            checks.push(lapi_from_here(config));
        }
        Ok(a) if a.status == 200 => {
            checks.push(check(
                "daemon",
                "ok",
                format!("the admin API answers at {}", t.describe()),
                None,
            ));
            if let Some(list) = a.body["checks"].as_array() {
                checks.extend(list.iter().cloned());
            }
            if let Ok(c) = request(
                t,
                "GET",
                &format!("{PREFIX}/diagnostics/connectivity"),
                None,
            ) {
                let capi = &c.body["capi"];
                checks.push(match capi["status"].as_str() {
                    Some("reachable") => check(
                        "capi",
                        "ok",
                        format!(
                            "{} answers in {} ms",
                            capi["url"].as_str().unwrap_or(""),
                            capi["latency_ms"]
                        ),
                        None,
                    ),
                    _ => {
                        let mut c = check(
                            "capi",
                            "warn",
                            capi["error"]
                                .as_str()
                                .unwrap_or("the central API is unreachable"),
                            Some(&format!(
                            "{}; only the CrowdSec engine needs it (community blocklist, console)",
                            capi["fix"].as_str().unwrap_or("open outbound HTTPS to it")
                        )),
                        );
                        // The classification, for scripts: refused, timeout, dns, proxy, tls.
                        for k in ["cause", "proxy", "proxy_env"] {
                            if !capi[k].is_null() {
                                c[k] = capi[k].clone();
                            }
                        }
                        c
                    }
                });
                let captcha = &c.body["captcha"];
                match captcha["status"].as_str() {
                    None => {}
                    Some("reachable") => checks.push(check(
                        "captcha",
                        "ok",
                        format!(
                            "{} siteverify {} answers in {} ms",
                            captcha["provider"].as_str().unwrap_or(""),
                            captcha["url"].as_str().unwrap_or(""),
                            captcha["latency_ms"]
                        ),
                        None,
                    )),
                    Some(_) => checks.push(check(
                        "captcha",
                        "fail",
                        format!(
                            "{} siteverify {} gives no usable answer: {}",
                            captcha["provider"].as_str().unwrap_or(""),
                            captcha["url"].as_str().unwrap_or(""),
                            captcha["error"].as_str().unwrap_or("")
                        ),
                        Some("captcha solves are refused (403) until it answers: open outbound HTTPS to it, or fix captcha_verify_url"),
                    )),
                }
            }
        }
        Ok(a) if a.status == 401 => checks.push(check(
            "daemon",
            "fail",
            format!("the admin API at {} refused the token", t.describe()),
            Some("use the token in data_dir/admin_token (pass --data-dir or -c), or --token"),
        )),
        Ok(a) => checks.push(check(
            "daemon",
            "fail",
            format!("the admin API answered HTTP {}: {}", a.status, a.body),
            None,
        )),
        Err(e) => {
            checks.push(check(
                "daemon",
                "fail",
                format!("cannot reach the admin API: {e}"),
                Some("start cerberus (`cerberus run -c CONFIG`), or point -c/--admin at the right config"),
            ));
            checks.push(check("config", "ok", "loaded", None));
            checks.push(lapi_from_here(config));
        }
    }
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| c["status"] == "fail")
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let ok = failed.is_empty();
    if as_json {
        println!("{}", json!({"ok": ok, "failed": failed, "checks": checks}));
    } else {
        for c in &checks {
            let mark = match c["status"].as_str() {
                Some("ok") => "ok  ",
                Some("warn") => "WARN",
                Some("fail") => "FAIL",
                _ => "skip",
            };
            println!(
                "[{mark}] {:<12} {}",
                c["name"].as_str().unwrap_or(""),
                c["detail"].as_str().unwrap_or("")
            );
            if let Some(f) = c["fix"].as_str() {
                if c["status"] != "ok" {
                    println!("       {:<12} fix: {f}", "");
                }
            }
        }
        println!(
            "{}",
            if ok {
                "all checks passed".to_string()
            } else {
                format!("failing: {}", failed.join(", "))
            }
        );
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// LAPI `/health` checked from the CLI itself (when the daemon is down): every URL of
/// `api_url`, ok when one answers (the daemon would use the first that does).
fn lapi_from_here(config: &Config) -> Value {
    if config.api_url.is_empty() {
        return check("lapi", "skip", "standalone mode: no LAPI", None);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return check("lapi", "warn", format!("cannot check LAPI: {e}"), None),
    };
    let mut answered = Vec::new();
    let mut failed = Vec::new();
    for (i, url) in config.api_url.iter().enumerate() {
        let mut one = config.clone();
        one.api_url = vec![url.clone()];
        let result = runtime.block_on(async {
            let client = crate::lapi::LapiClient::new(&one).map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(5), client.health())
                .await
                .map_err(|_| "no answer within 5s".to_string())?
                .map_err(|e| e.to_string())
        });
        // One URL: worded as before the list existed.
        let (name, down) = if config.api_url.len() > 1 {
            let n = format!("LAPI #{} ({url})", i + 1);
            (n.clone(), n)
        } else {
            (url.clone(), format!("LAPI at {url}"))
        };
        match result {
            Ok(rtt) => answered.push(format!("{name} answers /health in {} ms", rtt.as_millis())),
            Err(e) => failed.push(format!("{down} is not usable: {e}")),
        }
    }
    let detail = answered
        .iter()
        .chain(failed.iter())
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    let fix = "start CrowdSec (`systemctl start crowdsec`) and check api_url";
    match (answered.is_empty(), failed.is_empty()) {
        (false, true) => check("lapi", "ok", detail, None),
        (false, false) => check("lapi", "warn", detail, Some(fix)),
        (true, _) => check("lapi", "fail", detail, Some(fix)),
    }
}
