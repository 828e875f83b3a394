//! Checks the test harness itself: a real LAPI from `scripts/crowdsec-lapi.sh` serves
//! decisions added with cscli to a bouncer key, and keeps them across a restart.

mod support;

use std::net::TcpStream;

use support::lapi::Lapi;

const STARTUP: &str = "/v1/decisions/stream?startup=true";

#[test]
fn decisions_reach_the_stream_and_survive_a_restart() {
    let lapi = Lapi::start();
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        "192.0.2.10",
        "--duration",
        "4h",
        "--reason",
        "harness",
    ]);
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "198.51.100.0/24",
        "--duration",
        "4h",
        "--reason",
        "harness",
    ]);

    let (status, body) = lapi.get(STARTUP, &lapi.bouncer_key);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"192.0.2.10\""), "{body}");
    assert!(body.contains("\"198.51.100.0/24\""), "{body}");

    lapi.stop();
    assert!(
        TcpStream::connect(&lapi.addr).is_err(),
        "the LAPI still listens after stop"
    );

    lapi.restart();
    let (status, body) = lapi.get(STARTUP, &lapi.bouncer_key);
    assert_eq!(status, 200, "{body}\n{}", lapi.log());
    assert!(body.contains("\"192.0.2.10\""), "{body}");
}

#[test]
fn bouncer_keys_are_checked() {
    let lapi = Lapi::start();
    let key = lapi.new_bouncer_key("harness-second");
    assert_ne!(key, lapi.bouncer_key);

    let (status, body) = lapi.get(STARTUP, &key);
    assert_eq!(status, 200, "{body}");
    // 1.4.6 answers an empty list as null.
    assert!(body.contains("\"new\":"), "{body}");

    let (status, body) = lapi.get(STARTUP, "not-a-key");
    assert_eq!(status, 403, "{body}");

    let (status, body) = lapi.get("/health", "");
    assert_eq!(status, 200, "{body}");
}
