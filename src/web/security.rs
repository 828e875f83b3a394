//! The console's guards: sessions (an opaque cookie, idle and absolute expiry), the CSRF
//! token of each session, the Host/Origin check against DNS rebinding and cross-site
//! requests, and the headers every answer carries (a strict Content-Security-Policy).
//!
//! The admin token itself is only ever read from the sign-in form and compared by
//! [`crate::admin::Admin::token_matches`]; it is never stored in a session, a page or a
//! log line.

use hyper::header::HeaderValue;
use hyper::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the session cookie.
pub const COOKIE: &str = "cerberus_session";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(3600);
/// A session ends this long after sign-in, used or not.
pub const ABSOLUTE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 64;

/// Every answer's Content-Security-Policy: nothing but the daemon itself, no inline
/// script or style.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

pub fn random_hex() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone)]
pub struct Session {
    pub csrf: String,
    created: Instant,
    used: Instant,
    pub flash: Option<super::html::Flash>,
}

/// The signed-in sessions, in memory (a restart signs everyone out).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session: its id (the cookie value) and CSRF token.
    pub fn create(&self) -> (String, String) {
        let id = random_hex();
        let csrf = random_hex();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| live(s, now));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                created: now,
                used: now,
                flash: None,
            },
        );
        (id, csrf)
    }

    /// The live session of `id`, marked used, with its flash message taken out.
    pub fn touch(&self, id: &str) -> Option<Session> {
        self.touch_at(id, Instant::now())
    }

    fn touch_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(id)?;
        if !live(s, now) {
            map.remove(id);
            return None;
        }
        s.used = now;
        let out = s.clone();
        s.flash = None;
        Some(out)
    }

    /// Keeps a message for the next page of session `id`.
    pub fn flash(&self, id: &str, ok: bool, text: impl Into<String>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get_mut(id) {
            s.flash = Some(super::html::Flash {
                ok,
                text: text.into(),
            });
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.used) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` of a session (`None`: the one that ends it).
pub fn set_cookie(id: Option<&str>, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            ABSOLUTE.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&v).expect("cookie header")
}

/// Whether `host` (a `Host` header or an origin's authority) names this listener: the
/// listener's port, and a host that is an IP literal or `localhost`. A DNS name other
/// than localhost is what a rebinding attack sends, so it is refused.
pub fn host_ok(host: &str, port: u16) -> bool {
    let (name, p) = match host.rsplit_once(':') {
        Some((n, _)) if !n.ends_with(']') && n.contains(':') => (host, None), // bare IPv6
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let p: u16 = match p {
        Some(p) => match p.parse() {
            Ok(p) => p,
            Err(_) => return false,
        },
        None => 80,
    };
    if p != port {
        return false;
    }
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Why a request is refused before any page runs: the Host is not this listener, the
/// Origin is another site, or the browser says the request comes from another site.
pub fn foreign(headers: &HeaderMap, port: Option<u16>) -> Option<String> {
    let host = headers
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(port) = port {
        if !host_ok(host, port) {
            return Some(format!(
                "the Host header {host:?} does not name this listener (open the console as http://127.0.0.1:{port}/ or http://localhost:{port}/)"
            ));
        }
    }
    if let Some(origin) = headers.get(hyper::header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if authority != Some(host) {
            return Some(format!(
                "the request comes from another origin ({origin:?}); the console only answers its own pages"
            ));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return Some(format!(
                "the browser says this request comes from another site (Sec-Fetch-Site: {site})"
            ));
        }
    }
    None
}

/// The headers every console answer carries.
pub fn harden(headers: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(headers, "content-security-policy", CSP);
    set(headers, "x-content-type-options", "nosniff");
    set(headers, "x-frame-options", "DENY");
    // Not `no-referrer`: with it Chromium sends `Origin: null` on form posts.
    set(headers, "referrer-policy", "same-origin");
    set(headers, "cross-origin-opener-policy", "same-origin");
    set(headers, "cross-origin-resource-policy", "same-origin");
    if !headers.contains_key(hyper::header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_the_listener_only() {
        assert!(host_ok("127.0.0.1:8088", 8088));
        assert!(host_ok("localhost:8088", 8088));
        assert!(host_ok("[::1]:8088", 8088));
        assert!(host_ok("10.0.0.5:8088", 8088));
        assert!(!host_ok("127.0.0.1:8089", 8088));
        assert!(!host_ok("evil.example:8088", 8088));
        assert!(!host_ok("127.0.0.1.nip.io:8088", 8088));
        assert!(!host_ok("", 8088));
        assert!(host_ok("localhost", 80));
    }

    #[test]
    fn foreign_origins_refused() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("127.0.0.1:9000"));
        assert_eq!(foreign(&h, Some(9000)), None);
        h.insert("origin", HeaderValue::from_static("http://127.0.0.1:9000"));
        assert_eq!(foreign(&h, Some(9000)), None);
        h.insert("origin", HeaderValue::from_static("http://evil.example"));
        assert!(foreign(&h, Some(9000)).unwrap().contains("another origin"));
        h.remove("origin");
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(foreign(&h, Some(9000)).unwrap().contains("another site"));
        h.insert("host", HeaderValue::from_static("rebind.example:9000"));
        assert!(foreign(&h, Some(9000)).unwrap().contains("Host header"));
    }

    #[test]
    fn sessions_expire_when_idle() {
        let s = Sessions::default();
        let (id, csrf) = s.create();
        assert_eq!(s.touch(&id).unwrap().csrf, csrf);
        let later = Instant::now() + IDLE + Duration::from_secs(1);
        assert!(s.touch_at(&id, later).is_none());
        assert!(s.touch(&id).is_none(), "an expired session is gone");
        assert!(s.touch("nope").is_none());
    }

    #[test]
    fn flash_is_shown_once() {
        let s = Sessions::default();
        let (id, _) = s.create();
        s.flash(&id, true, "done");
        assert_eq!(s.touch(&id).unwrap().flash.unwrap().text, "done");
        assert!(s.touch(&id).unwrap().flash.is_none());
    }

    #[test]
    fn cookies_are_http_only_and_strict() {
        let v = set_cookie(Some("abc"), false);
        let v = v.to_str().unwrap();
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Strict") && !v.contains("Secure"));
        assert!(set_cookie(Some("abc"), true)
            .to_str()
            .unwrap()
            .contains("; Secure"));
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("a=1; cerberus_session=xyz"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
    }
}
