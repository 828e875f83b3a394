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
                    format!("{v:?}: expected open (serve when AppSec cannot answer) or closed (refuse)"),
                ),
            }
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
