//! The captcha keys (`captcha_*`, DESIGN.md "Captcha"): read and checked here, used by
//! [`crate::captcha`]. With no `captcha_provider` captcha is off and a `captcha`
//! decision is answered as a ban.

use super::reader::Reader;
use super::Config;
use std::path::PathBuf;
use std::time::Duration;

/// The shortest `captcha_signing_key` accepted, in bytes.
pub const MIN_SIGNING_KEY_LEN: usize = 32;

/// The captcha services cerberus can show (their facts: `crate::captcha::provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Turnstile,
    Hcaptcha,
    Recaptcha,
}

impl Provider {
    pub const ALL: [Provider; 3] = [Provider::Turnstile, Provider::Hcaptcha, Provider::Recaptcha];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Turnstile => "turnstile",
            Provider::Hcaptcha => "hcaptcha",
            Provider::Recaptcha => "recaptcha",
        }
    }
}

/// The captcha settings; `provider: None` is captcha off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptchaConfig {
    pub provider: Option<Provider>,
    pub site_key: String,
    pub secret_key: String,
    /// `None`: generated into `{data_dir}/captcha_signing_key` (0600) at start.
    pub signing_key: Option<String>,
    /// How long a solved captcha lets the IP through. Default 1h.
    pub expiration: Duration,
    /// An HTML file with `{{captcha_form}}` in it; `None`: the built-in page.
    pub template: Option<PathBuf>,
    /// The widget script; `None`: the provider's own.
    pub script_url: Option<String>,
    /// The siteverify endpoint; `None`: the provider's own.
    pub verify_url: Option<String>,
}

impl Default for CaptchaConfig {
    fn default() -> Self {
        CaptchaConfig {
            provider: None,
            site_key: String::new(),
            secret_key: String::new(),
            signing_key: None,
            expiration: Duration::from_secs(3600),
            template: None,
            script_url: None,
            verify_url: None,
        }
    }
}

/// The keys this file reads (also listed in `KEYS` of `config.rs`).
const CAPTCHA_KEYS: &[&str] = &[
    "captcha_provider",
    "captcha_site_key",
    "captcha_secret_key",
    "captcha_secret_key_file",
    "captcha_signing_key",
    "captcha_signing_key_file",
    "captcha_expiration",
    "captcha_template",
    "captcha_script_url",
    "captcha_verify_url",
];

fn http_url(url: &str) -> bool {
    match url.split_once("://") {
        Some(("http" | "https", rest)) => !rest.is_empty() && !rest.starts_with('/'),
        _ => false,
    }
}

impl Reader {
    /// Reads the `captcha_*` keys into `c.captcha`, naming every bad one.
    pub(super) fn captcha(&mut self, c: &mut Config) {
        let cc = &mut c.captcha;
        let provider = self.string("captcha_provider");
        if let Some(name) = &provider {
            match Provider::ALL
                .into_iter()
                .find(|p| p.name() == name.trim().to_ascii_lowercase())
            {
                Some(p) => cc.provider = Some(p),
                None => self.problem(
                    "captcha_provider",
                    format!("{name:?} is not one of turnstile, hcaptcha, recaptcha"),
                ),
            }
        }
        cc.site_key = self.string("captcha_site_key").unwrap_or_default();
        cc.secret_key = self.secret("captcha_secret_key").unwrap_or_default();
        cc.signing_key = self.secret("captcha_signing_key");
        if let Some(d) = self.duration("captcha_expiration") {
            cc.expiration = d;
        }
        cc.template = self.path("captcha_template");
        cc.script_url = self.string("captcha_script_url");
        cc.verify_url = self.string("captcha_verify_url");
        let cc = c.captcha.clone();
        if let Some(key) = &cc.signing_key {
            if key.len() < MIN_SIGNING_KEY_LEN {
                self.problem(
                    "captcha_signing_key",
                    format!(
                        "is {} bytes, it must be at least {MIN_SIGNING_KEY_LEN} (make one with \
                         `openssl rand -hex 32`, or leave it unset to have one generated)",
                        key.len()
                    ),
                );
            }
        }
        for (key, url) in [
            ("captcha_script_url", &cc.script_url),
            ("captcha_verify_url", &cc.verify_url),
        ] {
            if let Some(u) = url {
                if !http_url(u) {
                    self.problem(key, format!("{u:?} is not an http:// or https:// URL"));
                }
            }
        }
        if let Some(path) = &cc.template {
            match std::fs::read_to_string(path) {
                Ok(text) if !text.contains("{{captcha_form}}") => self.problem(
                    "captcha_template",
                    format!(
                        "{} has no {{{{captcha_form}}}} (where the widget and its form go)",
                        path.display()
                    ),
                ),
                Ok(_) => {}
                Err(e) => self.problem(
                    "captcha_template",
                    format!("cannot read {}: {e}", path.display()),
                ),
            }
        }
        let any_set = CAPTCHA_KEYS.iter().any(|k| self.raw(k).is_some());
        if cc.provider.is_none() {
            if provider.is_none() && any_set {
                self.problem(
                    "captcha_provider",
                    "captcha keys are set but captcha_provider is not (turnstile, hcaptcha or \
                     recaptcha)",
                );
            }
            return;
        }
        if cc.site_key.is_empty() {
            self.problem(
                "captcha_site_key",
                "missing: the provider's site key (public, shown in the page)",
            );
        }
        if cc.secret_key.is_empty()
            && !self
                .problems
                .iter()
                .any(|p| p.key.starts_with("captcha_secret_key"))
        {
            self.problem(
                "captcha_secret_key",
                "missing: the provider's secret key (or captcha_secret_key_file)",
            );
        }
    }
}
