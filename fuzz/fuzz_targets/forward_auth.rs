//! The forward_auth door (`cerberus::serve::forward_auth::Door::handle`) on any set of
//! request headers and peer: the client-IP header walked right to left past the trusted
//! proxies, `Accept`, `X-Request-Id`, the ban page.
//!
//! Input: byte 0 picks the peer (none: a Unix socket; an IPv4, IPv6 or IPv4-mapped
//! address, trusted or not) and the door (default `X-Forwarded-For`, or `X-Real-IP` with
//! status 451); then one header per line, `f…` an `X-Forwarded-For` value, `a…` an
//! `Accept`, `i…` an `X-Request-Id`, `r…` an `X-Real-IP`, else `name:value`. Lines that
//! are not a valid header name and value are dropped, as hyper drops such requests
//! before any handler.
//!
//! Checked: nothing panics; every answer names its remediation in
//! `X-Cerberus-Remediation`; 400 exactly when no client address could be read; otherwise
//! the chosen address is the peer or outside the trusted proxies, and the answer is the
//! store's for that address (allow 200, ban the door's status, throttle 429); a JSON ban
//! body is JSON.
#![no_main]

use bytes::Bytes;
use cerberus::config::Config;
use cerberus::decision::{Decision, Target};
use cerberus::serve::forward_auth::{Door, REMEDIATION_HEADER};
use cerberus::serve::Readiness;
use cerberus::store::Decider;
use http_body_util::Full;
use hyper::body::Body;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

const TRUSTED: [&str; 4] = ["10.0.0.0/8", "192.0.2.0/24", "::1/128", "fd00::/8"];

/// The store's decisions: (type, target). Expiries are far ahead.
const DECISIONS: [(&str, &str); 5] = [
    ("ban", "203.0.113.0/24"),
    ("captcha", "198.51.100.7"),
    ("throttle", "2001:db8::/32"),
    ("mfa", "198.51.100.8"),
    ("ban", "10.1.2.3"),
];

const PEERS: [Option<&str>; 8] = [
    None,
    Some("10.0.0.1"),
    Some("192.0.2.9"),
    Some("203.0.113.5"),
    Some("::1"),
    Some("2001:db8::2"),
    Some("::ffff:10.0.0.2"),
    Some("198.51.100.1"),
];

struct Doors {
    decider: Arc<Decider>,
    xff: Door,
    real_ip: Door,
}

fn doors() -> &'static Doors {
    static DOORS: OnceLock<Doors> = OnceLock::new();
    DOORS.get_or_init(|| {
        let decider = Arc::new(Decider::new());
        let mut writer = decider.writer();
        for (i, (type_name, value)) in DECISIONS.iter().enumerate() {
            writer.insert(&Decision {
                id: i as i64 + 1,
                target: Target::parse(value).unwrap(),
                type_name: type_name.to_string(),
                origin: "cscli".into(),
                scenario: "fuzz <script>".into(),
                expires_at: u32::MAX,
            });
        }
        writer.publish();
        let trusted: Vec<_> = TRUSTED.iter().map(|n| n.parse().unwrap()).collect();
        let xff = Config {
            trusted_proxies: trusted.clone(),
            ..Config::default()
        };
        let real_ip = Config {
            trusted_proxies: trusted,
            client_ip_header: "X-Real-IP".into(),
            ban_status: 451,
            ..Config::default()
        };
        Doors {
            xff: Door::new(&xff, decider.clone(), Readiness::ready()).unwrap(),
            real_ip: Door::new(&real_ip, decider.clone(), Readiness::ready()).unwrap(),
            decider,
        }
    })
}

fn normalize(ip: IpAddr) -> IpAddr {
    cerberus::decision::normalize_ip(ip)
}

fn trusted(ip: IpAddr) -> bool {
    TRUSTED
        .iter()
        .any(|n| n.parse::<ipnet::IpNet>().unwrap().contains(&normalize(ip)))
}

fn body_bytes(mut body: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(&mut body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let peer: Option<IpAddr> = PEERS[usize::from(pick & 7)].map(|p| p.parse().unwrap());
    let doors = doors();
    let (door, ban_status) = if pick & 8 == 0 {
        (&doors.xff, StatusCode::FORBIDDEN)
    } else {
        (&doors.real_ip, StatusCode::from_u16(451).unwrap())
    };

    let mut req = Request::new(());
    for line in rest.split(|&b| b == b'\n') {
        let (name, value): (&[u8], &[u8]) = match line.split_first() {
            Some((b'f', v)) => (b"x-forwarded-for", v),
            Some((b'a', v)) => (b"accept", v),
            Some((b'i', v)) => (b"x-request-id", v),
            Some((b'r', v)) => (b"x-real-ip", v),
            _ => match line.iter().position(|&b| b == b':') {
                Some(at) => (&line[..at], &line[at + 1..]),
                None => continue,
            },
        };
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        req.headers_mut().append(name, value);
    }

    let chosen = door.client_ip(req.headers(), peer);
    let response = door.handle(&req, peer);
    let remediation = response
        .headers()
        .get(REMEDIATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .expect("every answer names its remediation");
    let status = response.status();
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body = body_bytes(response.into_body());

    let ip = match chosen {
        Err(_) => {
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert_eq!(remediation, "invalid");
            return;
        }
        Ok(ip) => ip,
    };
    assert_ne!(status, StatusCode::BAD_REQUEST, "{ip} was read, yet 400");
    assert_eq!(ip, normalize(ip), "the chosen address is normalised");
    if Some(ip) != peer.map(normalize) {
        assert!(!trusted(ip), "{ip} is a trusted proxy, yet chosen");
    }
    let now = cerberus::clock::now_secs();
    let snapshot = doors.decider.snapshot();
    let expected = snapshot
        .lookup(ip, now)
        .map_or("allow", |hit| hit.remediation().as_str());
    assert_eq!(remediation, expected, "{ip}");
    match expected {
        "allow" => assert_eq!(status, StatusCode::OK),
        "throttle" => assert_eq!(status, StatusCode::TOO_MANY_REQUESTS),
        "ban" => assert_eq!(status, ban_status),
        _ => {}
    }
    if json {
        let value: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        assert_eq!(value["ip"], ip.to_string());
    }
});
