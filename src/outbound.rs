//! One classification of a failed outbound call to the central API (connection refused,
//! timeout, DNS, a proxy that fails, TLS), each with its fix: the console heartbeat,
//! `/diagnostics/connectivity`, `cerberus diagnose` and `/status` all name failures with it.

use serde::{Deserialize, Serialize};

/// What went wrong on the way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The proxy from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` did not get us through.
    Proxy,
    /// The name does not resolve.
    Dns,
    /// Nothing answered in time (a firewall that drops packets, or a silent server).
    Timeout,
    /// The TLS handshake or the certificate failed.
    Tls,
    /// The connection was refused, reset, or had no route.
    Refused,
}

impl Cause {
    pub fn code(self) -> &'static str {
        match self {
            Cause::Proxy => "proxy",
            Cause::Dns => "dns",
            Cause::Timeout => "timeout",
            Cause::Tls => "tls",
            Cause::Refused => "refused",
        }
    }
}

/// A failed outbound call, classified: what failed and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreachable {
    pub cause: Cause,
    /// The URL that was asked for.
    pub url: String,
    /// What the client said (`connection refused`, `no answer within 5s`, ...).
    pub error: String,
    /// `host:port` of the proxy, when one was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
    /// The variable that named the proxy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_env: Option<String>,
    pub fix: String,
}

impl Unreachable {
    /// One sentence for logs and the heartbeat: what failed, why, and the fix.
    pub fn message(&self) -> String {
        match (&self.proxy, &self.proxy_env) {
            (Some(p), Some(var)) => format!(
                "the central API at {} is unreachable through the proxy {p} (from {var}): {}; {}",
                self.url, self.error, self.fix
            ),
            _ => format!(
                "the central API at {} is unreachable ({}); {}",
                self.url, self.error, self.fix
            ),
        }
    }
}

/// `host:port` of a URL (the scheme's port when none is given), or the URL itself.
pub fn host_port(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
        .unwrap_or_else(|| url.to_string())
}

/// The proxy that a request to `url` goes through, from `HTTPS_PROXY`/`HTTP_PROXY` (or
/// their lower-case forms, then `ALL_PROXY`) unless `NO_PROXY` names its host, as reqwest
/// picks it: `(variable, proxy)`.
pub fn proxy_for(url: &str, env: impl Fn(&str) -> Option<String>) -> Option<(String, String)> {
    let https = url.starts_with("https://");
    let host = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split(['/', '?'])
        .next()
        .unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let get = |k: &str| {
        env(k)
            .or_else(|| env(&k.to_ascii_lowercase()))
            .filter(|v| !v.trim().is_empty())
    };
    if let Some(no) = get("NO_PROXY") {
        let hit = no.split(',').map(str::trim).any(|n| {
            n == "*" || {
                let n = n.trim_start_matches('.');
                !n.is_empty() && (host == n || host.ends_with(&format!(".{n}")))
            }
        });
        if hit {
            return None;
        }
    }
    let var = if https { "HTTPS_PROXY" } else { "HTTP_PROXY" };
    get(var)
        .map(|p| (var.to_string(), p))
        .or_else(|| get("ALL_PROXY").map(|p| ("ALL_PROXY".to_string(), p)))
}

