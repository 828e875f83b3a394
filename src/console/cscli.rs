//! What cscli `console enroll` printed, read into success or a [`Failure`].
//!
//! Enrollment is made by the engine's own tool: `cscli -c ENGINE_CONFIG console enroll
//! [--name N] [--tags T]... [--overwrite] -- KEY`. In CrowdSec 1.4.6 that command logs in
//! to the central API (CAPI) named in the engine's online credentials
//! (`api.server.online_client.credentials_path`: `url`, `login`, `password`) with
//! `POST {url}v2/watchers/login` `{"machine_id","password","scenarios"}`, then sends
//! `POST {url}v2/watchers/enroll` `{"attachment_key","name","tags","overwrite"}` with the
//! token. A 2xx other than 200 is a new enrollment; 200 means "already enrolled" (cscli
//! warns and exits 0); any other answer or a network error makes it exit 1 with a
//! `level=fatal msg="Could not enroll instance: ..."` line. cscli runs with `--debug`,
//! whose lines give the HTTP status of the login (`auth-jwt : http N`) and of the enroll
//! call (`Response: HTTP/1.1 N ...`). CrowdSec 1.5 and later (checked with 1.7.8:
//! `cmd/crowdsec-cli/cliconsole/console.go`, `enroll`) speak `v3` instead of `v2` to the
//! central API, send `{"attachment_key","name","tags","autoenroll"}` (`overwrite` only
//! when true: `pkg/apiclient/auth_service.go`, `EnrollWatcher`), write `level=debug`
//! lines without a time, and end a failure with `Error: cscli console enroll: ...` on
//! stderr (`cmd/crowdsec-cli/main.go`, `fatal`) instead of a fatal log line; their API
//! client retries a refused connection or a 5xx with a 20-second backoff
//! (`pkg/apiclient/auth_retry.go`), which cerberus turns off
//! (`CROWDSEC_FEATURE_DISABLE_HTTP_RETRY_BACKOFF=true`) since it retries itself.
//! [`classify`] turns all that into a [`Failure`]
//! [`classify`] turns all that into a [`Failure`] with a message that says what to do.

use super::{bounded, Engine, Failure, FailureKind, CSCLI_TIMEOUT, KEY_MASK};

/// How one cscli run ended.
#[derive(Debug)]
pub enum CscliRun {
    NotStarted(String),
    TimedOut,
    Exited {
        success: bool,
        status: String,
        /// stderr then stdout.
        output: String,
    },
}

/// One logrus line of cscli: its level and message (unescaped).
pub(super) fn logrus_line(line: &str) -> Option<(&str, String)> {
    let level = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("level="))?;
    let at = line.find(" msg=")? + 5;
    let rest = &line[at..];
    let msg = if let Some(quoted) = rest.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some('r') => out.push('\r'),
                    Some('t') => out.push('\t'),
                    Some(other) => out.push(other),
                    None => break,
                },
                c => out.push(c),
            }
        }
        out
    } else {
        rest.split_whitespace().next().unwrap_or("").to_string()
    };
    Some((level, msg))
}

/// What cscli's output says.
#[derive(Debug, Default)]
struct Reading {
    /// HTTP status of `POST v2/watchers/login` (`v3` from 1.5 on).
    login_status: Option<u16>,
    /// HTTP status of `POST v2/watchers/enroll`.
    enroll_status: Option<u16>,
    fatal: Option<String>,
    already: bool,
}

fn read_output(output: &str) -> Reading {
    let mut r = read_lines(output);
    // cscli 1.5+ gives up on a 429/5xx of its retrying transport without a status line:
    // `could not get jwt token: retryable status: 500` (pkg/apiclient/auth_retry.go).
    if let Some(fatal) = &r.fatal {
        if let Some(i) = fatal.find("retryable status: ") {
            let code = fatal[i + "retryable status: ".len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|c| c.parse().ok());
            if fatal[..i].contains("could not get jwt token") {
                r.login_status = r.login_status.or(code);
            } else {
                r.enroll_status = r.enroll_status.or(code);
            }
        }
    }
    r
}

fn read_lines(output: &str) -> Reading {
    let mut r = Reading::default();
    for line in output.lines() {
        // cscli 1.5+: `Error: cscli console enroll: could not enroll instance: ...`.
        if let Some(rest) = line.trim().strip_prefix("Error: ") {
            if r.fatal.is_none() {
                let rest = rest.strip_prefix("cscli console enroll: ").unwrap_or(rest);
                r.fatal = Some(rest.to_string());
            }
            continue;
        }
        let Some((level, msg)) = logrus_line(line) else {
            continue;
        };
        if let Some(code) = msg.strip_prefix("auth-jwt : http ") {
            r.login_status = code.trim().parse().ok();
        } else if let Some(rest) = msg.strip_prefix("Response: HTTP/") {
            r.enroll_status = rest.split_whitespace().nth(1).and_then(|c| c.parse().ok());
        } else if let Some(code) = msg.strip_prefix("resp-jwt: ") {
            r.enroll_status = r.enroll_status.or(code.trim().parse().ok());
        }
        if level == "fatal" && r.fatal.is_none() {
            r.fatal = Some(msg.clone());
        }

        // cscli's own warning; the debug dump of the answer body does not count.
        if level.starts_with("warn") && msg.to_ascii_lowercase().contains("already enrolled") {
            r.already = true;
        }
    }
    r
}

/// The central API's own words in a cscli error (`... API error: WORDS`).
fn api_error_text(fatal: &str) -> String {
    match fatal.find("API error: ") {
        Some(i) => bounded(&fatal[i + "API error: ".len()..]),
        None => bounded(fatal),
    }
}

