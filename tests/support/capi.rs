//! A stand-in for CrowdSec's central API (CAPI) on loopback, and a CrowdSec engine
//! config whose online credentials point at it, so that the real `cscli` of the version
//! under test (1.4.6 or 1.7.8, [`super::lapi::version`]) enrolls against it.
//!
//! It answers what cscli and cerberus' heartbeat call, under `/v2/` (what 1.4.6 speaks)
//! and `/v3/` (1.5 and later: `VersionPrefix: "v3"` in `cmd/crowdsec-cli/cliconsole/
//! console.go`, `enroll`, and in `pkg/apiserver/apic.go`, `NewAPIC`, of 1.7.8), the same
//! way under both, as the real central API serves both generations of engines:
//! - `POST /vN/watchers/login` `{"machine_id","password","scenarios":[...]}` ->
//!   `200 {"code":200,"expire":RFC3339,"token"}` (read by `pkg/apiclient/auth_jwt.go`,
//!   `JWTTransport.refreshJwtToken`, as `models.WatcherAuthResponse`); a body without a
//!   `scenarios` array is a 400 (the real CAPI refuses `null` there);
//! - `POST /vN/watchers/enroll` with the token: 1.4.6 sends `{"attachment_key","name",
//!   "tags","overwrite"}`, 1.7.8 `{"attachment_key","name","tags","autoenroll"}` plus
//!   `"overwrite": true` only when set (`pkg/apiclient/auth_service.go`, `enrollRequest`
//!   and `EnrollWatcher`) -> 202 for a new enrollment; 200 means "already enrolled" to
//!   cscli (`console.go`, `enroll`: `rawResp.Response.StatusCode == http.StatusOK`);
//! - `GET /vN/heartbeat` with the token -> 200 (`pkg/apiclient/heartbeat.go`, `Ping`:
//!   any 2xx).
//!
//! - the engine's own central API calls (community blocklist, engine mode without
//!   `-no-capi`): `POST /vN/signals` and `POST /vN/metrics` -> 200; `GET /v2/decisions/
//!   stream` -> `{"new":[decision...],"deleted":[]}` with 1.4.6's decision fields, `GET
//!   /v3/decisions/stream` -> `{"new":[{"scenario","scope","decisions":[{"value",
//!   "duration"}]}],"deleted":[],"links":{"blocklists":[{"name","url","remediation",
//!   "scope","duration"}]}}` (`pkg/modelscapi/get_decisions_stream_response*.go` and
//!   `blocklist_link.go`, read by `pkg/apiserver/apic.go`, `PullTop` and
//!   `UpdateBlocklists`), and the blocklist itself at `GET /blocklist/NAME`: one value a
//!   line, as `pkg/apiclient/decisions_service.go`, `GetDecisionsFromBlocklist`, reads it.
//!
//! Errors carry `{"message": ...}`: cscli's error type dereferences `message` (1.4.6
//! crashes on a body without it; 1.7.8 prints the body as is, `pkg/apiclient/resperr.go`,
//! `CheckResponse`, and prints `API error: MESSAGE` from `ErrorResponse.Error`).
//!
//! ```ignore
//! let capi = Capi::start(Mode::Ok).await;
//! let engine = EngineConfig::new(&capi);   // config.yaml + online credentials -> capi.url
//! capi.set_mode(Mode::Down).await;         // the port is closed: connection refused
//! ```

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The address the stand-in's community blocklist bans (origin `CAPI` in LAPI).
pub const COMMUNITY_IP: &str = "192.0.2.200";
/// The console blocklist subscription that v3 pulls link to, and the address it bans
/// (origin `lists`, scenario `lists:NAME` in LAPI).
pub const BLOCKLIST: &str = "cerberus-test-list";
pub const BLOCKLIST_IP: &str = "192.0.2.201";

/// How the stand-in behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Login, enroll (202) and heartbeat succeed.
    Ok,
    /// Enroll answers 403: the key has expired.
    ExpiredKey,
    /// Enroll answers 403: the key is not valid.
    InvalidKey,
    /// Enroll answers 200 (cscli: "Instance already enrolled").
    AlreadyEnrolled,
    /// Login answers 403: the engine's credentials are refused.
    Unauthorized,
    /// Nothing listens on the port (connection refused).
    Down,
    /// Every route answers 500.
    ServerError,
    /// Enroll answers by the key, as the real central API does: 403 "expired" for a key
    /// starting with [`EXPIRED_KEY_PREFIX`], 202 for any other.
    ByKey,
}

/// Keys the stand-in treats as expired in [`Mode::ByKey`].
pub const EXPIRED_KEY_PREFIX: &str = "expired";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {} body is not JSON ({e}): {:?}",
                self.method, self.path, self.body
            )
        })
    }
}

struct Shared {
    mode: Mutex<Mode>,
    seen: Mutex<Vec<Seen>>,
    tokens: Mutex<Vec<String>>,
}

/// The stand-in: `url` is `http://127.0.0.1:PORT/` (with the slash CrowdSec needs).
pub struct Capi {
    pub url: String,
    pub port: u16,
    /// The engine credentials it accepts.
    pub login: String,
    pub password: String,
    shared: Arc<Shared>,
    server: Mutex<Option<JoinHandle<()>>>,
}

