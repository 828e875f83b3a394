//! The async client against the in-test socket server.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bouncer_api::{Client, ClientConfig, ClientError, ErrorCode, Remediation};
use common::{addresses, answer_for, Opts, TestServer};

fn socket(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("cerberus.sock")
}

#[tokio::test]
async fn lookup_v4_v6_mapped_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&socket(&dir), Opts::default());
    let client = Client::connect(&server.path).await.unwrap();

    for addr in ["192.0.2.4", "2001:db8::1", "198.51.100.255"] {
        let addr: IpAddr = addr.parse().unwrap();
        assert_eq!(client.lookup(addr).await.unwrap(), answer_for(addr));
    }
    // A mapped address travels as IPv4: the server sees (and answers for) 192.0.2.9.
    let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
    let answer = client.lookup(mapped).await.unwrap();
    assert_eq!(answer.scenario, "scenario-for-192.0.2.9");
    assert_eq!(answer.remediation, Remediation::Other);
    assert_eq!(answer.decision_type, "mfa");

    client.ping().await.unwrap();
    // connect() opened the whole pool up front.
    assert_eq!(server.connections(), client.config().connections);
}

#[tokio::test]
async fn lookup_many_pipelines_and_keeps_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&socket(&dir), Opts::default());
    let client = Client::connect_with(ClientConfig::new(&server.path).connections(1))
        .await
        .unwrap();
    let addrs = addresses(3000);
    let answers = client.lookup_many(&addrs).await.unwrap();
    assert_eq!(answers.len(), addrs.len());
    for (addr, answer) in addrs.iter().zip(&answers) {
        assert_eq!(*answer, answer_for(*addr));
    }
    assert!(
        server.max_batch() > 1,
        "requests were not pipelined (max batch {})",
        server.max_batch()
    );
    assert!(client.lookup_many(&[]).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_are_matched_by_id() {
    let dir = tempfile::tempdir().unwrap();
    // The server answers each batch backwards: only id matching gets it right.
    let opts = Opts {
        reverse: true,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::connect_with(
        ClientConfig::new(&server.path)
            .connections(2)
            .timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for t in 0..64usize {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let addrs = addresses(6400);
            for addr in addrs.iter().skip(t).step_by(64) {
                let answer = client.lookup(*addr).await.unwrap();
                assert_eq!(answer, answer_for(*addr));
            }
            // And a batch in the middle of the single lookups.
            let batch: Vec<IpAddr> = addrs.iter().skip(t).step_by(640).copied().collect();
            let answers = client.lookup_many(&batch).await.unwrap();
            for (addr, answer) in batch.iter().zip(answers) {
                assert_eq!(answer, answer_for(*addr));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        server.max_batch() > 1,
        "callers' requests were never coalesced"
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn silent_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        silent: true,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let timeout = Duration::from_millis(150);
    let client = Client::connect_with(ClientConfig::new(&server.path).timeout(timeout))
        .await
        .unwrap();
    let addr: IpAddr = "192.0.2.1".parse().unwrap();
    for _ in 0..2 {
        let start = Instant::now();
        let err = client.lookup(addr).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout(t) if t == timeout),
            "{err:?}"
        );
        assert!(start.elapsed() >= timeout);
        assert!(start.elapsed() < Duration::from_secs(5));
    }
    let err = client.lookup_many(&addresses(10)).await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn slow_answers_within_the_timeout_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        delay: Some(Duration::from_millis(50)),
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::connect_with(
        ClientConfig::new(&server.path)
            .connections(1)
            .timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();
    let addr: IpAddr = "192.0.2.3".parse().unwrap();
    assert_eq!(client.lookup(addr).await.unwrap(), answer_for(addr));
}

#[tokio::test]
async fn reconnects_after_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let server = TestServer::start(&path, Opts::default());
    let client = Client::connect_with(ClientConfig::new(&path).connections(2))
        .await
        .unwrap();
    let addr: IpAddr = "192.0.2.7".parse().unwrap();
    assert_eq!(client.lookup(addr).await.unwrap(), answer_for(addr));
    server.stop();

    // Down: a clear connect error, not a hang.
    let err = client.lookup(addr).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");

    let server = TestServer::start(&path, Opts::default());
    for _ in 0..4 {
        assert_eq!(client.lookup(addr).await.unwrap(), answer_for(addr));
    }
    let answers = client.lookup_many(&addresses(100)).await.unwrap();
    assert_eq!(answers.len(), 100);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_connection_closed_under_a_request_is_retried_once() {
    let dir = tempfile::tempdir().unwrap();
    // The first connection is closed when the request arrives, as if the server's
    // idle timeout had fired just then.
    let opts = Opts {
        drop_first_connections: 1,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::connect_with(ClientConfig::new(&server.path).connections(1))
        .await
        .unwrap();
    let addr: IpAddr = "192.0.2.8".parse().unwrap();
    assert_eq!(client.lookup(addr).await.unwrap(), answer_for(addr));
    assert_eq!(server.connections(), 2);

    // Same for a batch: the lost requests are sent again on a new connection.
    let opts = Opts {
        drop_first_connections: 1,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::new(ClientConfig::new(&server.path).connections(1));
    let addrs = addresses(500);
    let answers = client.lookup_many(&addrs).await.unwrap();
    for (addr, answer) in addrs.iter().zip(answers) {
        assert_eq!(answer, answer_for(*addr));
    }
}

#[tokio::test]
async fn only_one_retry() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        drop_first_connections: usize::MAX,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::new(ClientConfig::new(&server.path).connections(1));
    let err = client
        .lookup("192.0.2.1".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn lazy_client_connects_when_the_daemon_appears() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let err = Client::connect(&path).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");

    let client = Client::new(ClientConfig::new(&path));
    let addr: IpAddr = "192.0.2.5".parse().unwrap();
    let err = client.lookup(addr).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");

    let _server = TestServer::start(&path, Opts::default());
    assert_eq!(client.lookup(addr).await.unwrap(), answer_for(addr));
}

#[tokio::test]
async fn error_frames_and_garbage_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        error: Some(ErrorCode::Busy),
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::connect(&server.path).await.unwrap();
    let addr: IpAddr = "192.0.2.5".parse().unwrap();
    let err = client.lookup(addr).await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Server { code: ErrorCode::Busy, message } if message == "test error"),
        "{err:?}"
    );
    let err = client.lookup_many(&[addr, addr]).await.unwrap_err();
    assert!(matches!(err, ClientError::Server { .. }), "{err:?}");
    client.ping().await.unwrap();
    drop(server);

    let opts = Opts {
        garbage: true,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let client = Client::connect(&server.path).await.unwrap();
    let err = client.lookup(addr).await.unwrap_err();
    assert!(matches!(err, ClientError::Frame(_)), "{err:?}");
}
