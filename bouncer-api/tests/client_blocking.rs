//! The blocking client against the in-test socket server.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bouncer_api::{BlockingClient, BlockingConfig, ClientError, ErrorCode};
use common::{addresses, answer_for, Opts, TestServer};

fn socket(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("cerberus.sock")
}

#[test]
fn lookup_v4_v6_mapped_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&socket(&dir), Opts::default());
    let mut client = BlockingClient::connect(&server.path).unwrap();
    for addr in ["192.0.2.4", "2001:db8::2", "10.1.2.3"] {
        let addr: IpAddr = addr.parse().unwrap();
        assert_eq!(client.lookup(addr).unwrap(), answer_for(addr));
    }
    let mapped: IpAddr = "::ffff:192.0.2.9".parse().unwrap();
    assert_eq!(
        client.lookup(mapped).unwrap().scenario,
        "scenario-for-192.0.2.9"
    );
    client.ping().unwrap();
    // One connection, reused for every call.
    assert_eq!(server.connections(), 1);
}

#[test]
fn lookup_batch_pipelines_within_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&socket(&dir), Opts::default());
    let mut client = BlockingClient::connect(&server.path).unwrap();
    let addrs = addresses(5000);
    let answers = client.lookup_batch(&addrs).unwrap();
    assert_eq!(answers.len(), addrs.len());
    for (addr, answer) in addrs.iter().zip(&answers) {
        assert_eq!(*answer, answer_for(*addr));
    }
    let max = server.max_batch();
    assert!(max > 1, "requests were not pipelined");
    assert!(max <= client.config().window, "window exceeded: {max}");

    // A window of 1 is plain request/answer.
    let mut one =
        BlockingClient::connect_with(BlockingConfig::new(&server.path).window(1)).unwrap();
    assert_eq!(one.lookup_batch(&addrs[..50]).unwrap(), answers[..50]);
    assert!(client.lookup_batch(&[]).unwrap().is_empty());
}

#[test]
fn many_threads_each_with_a_client() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&socket(&dir), Opts::default());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = server.path.clone();
            std::thread::spawn(move || {
                let mut client = BlockingClient::connect(path).unwrap();
                for addr in addresses(800).into_iter().skip(t).step_by(8) {
                    assert_eq!(client.lookup(addr).unwrap(), answer_for(addr));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(server.requests(), 800);
}

#[test]
fn silent_server_times_out_and_the_connection_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        silent: true,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let timeout = Duration::from_millis(150);
    let mut client =
        BlockingClient::connect_with(BlockingConfig::new(&server.path).timeout(timeout)).unwrap();
    let start = Instant::now();
    let err = client.lookup("192.0.2.1".parse().unwrap()).unwrap_err();
    assert!(
        matches!(err, ClientError::Timeout(t) if t == timeout),
        "{err:?}"
    );
    assert!(start.elapsed() >= timeout);
    assert!(start.elapsed() < Duration::from_secs(5));
    // A late answer must never be taken for the next call's: the stream is gone.
    assert!(!client.is_connected());
    let err = client.lookup_batch(&addresses(300)).unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
    let err = client.ping().unwrap_err();
    assert!(matches!(err, ClientError::Timeout(_)), "{err:?}");
}

#[test]
fn reconnects_after_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let server = TestServer::start(&path, Opts::default());
    let mut client = BlockingClient::connect(&path).unwrap();
    let addr: IpAddr = "192.0.2.7".parse().unwrap();
    assert_eq!(client.lookup(addr).unwrap(), answer_for(addr));
    server.stop();

    let err = client.lookup(addr).unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");

    let server = TestServer::start(&path, Opts::default());
    assert_eq!(client.lookup(addr).unwrap(), answer_for(addr));
    assert_eq!(client.lookup_batch(&addresses(200)).unwrap().len(), 200);
    assert_eq!(server.connections(), 1);

    // Restart while the client holds an open connection: the stale connection fails
    // under the request and the call is retried once on a fresh one.
    server.stop();
    let server = TestServer::start(&path, Opts::default());
    assert!(client.is_connected());
    assert_eq!(client.lookup(addr).unwrap(), answer_for(addr));
    assert_eq!(server.connections(), 1);
}

#[test]
fn a_batch_cut_by_a_closed_connection_is_finished_on_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        drop_first_connections: 1,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let mut client = BlockingClient::connect(&server.path).unwrap();
    let addrs = addresses(1000);
    let answers = client.lookup_batch(&addrs).unwrap();
    for (addr, answer) in addrs.iter().zip(answers) {
        assert_eq!(answer, answer_for(*addr));
    }
    assert_eq!(server.connections(), 2);
}

#[test]
fn only_one_retry() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        drop_first_connections: usize::MAX,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let mut client = BlockingClient::new(BlockingConfig::new(&server.path));
    let err = client.lookup("192.0.2.1".parse().unwrap()).unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    assert_eq!(server.connections(), 2);
}

#[test]
fn out_of_order_answers_and_error_frames_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        reverse: true,
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    // One request at a time cannot be reordered.
    let mut client =
        BlockingClient::connect_with(BlockingConfig::new(&server.path).window(1)).unwrap();
    assert_eq!(client.lookup_batch(&addresses(20)).unwrap().len(), 20);
    // A pipelined batch can: the protocol promises request order, so that is an error.
    let mut client = BlockingClient::connect(&server.path).unwrap();
    let err = client.lookup_batch(&addresses(2000)).unwrap_err();
    assert!(matches!(err, ClientError::Unexpected(_)), "{err:?}");
    drop(server);

    let opts = Opts {
        error: Some(ErrorCode::Internal),
        ..Opts::default()
    };
    let server = TestServer::start(&socket(&dir), opts);
    let mut client = BlockingClient::connect(&server.path).unwrap();
    let err = client.lookup("192.0.2.1".parse().unwrap()).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Server {
                code: ErrorCode::Internal,
                ..
            }
        ),
        "{err:?}"
    );
    client.ping().unwrap();
}