/// Turns a cscli run into success (with an optional note) or a [`Failure`]. `key` is
/// scrubbed from every text taken from cscli.
pub fn classify(run: &CscliRun, engine: &Engine, key: &str) -> Result<Option<String>, Failure> {
    let (success, status, output) = match run {
        CscliRun::NotStarted(msg) => return Err(Failure::new(FailureKind::EngineConfig, msg)),
        CscliRun::TimedOut => {
            return Err(Failure::new(
                FailureKind::Unreachable,
                format!(
                "cscli did not finish within {}s (killed); check that outbound TCP to {} is open",
                CSCLI_TIMEOUT.as_secs(),
                engine.hostport
            ),
            ))
        }
        CscliRun::Exited {
            success,
            status,
            output,
        } => (*success, status, output),
    };
    let scrubbed;
    let output = if key.is_empty() {
        output.as_str()
    } else {
        scrubbed = output.replace(key, KEY_MASK);
        scrubbed.as_str()
    };
    let r = read_output(output);
    if success {
        // cscli warns only without --overwrite; with it, a 200 is a new enrollment.
        if r.already {
            return Err(Failure::new(
                FailureKind::AlreadyEnrolled,
                "this engine is already enrolled in the console (the central API answered 200); name and tags were left as they were; send \"overwrite\": true to enroll it again (for example under another account)",
            ));
        }
        return Ok(None);
    }
    let Some(fatal) = r.fatal.clone() else {
        return Err(Failure::new(
            FailureKind::Other,
            format!("cscli console enroll failed ({status}) without saying why"),
        ));
    };
    let lower = fatal.to_ascii_lowercase();
    // cscli writes the engine's console options after the central API said yes.
    if r.enroll_status.is_some_and(|c| (200..300).contains(&c)) && lower.contains("console config")
    {
        return Ok(Some(format!(
            "the central API accepted the enrollment, but cscli could not save the engine's console options ({}); give cerberus write access to the engine's console_path, or run `cscli console enable --all` on the engine",
            bounded(&fatal)
        )));
    }
    let said = api_error_text(&fatal);
    let unauthorized = |code: String| {
        Failure::new(
            FailureKind::Unauthorized,
            format!(
                "the central API refused the engine's login ({code}{said}); the online credentials in {} are wrong or revoked: run `cscli capi register` on the engine and restart it",
                engine.credentials_path.display()
            ),
        )
    };
    let server_error = |code: String| {
        Failure::new(
            FailureKind::ServerError,
            format!(
                "the central API at {} failed ({code}{said}); the fault is on its side: try again later",
                engine.url
            ),
        )
    };
    let key_refused = |code: String| {
        if lower.contains("expire") {
            Failure::new(
                FailureKind::ExpiredKey,
                format!(
                    "the enrollment key has expired (central API: {code}{said}); create a new key in the CrowdSec console (app.crowdsec.net) and enroll again"
                ),
            )
        } else {
            Failure::new(
                FailureKind::InvalidKey,
                format!(
                    "the central API refused the enrollment key as invalid ({code}{said}); copy the enrollment key again from the CrowdSec console (app.crowdsec.net)"
                ),
            )
        }
    };
    let http = |c: u16| format!("HTTP {c}: ");
    // The HTTP statuses from the debug lines are the surest guide.
    match (r.login_status, r.enroll_status) {
        (Some(c @ (401 | 403)), _) => return Err(unauthorized(http(c))),
        (Some(c), _) if c >= 500 || c == 429 => return Err(server_error(http(c))),
        (_, Some(c)) if c >= 500 || c == 429 => return Err(server_error(http(c))),
        (_, Some(c @ 400..=499)) => return Err(key_refused(http(c))),
        _ => {}
    }
    // Otherwise, the words.
    const NETWORK: &[&str] = &[
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "no route to host",
        "connection reset",
        "client.timeout",
        "could not get jwt token",
        "tls:",
        "x509:",
        "eof",
    ];
    if NETWORK.iter().any(|w| lower.contains(w)) {
        let cause = fatal
            .rsplit(": ")
            .next()
            .map(bounded)
            .unwrap_or_else(|| bounded(&fatal));
        return Err(Failure::new(
            FailureKind::Unreachable,
            format!(
                "the central API at {} is unreachable ({cause}); outbound TCP to {} must be open (firewall, proxy, DNS)",
                engine.url, engine.hostport
            ),
        ));
    }
    const ENGINE: &[&str] = &[
        "no configuration for central api",
        "cscli capi register",
        "unable to load",
        "local api is disabled",
        "failed to get scenarios",
        "failed to load hub index",
        "trailing slash",
        "could not parse capi url",
        "missing 'cscli' configuration",
        "failed writing console config",
        "while loading",
        "no such file or directory",
        "permission denied",
    ];
    if ENGINE.iter().any(|w| lower.contains(w)) {
        return Err(Failure::new(
            FailureKind::EngineConfig,
            format!(
                "cscli cannot use the engine's setup: {}; fix the engine config {} (or the files it names)",
                bounded(&fatal),
                engine.config.display()
            ),
        ));
    }
    if lower.contains("api error:") {
        if lower.contains("internal server error") || lower.contains("http code 5") {
            return Err(server_error(String::new()));
        }
        if lower.contains("username or password") || lower.contains("unauthorized") {
            return Err(unauthorized(String::new()));
        }
        return Err(key_refused(String::new()));
    }
    Err(Failure::new(
        FailureKind::Other,
        format!("cscli console enroll failed: {}", bounded(&fatal)),
    ))
}