impl Capi {
    pub async fn start(mode: Mode) -> Capi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let capi = Capi {
            url: format!("http://127.0.0.1:{port}/"),
            port,
            login: format!("machine-{port}"),
            password: "stand-in-password-0123456789".into(),
            shared: Arc::new(Shared {
                mode: Mutex::new(Mode::Ok),
                seen: Mutex::new(Vec::new()),
                tokens: Mutex::new(Vec::new()),
            }),
            server: Mutex::new(None),
        };
        *capi.server.lock().unwrap() = Some(capi.serve(listener));
        capi.set_mode(mode).await;
        capi
    }

    fn serve(&self, listener: TcpListener) -> JoinHandle<()> {
        let shared = self.shared.clone();
        let creds = (self.login.clone(), self.password.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let shared = shared.clone();
                let creds = creds.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(10),
                        answer(sock, &shared, &creds),
                    )
                    .await;
                });
            }
        })
    }

    /// Switches the behaviour; `Down` closes the port, leaving `Down` opens it again.
    pub async fn set_mode(&self, mode: Mode) {
        let was = std::mem::replace(&mut *self.shared.mode.lock().unwrap(), mode);
        if mode == Mode::Down && was != Mode::Down {
            let task = self.server.lock().unwrap().take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        } else if mode != Mode::Down && self.server.lock().unwrap().is_none() {
            let listener = TcpListener::bind(("127.0.0.1", self.port))
                .await
                .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{} again: {e}", self.port));
            *self.server.lock().unwrap() = Some(self.serve(listener));
        }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The requests to `path`.
    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// `/v2/REST` for cscli 1.4.6, `/v3/REST` for 1.7.8: where the version under test
    /// sends its requests.
    pub fn path(&self, rest: &str) -> String {
        let v = if super::lapi::version().is_modern() {
            "v3"
        } else {
            "v2"
        };
        format!("/{v}/{rest}")
    }

    /// Tokens handed out by logins.
    pub fn tokens(&self) -> Vec<String> {
        self.shared.tokens.lock().unwrap().clone()
    }
}

impl Drop for Capi {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }
}