/// Classifies a failed call to `url`. `why` is the client's root cause, `timed_out`
/// whether it gave up waiting, `url_from` where the operator sets the URL (named in the
/// DNS fix), `env` the process environment (a parameter so tests can give their own).
pub fn classify(
    url: &str,
    why: &str,
    timed_out: bool,
    url_from: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Unreachable {
    let hostport = host_port(url);
    let lower = why.to_ascii_lowercase();
    let mut out = Unreachable {
        cause: Cause::Refused,
        url: url.to_string(),
        error: why.to_string(),
        proxy: None,
        proxy_env: None,
        fix: String::new(),
    };
    if let Some((var, proxy)) = proxy_for(url, env) {
        let proxy_hp = host_port(&proxy);
        out.cause = Cause::Proxy;
        out.fix = format!(
            "check that the proxy {proxy_hp} runs and lets CONNECT to {hostport} through, \
             or fix {var} (or add the host to NO_PROXY)"
        );
        out.proxy = Some(proxy_hp);
        out.proxy_env = Some(var);
        return out;
    }
    let host = hostport
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(&hostport);
    if [
        "dns",
        "lookup",
        "name or service not known",
        "no such host",
        "name resolution",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        out.cause = Cause::Dns;
        out.fix = format!(
            "the name {host} does not resolve: check the DNS resolver (/etc/resolv.conf) and {url_from}"
        );
    } else if timed_out || lower.contains("timed out") || lower.contains("timeout") {
        out.cause = Cause::Timeout;
        out.fix = format!(
            "outbound TCP to {hostport} must be open (a firewall that drops packets looks like this)"
        );
    } else if ["certificate", "tls", "ssl", "handshake", "x509"]
        .iter()
        .any(|w| lower.contains(w))
    {
        out.cause = Cause::Tls;
        out.fix = format!(
            "the TLS connection to {hostport} failed: check the system clock and CA certificates \
             (ca-certificates), and whether something on the way intercepts HTTPS"
        );
    } else {
        out.fix = format!("outbound TCP to {hostport} must be open");
    }
    out
}

/// [`classify`] for a reqwest error, with this process's environment.
pub fn of_reqwest(
    url: &str,
    e: &reqwest::Error,
    timeout: std::time::Duration,
    url_from: &str,
) -> Unreachable {
    let why = if e.is_timeout() {
        format!("no answer within {}s", timeout.as_secs())
    } else {
        crate::lapi::root_cause(e)
    };
    classify(url, &why, e.is_timeout(), url_from, |k| {
        std::env::var(k).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    const URL: &str = "https://api.crowdsec.net/";

    #[test]
    fn each_cause_is_named_with_its_fix() {
        let u = classify(URL, "connection refused", false, "capi_url", env(&[]));
        assert_eq!(u.cause, Cause::Refused);
        assert!(u
            .fix
            .contains("outbound TCP to api.crowdsec.net:443 must be open"));
        let u = classify(URL, "no answer within 5s", true, "capi_url", env(&[]));
        assert_eq!(u.cause, Cause::Timeout);
        assert!(u.fix.contains("drops packets"), "{u:?}");
        let u = classify(
            URL,
            "failed to lookup address information: Name or service not known",
            false,
            "capi_url",
            env(&[]),
        );
        assert_eq!(u.cause, Cause::Dns);
        assert!(u.fix.contains("api.crowdsec.net does not resolve") && u.fix.contains("capi_url"));
        let u = classify(
            URL,
            "invalid peer certificate: UnknownIssuer",
            false,
            "x",
            env(&[]),
        );
        assert_eq!(u.cause, Cause::Tls);
        assert!(u.fix.contains("CA certificates"), "{u:?}");
    }

    #[test]
    fn a_failing_proxy_is_named_not_the_central_api() {
        let u = classify(
            URL,
            "connection refused",
            false,
            "x",
            env(&[("HTTPS_PROXY", "http://127.0.0.1:3128")]),
        );
        assert_eq!(u.cause, Cause::Proxy);
        assert_eq!(u.proxy.as_deref(), Some("127.0.0.1:3128"));
        assert_eq!(u.proxy_env.as_deref(), Some("HTTPS_PROXY"));
        assert!(u.fix.contains("proxy 127.0.0.1:3128"), "{u:?}");
        assert!(u
            .message()
            .contains("through the proxy 127.0.0.1:3128 (from HTTPS_PROXY)"));
        // NO_PROXY covers the host: the proxy is not used, so not blamed.
        let u = classify(
            URL,
            "connection refused",
            false,
            "x",
            env(&[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", ".crowdsec.net")]),
        );
        assert_eq!(u.cause, Cause::Refused);
        // HTTP_PROXY is for http:// only; ALL_PROXY for both.
        assert!(proxy_for(URL, env(&[("HTTP_PROXY", "http://p:1")])).is_none());
        assert!(proxy_for("http://127.0.0.1:9/", env(&[("http_proxy", "http://p:1")])).is_some());
        assert_eq!(
            proxy_for(URL, env(&[("ALL_PROXY", "http://p:1")])).map(|p| p.0),
            Some("ALL_PROXY".into())
        );
    }
}
