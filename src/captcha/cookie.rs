//! The clearance cookie: `cerberus_captcha=EXPIRY.MAC`, where MAC is base64url of
//! HMAC-SHA256 over the client IP and the expiry (unix seconds) with the signing key.
//! A cookie for another IP, past its expiry, or with a wrong MAC is no clearance.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use std::net::IpAddr;

/// The cookie's name.
pub const COOKIE_NAME: &str = "cerberus_captcha";

/// Signs and checks clearance cookies with one key.
pub struct Signer {
    key: hmac::Key,
}

fn message(ip: IpAddr, expires: u64) -> String {
    format!(
        "cerberus-captcha-v1|{}|{expires}",
        crate::decision::normalize_ip(ip)
    )
}

impl Signer {
    pub fn new(secret: &[u8]) -> Signer {
        Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The cookie value that clears `ip` until `expires`.
    pub fn value(&self, ip: IpAddr, expires: u64) -> String {
        let tag = hmac::sign(&self.key, message(ip, expires).as_bytes());
        format!("{expires}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// True when `value` clears `ip` at `now` (the MAC compared in constant time).
    pub fn check(&self, value: &str, ip: IpAddr, now: u64) -> bool {
        let Some((expires, mac)) = value.split_once('.') else {
            return false;
        };
        let Ok(expires) = expires.parse::<u64>() else {
            return false;
        };
        if expires <= now {
            return false;
        }
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        hmac::verify(&self.key, message(ip, expires).as_bytes(), &mac).is_ok()
    }

    /// The `Set-Cookie` header value for a clearance until `expires`.
    pub fn set_cookie(&self, ip: IpAddr, expires: u64, max_age: u64, secure: bool) -> String {
        format!(
            "{COOKIE_NAME}={}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            self.value(ip, expires),
            if secure { "; Secure" } else { "" }
        )
    }
}

/// Our cookie's value in a `Cookie` header (`a=1; cerberus_captcha=...`), if there.
pub fn from_header(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE_NAME).then_some(value.trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_cookie_clears_its_own_ip_until_it_expires() {
        let s = Signer::new(&[7; 32]);
        let v = s.value(ip("192.0.2.1"), 1000);
        assert!(s.check(&v, ip("192.0.2.1"), 999));
        assert!(
            s.check(&v, ip("::ffff:192.0.2.1"), 999),
            "mapped IPv4 is the same IP"
        );
        assert!(!s.check(&v, ip("192.0.2.1"), 1000), "expired");
        assert!(!s.check(&v, ip("192.0.2.2"), 999), "another IP");
    }

    #[test]
    fn forged_cookies_are_refused() {
        let s = Signer::new(&[7; 32]);
        let v = s.value(ip("192.0.2.1"), 1000);
        let other = Signer::new(&[8; 32]).value(ip("192.0.2.1"), 1000);
        assert!(
            !s.check(&other, ip("192.0.2.1"), 1),
            "signed with another key"
        );
        let (_, mac) = v.split_once('.').unwrap();
        assert!(
            !s.check(&format!("2000.{mac}"), ip("192.0.2.1"), 1),
            "expiry moved"
        );
        for bad in ["", "1000", "1000.", "x.y", "1000.!!!", "-1.abc"] {
            assert!(!s.check(bad, ip("192.0.2.1"), 1), "{bad:?}");
        }
    }

    #[test]
    fn set_cookie_attributes_and_header_parsing() {
        let s = Signer::new(&[7; 32]);
        let plain = s.set_cookie(ip("192.0.2.1"), 1000, 60, false);
        assert!(plain.starts_with("cerberus_captcha=1000."));
        assert!(plain.contains("; HttpOnly; SameSite=Lax") && !plain.contains("Secure"));
        assert!(s
            .set_cookie(ip("192.0.2.1"), 1000, 60, true)
            .ends_with("; Secure"));
        assert_eq!(
            from_header("a=1; cerberus_captcha=5.xyz; b=2"),
            Some("5.xyz")
        );
        assert_eq!(from_header("a=1; cerberus_captchax=5"), None);
    }
}
