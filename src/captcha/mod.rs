//! Captcha remediation (DESIGN.md "Captcha"): one flow used by both doors (forward_auth
//! and the module's socket frames), so both answer alike.
//!
//! For a client whose verdict is `captcha`: a valid clearance cookie (see [`cookie`])
//! passes; otherwise GET and HEAD get the challenge page ([`page`]) and every other
//! method 403. The page's form comes back as a GET to the URL asked for, carrying
//! [`page::RETURN_PARAM`] (that URL) and the provider's token field; the token is checked
//! with the provider's siteverify ([`verify`]), and a solve is answered with a 303 back
//! to that URL and the cookie. A rejected token gets the page again; a provider that
//! gives no usable answer (or too many solves at once) gets 403.

pub mod cookie;
pub mod page;
pub mod provider;
pub mod verify;

use crate::config::{CaptchaProvider, Config, MIN_SIGNING_KEY_LEN};
use crate::metrics as names;
use anyhow::{bail, Context};
use std::net::IpAddr;
use std::path::Path;
use verify::{Outcome, Verifier};

/// Status of the challenge page. Not 2xx: Caddy's forward_auth takes any 2xx answer as
/// "let it through" and passes every other answer to the client as it is.
pub const CHALLENGE_STATUS: u16 = 403;

/// One request of a client whose verdict is captcha.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub ip: IpAddr,
    pub method: &'a str,
    /// Path and query, as the client asked.
    pub uri: &'a str,
    /// The client's request came over https (the cookie gets `Secure`).
    pub https: bool,
    /// Our cookie's value, if the request had one.
    pub cookie: Option<&'a str>,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A valid clearance: serve the request.
    Pass,
    /// The challenge page ([`CHALLENGE_STATUS`]) with its CSP.
    Challenge { page: String, csp: String },
    /// Solved: 303 to `location` with `set_cookie`.
    Solved {
        location: String,
        set_cookie: String,
    },
    /// 403, for the reason named (method, unreachable, busy).
    Refuse(&'static str),
}

/// An answer to write: status, headers, body.
pub struct Written {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Reply {
    /// What both doors write for a challenge or a solve (`None` for pass and refuse,
    /// which each door answers its own way).
    pub fn written(self) -> Option<Written> {
        let mut headers = vec![
            ("cache-control", "no-store".to_string()),
            ("x-cerberus-remediation", "captcha".to_string()),
        ];
        match self {
            Reply::Pass | Reply::Refuse(_) => None,
            Reply::Challenge { page, csp } => {
                headers.push(("content-type", "text/html; charset=utf-8".into()));
                headers.push(("content-security-policy", csp));
                Some(Written {
                    status: CHALLENGE_STATUS,
                    headers,
                    body: page,
                })
            }
            Reply::Solved {
                location,
                set_cookie,
            } => {
                headers.push(("location", location));
                headers.push(("set-cookie", set_cookie));
                Some(Written {
                    status: 303,
                    headers,
                    body: String::new(),
                })
            }
        }
    }
}

/// The captcha settings ready to use.
pub struct Captcha {
    provider: CaptchaProvider,
    facts: provider::Facts,
    site_key: String,
    script_url: String,
    template: String,
    signer: cookie::Signer,
    expiration: u64,
    verifier: Verifier,
}

/// The name of the generated signing key in `data_dir`.
pub const SIGNING_KEY_FILE: &str = "captcha_signing_key";

/// The signing key: `captcha_signing_key` when set, else the one in `data_dir`, made
/// (32 random bytes, hex, mode 0600) when missing.
fn signing_key(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(k) = &config.captcha.signing_key {
        return Ok(k.as_bytes().to_vec());
    }
    let path = config.data_dir.join(SIGNING_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().as_bytes().to_vec();
            if key.len() < MIN_SIGNING_KEY_LEN {
                bail!(
                    "{}: the captcha signing key is {} bytes, at least {MIN_SIGNING_KEY_LEN} \
                     are needed (remove the file to have a new one made)",
                    path.display(),
                    key.len()
                );
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hex: String = rand::random::<[u8; 32]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            crate::secure_file::write(&path, hex.as_bytes(), 0o600).with_context(|| {
                format!("{}: cannot write the captcha signing key", path.display())
            })?;
            Ok(hex.into_bytes())
        }
        Err(e) => Err(e).with_context(|| format!("{}: cannot read it", path.display())),
    }
}

fn read_template(path: Option<&Path>) -> anyhow::Result<String> {
    match path {
        None => Ok(page::BUILTIN_PAGE.to_string()),
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("captcha_template {}: cannot read it", p.display())),
    }
}

