//! The Unix socket door against a daemon started in-process (standalone, decisions put
//! in through its writer): lookups for every kind of address, pipelining, malformed
//! frames, arbitrary bytes, the connection cap, stale and live socket files, the mode,
//! the idle timeout and shutdown.

mod support;

use bouncer_api::{
    decode_response, encode_request, Client, ClientConfig, ErrorCode, Flags, Remediation, Request,
    Response, Status,
};
use bytes::BytesMut;
use cerberus::app::Running;
use cerberus::config::Config;
use cerberus::decision::{Decision, Target};
use cerberus::store::UnreachablePolicy;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const LIMIT: Duration = Duration::from_secs(10);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn now() -> u32 {
    cerberus::clock::now_secs_precise()
}

fn decision(id: i64, value: &str, type_name: &str, expires_at: u32) -> Decision {
    Decision {
        id,
        target: Target::parse(value).unwrap(),
        type_name: type_name.into(),
        origin: "cscli".into(),
        scenario: format!("test {id}"),
        expires_at,
    }
}

async fn start(config: Config) -> Running {
    tokio::time::timeout(LIMIT, cerberus::app::start(config))
        .await
        .expect("start in time")
        .expect("start")
}

/// A standalone daemon holding a few decisions.
async fn daemon(dir: &Path) -> Running {
    let app = start(support::config(dir, None, None)).await;
    let t = now();
    let w = vec![
        decision(1, "192.0.2.1", "ban", t + 3600),
        decision(2, "2001:db8::1", "captcha", t + 600),
        decision(3, "198.51.100.0/24", "throttle", t + 60),
        decision(4, "192.0.2.9", "ban", t.saturating_sub(5)),
        decision(5, "2001:db8:5::/48", "ban", t + 60),
    ];
    app.control.insert(w).await.unwrap();
    app
}

fn client(app: &Running) -> Client {
    Client::new(
        ClientConfig::new(&app.config.socket)
            .connections(2)
            .timeout(Duration::from_secs(5)),
    )
}

