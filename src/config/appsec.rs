//! The AppSec keys (`appsec_url`, `appsec_timeout`, `appsec_fail`, `appsec_max_body`):
//! read and checked here, used by [`crate::appsec`].

use super::reader::{parse_size, Reader};
use super::Config;
use std::time::Duration;

/// What happens to a request when AppSec cannot give a verdict (401, 5xx, timeout,
/// unreachable) or its body is over `appsec_max_body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppsecFail {
    /// Serve the request as if AppSec had allowed it (default).
    Open,
    /// Refuse it (403).
    Closed,
}

/// How cerberus calls CrowdSec's AppSec component.
#[derive(Debug, Clone)]
pub struct AppsecConfig {
    /// `http://127.0.0.1:7422/` (CrowdSec's default listener); `None` (default) turns
    /// AppSec off.
    pub url: Option<String>,
    /// Whole call, body included. Default 200ms.
    pub timeout: Duration,
    /// Default [`AppsecFail::Open`].
    pub fail: AppsecFail,
    /// Largest body sent; longer ones are cut there (or refused with `closed`).
    /// Default 1 MiB.
    pub max_body: u64,
}

impl Default for AppsecConfig {
    fn default() -> Self {
        AppsecConfig {
            url: None,
            timeout: Duration::from_millis(200),
            fail: AppsecFail::Open,
            max_body: 1 << 20,
        }
    }
}

/// The longest `appsec_timeout` accepted: AppSec sits in front of every request.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest `appsec_max_body` accepted (a socket frame must hold it).
pub const MAX_BODY_LIMIT: u64 = 16 << 20;

impl Reader {
    /// Reads the AppSec keys into `c.appsec`; each bad one is named.
    pub(super) fn appsec(&mut self, c: &mut Config) {
        if let Some(url) = self.string("appsec_url") {
            match url.split_once("://") {
                Some(("http" | "https", rest)) if !rest.is_empty() && !rest.starts_with('/') => {
                    c.appsec.url = Some(url)
                }
                _ => self.problem(
                    "appsec_url",
                    format!(
                        "{url:?} is not an http:// or https:// URL (CrowdSec's AppSec \
                         component listens on http://127.0.0.1:7422/ by default)"
                    ),
                ),
            }
        }
        if let Some(d) = self.duration("appsec_timeout") {
            if d > MAX_TIMEOUT {
                self.problem("appsec_timeout", "must be at most 30s (200ms is usual)");
            } else {
                c.appsec.timeout = d;
            }
        }
        if let Some(v) = self.string("appsec_fail") {
            match v.trim().to_ascii_lowercase().as_str() {
                "open" => c.appsec.fail = AppsecFail::Open,
                "closed" => c.appsec.fail = AppsecFail::Closed,
                _ => self.problem(
                    "appsec_fail",
                    format!(
                        "{v:?}: expected open (serve when AppSec cannot answer) or closed (refuse)"
                    ),
                ),
            }
        }
        if c.appsec.url.is_some() && c.api_key.is_none() && !c.engine.enabled {
            self.problem(
                "appsec_url",
                "AppSec authenticates with a bouncer key of its LAPI: set api_key (or \
                 api_key_file), or run the managed engine (engine.enabled), whose key is used",
            );
        }
        if let Some(s) = self.string("appsec_max_body") {
            match parse_size(&s) {
                Some(n) if n <= MAX_BODY_LIMIT => c.appsec.max_body = n,
                Some(_) => self.problem("appsec_max_body", "must be at most 16MiB"),
                None => self.problem(
                    "appsec_max_body",
                    format!("{s:?} is not a size like 1MiB or 65536 (0 sends no body)"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_yaml, Problem};
    use super::*;

    fn load(yaml: &str) -> Result<Config, Vec<Problem>> {
        Reader::new(parse_yaml(yaml).unwrap()).finish(&[])
    }

    #[test]
    fn off_by_default_and_read_when_set() {
        let c = load("").unwrap();
        assert!(c.appsec.url.is_none());
        assert_eq!(c.appsec.timeout, Duration::from_millis(200));
        assert_eq!(c.appsec.fail, AppsecFail::Open);
        assert_eq!(c.appsec.max_body, 1 << 20);
        let c = load(
            "api_url: http://127.0.0.1:8080\napi_key: k\nappsec_url: http://127.0.0.1:7422/\n\
             appsec_timeout: 1s\nappsec_fail: closed\nappsec_max_body: 64KiB\n",
        )
        .unwrap();
        assert_eq!(c.appsec.url.as_deref(), Some("http://127.0.0.1:7422/"));
        assert_eq!(c.appsec.timeout, Duration::from_secs(1));
        assert_eq!(c.appsec.fail, AppsecFail::Closed);
        assert_eq!(c.appsec.max_body, 64 << 10);
    }

    #[test]
    fn every_bad_key_is_named() {
        let problems = load(
            "appsec_url: 127.0.0.1:7422\nappsec_timeout: 2m\nappsec_fail: maybe\n\
             appsec_max_body: lots\n",
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "appsec_url",
            "appsec_timeout",
            "appsec_fail",
            "appsec_max_body",
        ] {
            assert!(keys.contains(&key), "{key} not named in {problems:?}");
        }
        let p = load("appsec_url: http://127.0.0.1:7422/\n").unwrap_err();
        assert!(
            p.iter()
                .any(|p| p.key == "appsec_url" && p.message.contains("api_key")),
            "no bouncer key: {p:?}"
        );
        let p = load("appsec_max_body: 17MiB\n").unwrap_err();
        assert!(p.iter().any(|p| p.key == "appsec_max_body"), "{p:?}");
    }
}