async fn answer(mut sock: TcpStream, shared: &Shared, creds: &(String, String)) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if got.len() > 64 * 1024 {
            return;
        }
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    let mut body = got[head_end..].to_vec();
    while body.len() < len {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let seen = Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    shared.seen.lock().unwrap().push(seen.clone());
    let mode = *shared.mode.lock().unwrap();
    let (status, reply) = route(&seen, mode, shared, creds);
    // A string is sent as it is (the blocklist's text), anything else as JSON.
    let text = match reply {
        Some(Value::String(raw)) => raw,
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let reason = match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(out.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn message(text: &str) -> Option<Value> {
    Some(json!({ "message": text }))
}

fn bearer_ok(seen: &Seen, shared: &Shared) -> bool {
    seen.header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| shared.tokens.lock().unwrap().iter().any(|k| k == t))
}

fn route(
    seen: &Seen,
    mode: Mode,
    shared: &Shared,
    creds: &(String, String),
) -> (u16, Option<Value>) {
    if mode == Mode::ServerError {
        return (500, message("Internal server error"));
    }
    let v3 = seen.path.starts_with("/v3/");
    if seen.method == "GET" && seen.path == format!("/blocklist/{BLOCKLIST}") {
        return (200, Some(Value::String(format!("{BLOCKLIST_IP}\n"))));
    }
    // The same answers under both API versions.
    let path = seen
        .path
        .strip_prefix("/v3/")
        .or_else(|| seen.path.strip_prefix("/v2/"))
        .map(|rest| format!("/v2/{rest}"))
        .unwrap_or_else(|| seen.path.clone());
    match (seen.method.as_str(), path.as_str()) {
        ("POST", "/v2/watchers/login") => {
            let Ok(body) = serde_json::from_str::<Value>(&seen.body) else {
                return (400, message("Invalid request body"));
            };
            let (Some(id), Some(pw), Some(_)) = (
                body["machine_id"].as_str(),
                body["password"].as_str(),
                body["scenarios"].as_array(),
            ) else {
                return (
                    400,
                    Some(
                        json!({"message": "Invalid request body", "errors": "machine_id and password must be strings, scenarios an array"}),
                    ),
                );
            };
            if mode == Mode::Unauthorized || id != creds.0 || pw != creds.1 {
                return (403, message("machine_id or password refused"));
            }
            let token = format!("token-{}", shared.tokens.lock().unwrap().len() + 1);
            shared.tokens.lock().unwrap().push(token.clone());
            (
                200,
                Some(json!({"code": 200, "expire": "2099-01-01T00:00:00Z", "token": token})),
            )
        }
        ("POST", "/v2/watchers/enroll") => {
            if !bearer_ok(seen, shared) {
                return (401, message("missing or unknown token"));
            }
            let Ok(body) = serde_json::from_str::<Value>(&seen.body) else {
                return (400, message("Invalid request body"));
            };
            if !body["attachment_key"].is_string() || !body["tags"].is_array() {
                return (400, message("Invalid request body"));
            }
            match mode {
                Mode::ExpiredKey => (403, message("attachment key has expired")),
                Mode::InvalidKey => (403, message("attachment key is not valid")),
                Mode::AlreadyEnrolled => (200, message("instance already enrolled")),
                Mode::ByKey
                    if body["attachment_key"]
                        .as_str()
                        .is_some_and(|k| k.starts_with(EXPIRED_KEY_PREFIX)) =>
                {
                    (403, message("attachment key has expired"))
                }
                _ => (202, message("enrollment pending approval in the console")),
            }
        }
        ("POST", "/v2/signals" | "/v2/metrics" | "/v2/usage-metrics") => {
            if !bearer_ok(seen, shared) {
                return (401, message("missing or unknown token"));
            }
            (200, message("OK"))
        }
        ("GET", p) if p.starts_with("/v2/decisions/stream") => {
            if !bearer_ok(seen, shared) {
                return (401, message("missing or unknown token"));
            }
            let scenario = "crowdsecurity/http-probing";
            if v3 {
                let list_url = format!(
                    "http://{}/blocklist/{BLOCKLIST}",
                    seen.header("host").unwrap_or("127.0.0.1")
                );
                (
                    200,
                    Some(json!({
                        "new": [{"scenario": scenario, "scope": "ip",
                                 "decisions": [{"value": COMMUNITY_IP, "duration": "24h"}]}],
                        "deleted": [],
                        "links": {"blocklists": [{"name": BLOCKLIST, "url": list_url,
                                                  "remediation": "ban", "scope": "ip", "duration": "24h"}]},
                    })),
                )
            } else {
                (
                    200,
                    Some(json!({
                        "new": [{"duration": "24h", "origin": "CAPI", "scenario": scenario,
                                 "scope": "ip", "type": "ban", "value": COMMUNITY_IP}],
                        "deleted": [],
                    })),
                )
            }
        }
        ("GET", "/v2/heartbeat") => {
            if !bearer_ok(seen, shared) {
                return (401, message("missing or unknown token"));
            }
            (200, None)
        }
        (_, "/v2/watchers/login" | "/v2/watchers/enroll" | "/v2/heartbeat") => {
            (405, message("method not allowed"))
        }
        _ => (404, message("not found")),
    }
}

/// The crowdsec under test, unpacked or built once per test process: the path of its cscli.
pub fn cscli() -> PathBuf {
    super::managed_engine::bins().cscli.clone()
}

/// A CrowdSec engine config (nothing runs) for cscli: its LAPI section, hub, console
/// options file and online credentials, the latter pointing at a [`Capi`].
pub struct EngineConfig {
    pub dir: tempfile::TempDir,
    /// `config.yaml`.
    pub config: PathBuf,
    pub credentials: PathBuf,
    /// Written by `cscli console enroll` when it succeeds.
    pub console_options: PathBuf,
    pub cscli: PathBuf,
}

impl EngineConfig {
    pub fn new(capi: &Capi) -> EngineConfig {
        let cscli = cscli();
        let pkg_etc = cscli
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("cscli lives in ROOT/usr/bin")
            .join("etc/crowdsec");
        let dir = tempfile::Builder::new()
            .prefix("cerberus-engine-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        for sub in ["config", "data", "hub"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // cscli reads the installed scenarios from the hub index: it needs the
        // item types to be there, even empty.
        std::fs::write(
            d.join("hub/.index.json"),
            r#"{"parsers":{},"scenarios":{},"postoverflows":{},"collections":{}}"#,
        )
        .unwrap();
        std::fs::copy(pkg_etc.join("profiles.yaml"), d.join("profiles.yaml")).unwrap();
        let credentials = d.join("online_api_credentials.yaml");
        std::fs::write(
            &credentials,
            format!(
                "url: {}\nlogin: {}\npassword: {}\n",
                capi.url, capi.login, capi.password
            ),
        )
        .unwrap();
        let config = d.join("config.yaml");
        let console_options = d.join("console.yaml");
        let p = |name: &str| d.join(name).display().to_string();
        std::fs::write(
            &config,
            format!(
                "common:\n  daemonize: false\n  log_media: stdout\n  log_level: info\n\
                 config_paths:\n  config_dir: {cfg}/\n  data_dir: {data}/\n  hub_dir: {hub}/\n  index_path: {hub}/.index.json\n\
                 cscli:\n  output: human\n\
                 db_config:\n  type: sqlite\n  db_path: {db}\n  use_wal: true\n\
                 api:\n  server:\n    listen_uri: 127.0.0.1:1\n    profiles_path: {profiles}\n    console_path: {console}\n    online_client:\n      credentials_path: {creds}\n",
                cfg = p("config"),
                data = p("data"),
                hub = p("hub"),
                db = p("crowdsec.db"),
                profiles = p("profiles.yaml"),
                console = console_options.display(),
                creds = credentials.display(),
            ),
        )
        .unwrap();
        EngineConfig {
            dir,
            config,
            credentials,
            console_options,
            cscli,
        }
    }
}