impl Captcha {
    /// `None` when captcha is off (no `captcha_provider`).
    pub fn new(config: &Config) -> anyhow::Result<Option<Captcha>> {
        let c = &config.captcha;
        let Some(p) = c.provider else {
            return Ok(None);
        };
        let facts = provider::facts(p);
        let verify_url = c.verify_url.clone().unwrap_or(facts.verify_url.into());
        Ok(Some(Captcha {
            provider: p,
            site_key: c.site_key.clone(),
            script_url: c.script_url.clone().unwrap_or(facts.script_url.into()),
            template: read_template(c.template.as_deref())?,
            signer: cookie::Signer::new(&signing_key(config)?),
            expiration: c.expiration.as_secs().max(1),
            verifier: Verifier::new(verify_url, c.secret_key.clone())?,
            facts,
        }))
    }

    pub fn provider(&self) -> CaptchaProvider {
        self.provider
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    fn challenge(&self, ask: &Ask<'_>) -> Reply {
        metrics::counter!(names::CAPTCHA_CHALLENGES).increment(1);
        let widget = page::Widget {
            facts: &self.facts,
            script_url: &self.script_url,
            site_key: &self.site_key,
        };
        let nonce = page::nonce();
        Reply::Challenge {
            page: widget.render(&self.template, &nonce, ask.ip, ask.uri),
            csp: widget.csp(&nonce),
        }
    }

    /// The answer for `ask` at `now` (unix seconds). A refusal or a challenge counts as
    /// dropped in the usage metrics (by `origin` and `scenario`); a pass or a solve
    /// does not (the lookup already counted the request as processed).
    pub async fn answer(
        &self,
        ask: &Ask<'_>,
        now: u64,
        usage: &crate::usage::Usage,
        origin: &str,
        scenario: &str,
    ) -> Reply {
        let reply = self.decide(ask, now).await;
        if matches!(reply, Reply::Challenge { .. } | Reply::Refuse(_)) {
            usage.add_dropped(origin, scenario, "captcha");
        }
        reply
    }

    async fn decide(&self, ask: &Ask<'_>, now: u64) -> Reply {
        if ask
            .cookie
            .is_some_and(|c| self.signer.check(c, ask.ip, now))
        {
            return Reply::Pass;
        }
        if !ask.method.eq_ignore_ascii_case("GET") && !ask.method.eq_ignore_ascii_case("HEAD") {
            metrics::counter!(names::CAPTCHA_REFUSED, "reason" => "method").increment(1);
            return Reply::Refuse("method");
        }
        let Some((back, token)) = self.solve_in(ask.uri) else {
            return self.challenge(ask);
        };
        if token.is_empty() {
            metrics::counter!(names::CAPTCHA_FAILED, "reason" => "rejected").increment(1);
            return self.challenge(ask);
        }
        match self.verifier.verify(&token, ask.ip).await {
            Outcome::Solved => {
                metrics::counter!(names::CAPTCHA_SOLVED).increment(1);
                let expires = now + self.expiration;
                Reply::Solved {
                    location: page::safe_return(&back).to_string(),
                    set_cookie: self
                        .signer
                        .set_cookie(ask.ip, expires, self.expiration, ask.https),
                }
            }
            Outcome::Rejected => {
                metrics::counter!(names::CAPTCHA_FAILED, "reason" => "rejected").increment(1);
                self.challenge(ask)
            }
            Outcome::Unreachable => {
                metrics::counter!(names::CAPTCHA_FAILED, "reason" => "unreachable").increment(1);
                Reply::Refuse("unreachable")
            }
            Outcome::Busy => {
                metrics::counter!(names::CAPTCHA_FAILED, "reason" => "busy").increment(1);
                Reply::Refuse("busy")
            }
        }
    }

    /// `(return URL, token)` when `uri` carries a solve (the page's form sent back).
    fn solve_in(&self, uri: &str) -> Option<(String, String)> {
        let query = uri.split_once('?')?.1;
        let (mut back, mut token) = (None, String::new());
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            if k == page::RETURN_PARAM {
                back = Some(v.into_owned());
            } else if k == self.facts.field {
                token = v.into_owned();
            }
        }
        back.map(|b| (b, token))
    }
}

/// True while the captcha flow runs: a `captcha` verdict (a decision's at the doors,
/// or AppSec's) is then counted as dropped by the flow when it challenges or refuses,
/// not where it was found (a solved captcha is processed, not dropped). Set once at
/// start.
static FLOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the deferred counting of captcha verdicts on (see [`FLOW`]).
pub fn set_flow(on: bool) {
    FLOW.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether a refusal with `remediation` is left for the flow to count as dropped.
pub fn counts(remediation: bouncer_api::Remediation) -> bool {
    remediation == bouncer_api::Remediation::Captcha
        && FLOW.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests;