/// Reads frames until EOF (or the limit); returns them and whether EOF was seen.
async fn read_to_end(stream: &mut UnixStream) -> (Vec<Response>, bool) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut frames = Vec::new();
    let eof = tokio::time::timeout(LIMIT, async {
        loop {
            buf.reserve(4096);
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            while let Some(r) = decode_response(&mut buf).expect("valid response frames") {
                frames.push(r);
            }
        }
    })
    .await
    .is_ok();
    assert!(buf.is_empty(), "a partial frame was left: {buf:?}");
    (frames, eof)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_for_v4_v6_mapped_ranges_and_expired() {
    let dir = tempfile::tempdir().unwrap();
    let app = daemon(dir.path()).await;
    let c = client(&app);

    let a = c.lookup(ip("192.0.2.1")).await.unwrap();
    assert_eq!(a.status, Status::Ok);
    assert_eq!(a.remediation, Remediation::Ban);
    assert_eq!(a.flags, Flags::NONE);
    assert_eq!(
        (
            a.origin.as_str(),
            a.scenario.as_str(),
            a.decision_type.as_str()
        ),
        ("cscli", "test 1", "ban")
    );
    assert!((3590..=3600).contains(&a.expires_in_s), "{a:?}");

    let a = c.lookup(ip("2001:db8::1")).await.unwrap();
    assert_eq!(a.remediation, Remediation::Captcha);
    assert_eq!(a.decision_type, "captcha");

    // A mapped address is the IPv4 one (the client sends it as family 4; a raw family-6
    // frame is tested below).
    let a = c.lookup(ip("::ffff:192.0.2.1")).await.unwrap();
    assert_eq!(a.remediation, Remediation::Ban);

    let a = c.lookup(ip("198.51.100.200")).await.unwrap();
    assert_eq!(a.remediation, Remediation::Throttle);
    assert_eq!(a.scenario, "test 3");
    let a = c.lookup(ip("2001:db8:5:ffff::1")).await.unwrap();
    assert_eq!(a.remediation, Remediation::Ban);

    for allowed in ["192.0.2.9", "192.0.2.2", "198.51.101.1", "2001:db8::2"] {
        let a = c.lookup(ip(allowed)).await.unwrap();
        assert_eq!(a.remediation, Remediation::Allow, "{allowed}");
        assert_eq!(a.expires_in_s, 0);
        assert!(a.origin.is_empty() && a.scenario.is_empty() && a.decision_type.is_empty());
    }

    // Raw family-6 mapped address.
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut frame = vec![0x00, 0x17, 1, 1, 0, 0, 0, 9, 6];
    frame.extend_from_slice(
        &ip("::ffff:192.0.2.1")
            .to_string()
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    s.write_all(&frame).await.unwrap();
    s.shutdown().await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof);
    match &frames[..] {
        [Response::Lookup { id: 9, answer }] => assert_eq!(answer.remediation, Remediation::Ban),
        other => panic!("{other:?}"),
    }

    // Protection off: allow with the bypassed flag.
    app.decider.set_enabled(false);
    let a = c.lookup(ip("192.0.2.1")).await.unwrap();
    assert_eq!(a.remediation, Remediation::Allow);
    assert!(a.flags.is_bypassed());
    app.decider.set_enabled(true);

    // LAPI stale under `closed`: ban with the fail-closed flag, for anyone.
    app.decider.set_outage(Some(UnreachablePolicy::Closed));
    let a = c.lookup(ip("203.0.113.50")).await.unwrap();
    assert_eq!(a.remediation, Remediation::Ban);
    assert!(a.flags.is_fail_closed());
    assert_eq!(a.expires_in_s, 0);
    app.decider.set_outage(None);
    c.ping().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let app = daemon(dir.path()).await;
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut out = BytesMut::new();
    let n = 300u32;
    for id in 1..=n {
        let req = match id % 3 {
            0 => Request::Ping { id },
            1 => Request::Lookup {
                id,
                addr: ip("192.0.2.1"),
            },
            _ => Request::Lookup {
                id,
                addr: ip("2001:db8::77"),
            },
        };
        encode_request(&req, &mut out);
    }
    // One write holding every request, then half-close: the server answers all of them.
    s.write_all(&out).await.unwrap();
    s.shutdown().await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof);
    assert_eq!(frames.len(), n as usize);
    for (i, f) in frames.iter().enumerate() {
        let id = i as u32 + 1;
        assert_eq!(f.id(), id);
        match (id % 3, f) {
            (0, Response::Pong { .. }) => {}
            (1, Response::Lookup { answer, .. }) => {
                assert_eq!(answer.remediation, Remediation::Ban)
            }
            (2, Response::Lookup { answer, .. }) => {
                assert_eq!(answer.remediation, Remediation::Allow)
            }
            other => panic!("{other:?}"),
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_frame_gets_an_error_frame_after_earlier_answers_then_close() {
    let dir = tempfile::tempdir().unwrap();
    let app = daemon(dir.path()).await;

    // A lookup, then a frame with family 5 (id 12), then a lookup that must not be read.
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut out = BytesMut::new();
    encode_request(
        &Request::Lookup {
            id: 11,
            addr: ip("192.0.2.1"),
        },
        &mut out,
    );
    out.extend_from_slice(&[0x00, 0x0b, 1, 1, 0, 0, 0, 12, 5, 1, 2, 3, 4]);
    encode_request(
        &Request::Lookup {
            id: 13,
            addr: ip("192.0.2.1"),
        },
        &mut out,
    );
    s.write_all(&out).await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof, "the server closes after an error frame");
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].id(), 11);
    match &frames[1] {
        Response::Error { id, code, .. } => {
            assert_eq!((*id, *code), (12, ErrorCode::BadFamily));
        }
        other => panic!("{other:?}"),
    }

    // A bad length prefix is an error from its two bytes alone, with id 0.
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    s.write_all(&[0xff, 0xff]).await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof);
    match &frames[..] {
        [Response::Error {
            id: 0,
            code: ErrorCode::BadFrame,
            ..
        }] => {}
        other => panic!("{other:?}"),
    }

    // Version 2: bad_version with the frame's id.
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    s.write_all(&[0x00, 0x06, 2, 2, 0, 0, 0, 7]).await.unwrap();
    let (frames, _) = read_to_end(&mut s).await;
    match &frames[..] {
        [Response::Error {
            id: 7,
            code: ErrorCode::BadVersion,
            ..
        }] => {}
        other => panic!("{other:?}"),
    }
    // The daemon still serves.
    client(&app).ping().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_a_connection_is_told_busy_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), None, None);
    config.socket_max_connections = 2;
    let app = start(config).await;
    let ping = |id: u32| {
        let mut out = BytesMut::new();
        encode_request(&Request::Ping { id }, &mut out);
        out
    };
    async fn one_frame(s: &mut UnixStream) -> Option<Response> {
        let mut buf = BytesMut::with_capacity(1024);
        tokio::time::timeout(LIMIT, async {
            loop {
                if let Some(r) = decode_response(&mut buf).unwrap() {
                    return Some(r);
                }
                if s.read_buf(&mut buf).await.ok()? == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("an answer or EOF in time")
    }
    let mut a = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut b = UnixStream::connect(&app.config.socket).await.unwrap();
    for (s, id) in [(&mut a, 1), (&mut b, 2)] {
        s.write_all(&ping(id)).await.unwrap();
        assert_eq!(one_frame(s).await, Some(Response::Pong { id }));
    }
    let mut c = UnixStream::connect(&app.config.socket).await.unwrap();
    match one_frame(&mut c).await {
        Some(Response::Error {
            id: 0,
            code: ErrorCode::Busy,
            ..
        }) => {}
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(one_frame(&mut c).await, None, "closed after busy");

    // A freed slot is usable again.
    drop(a);
    let path = app.config.socket.clone();
    let mut served = false;
    for _ in 0..250 {
        let mut d = UnixStream::connect(&path).await.unwrap();
        // Until the server has seen the close, this one may be refused (and the write
        // fail with EPIPE).
        if d.write_all(&ping(4)).await.is_ok()
            && one_frame(&mut d).await == Some(Response::Pong { id: 4 })
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot freed by a closed connection is reused");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_but_a_live_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = support::config(dir.path(), None, None);
    std::fs::create_dir_all(dir.path()).unwrap();
    // A socket file nobody listens on, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(&config.socket).unwrap());
    assert!(config.socket.exists());
    let app = start(config.clone()).await;
    client(&app).ping().await.unwrap();

    // A second daemon on the same socket (own data_dir) is refused, clearly.
    let other = tempfile::tempdir().unwrap();
    let mut second = support::config(other.path(), None, None);
    second.socket = config.socket.clone();
    let err = tokio::time::timeout(LIMIT, cerberus::app::start(second))
        .await
        .unwrap()
        .err()
        .expect("the second daemon must not start");
    assert!(format!("{err:#}").contains("another process"), "{err:#}");
    // ... and the first one still answers.
    client(&app).ping().await.unwrap();
    app.stop().await;

    // A regular file in the way is not removed.
    let third = tempfile::tempdir().unwrap();
    let config = support::config(third.path(), None, None);
    std::fs::write(&config.socket, "not a socket").unwrap();
    let err = tokio::time::timeout(LIMIT, cerberus::app::start(config.clone()))
        .await
        .unwrap()
        .err()
        .expect("a regular file must not be replaced");
    assert!(format!("{err:#}").contains("not a socket"), "{err:#}");
    assert_eq!(
        std::fs::read_to_string(&config.socket).unwrap(),
        "not a socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mode_is_applied_and_shutdown_removes_the_socket() {
    for mode in [0o600, 0o660, 0o666] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = support::config(dir.path(), None, None);
        config.socket_mode = mode;
        let app = start(config).await;
        let path = app.config.socket.clone();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{mode:o}");
        assert_eq!(
            app.socket_addr.as_deref(),
            Some(format!("unix:{}", path.display()).as_str())
        );
        client(&app).ping().await.unwrap();
        tokio::time::timeout(LIMIT, app.stop())
            .await
            .expect("stop in time");
        assert!(!path.exists(), "shutdown removes {}", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_without_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), None, None);
    // Below the 60s the config file accepts, to keep the test short.
    config.socket_idle_timeout = Duration::from_millis(300);
    let app = start(config).await;
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    let mut out = BytesMut::new();
    encode_request(&Request::Ping { id: 1 }, &mut out);
    s.write_all(&out).await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof, "closed when idle");
    assert_eq!(frames, vec![Response::Pong { id: 1 }]);
    app.stop().await;
}

/// The value of an unlabelled counter in this process's Prometheus text (0 when absent).
fn counter(name: &str) -> f64 {
    let text = cerberus::metrics::render().expect("the recorder is installed by start");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holding_a_partial_frame_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = support::config(dir.path(), None, None);
    config.socket_idle_timeout = Duration::from_millis(300);
    let app = start(config).await;
    let before = counter("cerberus_socket_stalled_closed_total");
    // One whole ping, then the first bytes of a lookup: the ping is answered, and the
    // partial frame must not keep the connection (and its slot of the cap) for ever.
    let mut out = BytesMut::new();
    encode_request(&Request::Ping { id: 1 }, &mut out);
    let mut lookup = BytesMut::new();
    encode_request(
        &Request::Lookup {
            id: 2,
            addr: ip("192.0.2.1"),
        },
        &mut lookup,
    );
    out.extend_from_slice(&lookup[..3]);
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    s.write_all(&out).await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof, "a connection stalled on a partial frame is closed");
    assert_eq!(frames, vec![Response::Pong { id: 1 }]);
    // A connection holding one byte and nothing else goes the same way.
    let mut s = UnixStream::connect(&app.config.socket).await.unwrap();
    s.write_all(&lookup[..1]).await.unwrap();
    let (frames, eof) = read_to_end(&mut s).await;
    assert!(eof, "a one-byte connection is closed");
    assert!(frames.is_empty());
    assert!(counter("cerberus_socket_stalled_closed_total") >= before + 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_are_counted_by_the_decider() {
    let dir = tempfile::tempdir().unwrap();
    let app = daemon(dir.path()).await;
    let before = app.decider.lookups();
    let addrs: Vec<IpAddr> = (0..50).map(|i| ip(&format!("192.0.2.{i}"))).collect();
    let answers = client(&app).lookup_many(&addrs).await.unwrap();
    assert_eq!(answers.len(), 50);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.remediation == Remediation::Ban)
            .count(),
        1
    );
    assert_eq!(app.decider.lookups() - before, 50);
    app.stop().await;
}

mod arbitrary_bytes {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever a client writes, the server answers with valid frames only, closes
        /// or waits, and keeps serving other connections.
        #[test]
        fn never_crash_the_server(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..4)) {
            let rt = shared_runtime();
            rt.block_on(async {
                let app = shared_daemon().await;
                let socket = app.lock().await.config.socket.clone();
                let mut s = UnixStream::connect(&socket).await.unwrap();
                for chunk in &chunks {
                    if s.write_all(chunk).await.is_err() {
                        break;
                    }
                }
                let _ = s.shutdown().await;
                let mut buf = BytesMut::new();
                let _ = tokio::time::timeout(LIMIT, s.read_buf(&mut buf)).await;
                let _ = tokio::time::timeout(LIMIT, async {
                    loop {
                        buf.reserve(4096);
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                while let Some(r) = decode_response(&mut buf).expect("the server sends valid frames") {
                    let _ = r;
                }
                let c = Client::new(ClientConfig::new(&socket).timeout(Duration::from_secs(5)));
                c.ping().await.expect("the server still serves");
            });
        }
    }

    fn shared_runtime() -> &'static tokio::runtime::Runtime {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        })
    }

    async fn shared_daemon() -> &'static tokio::sync::Mutex<Running> {
        static APP: tokio::sync::OnceCell<(tempfile::TempDir, tokio::sync::Mutex<Running>)> =
            tokio::sync::OnceCell::const_new();
        let (_, app) = APP
            .get_or_init(|| async {
                let dir = tempfile::tempdir().unwrap();
                let app = daemon(dir.path()).await;
                (dir, tokio::sync::Mutex::new(app))
            })
            .await;
        app
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_a_decision_set_exists() {
    // LAPI mode, nothing persisted, LAPI unreachable: answers say `not_ready`.
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let app = start(support::config(dir.path(), Some(&url), Some("k"))).await;
    let a = client(&app).lookup(ip("192.0.2.1")).await.unwrap();
    assert_eq!(a.status, Status::NotReady);
    assert_eq!(a.remediation, Remediation::Allow);
    app.stop().await;

    // Standalone is always ready.
    let dir = tempfile::tempdir().unwrap();
    let app = daemon(dir.path()).await;
    let a = client(&app).lookup(ip("192.0.2.2")).await.unwrap();
    assert_eq!(a.status, Status::Ok);
    app.stop().await;
}
