//! A tiny socket server for the client tests, on its own thread and runtime so that
//! both async and blocking tests can use it and stopping it closes every connection.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bouncer_api::{
    decode_request, encode_lookup_answer, encode_response, ErrorCode, Flags, LookupAnswer,
    Remediation, Request, Response, Status,
};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;

/// How the test server misbehaves.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Never answer (requests are read and dropped).
    pub silent: bool,
    /// Wait this long before answering each batch of requests.
    pub delay: Option<Duration>,
    /// Answer each batch read in one go in reverse order (tests id matching).
    pub reverse: bool,
    /// The first N connections are closed as soon as a request arrives, unanswered
    /// (like an idle close racing with a request).
    pub drop_first_connections: usize,
    /// Answer every lookup with this error frame.
    pub error: Option<ErrorCode>,
    /// Answer with bytes that are not a frame.
    pub garbage: bool,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub requests: AtomicUsize,
    /// Most requests decoded from one read: above 1 means the client pipelines.
    pub max_batch: AtomicUsize,
}

pub struct TestServer {
    pub path: PathBuf,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The answer the test server gives for `addr`: derived from the address so each
/// caller can check that it got its own.
pub fn answer_for(addr: IpAddr) -> LookupAnswer {
    let last = match addr {
        IpAddr::V4(a) => a.octets()[3],
        IpAddr::V6(a) => a.octets()[15],
    };
    let remediation = Remediation::ALL[usize::from(last) % Remediation::ALL.len()];
    LookupAnswer {
        status: Status::Ok,
        remediation,
        flags: Flags::NONE,
        expires_in_s: u32::from(last),
        origin: "test".to_owned(),
        scenario: format!("scenario-for-{addr}"),
        decision_type: match remediation {
            Remediation::Other => "mfa".to_owned(),
            r => r.as_str().to_owned(),
        },
    }
}

impl TestServer {
    pub fn start(path: &Path, opts: Opts) -> TestServer {
        let _ = std::fs::remove_file(path);
        let std_listener = std::os::unix::net::UnixListener::bind(path).expect("bind socket");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let stats = Arc::new(Stats::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = UnixListener::from_std(std_listener).expect("listener");
                let opts = Arc::new(opts);
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let n = thread_stats.connections.fetch_add(1, Ordering::SeqCst);
                        let drop_it = n < opts.drop_first_connections;
                        tokio::spawn(serve(
                            stream,
                            Arc::clone(&opts),
                            Arc::clone(&thread_stats),
                            drop_it,
                        ));
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime ends every connection task: sockets close.
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        TestServer {
            path: path.to_owned(),
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Stops accepting, closes every connection and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
        let _ = std::fs::remove_file(&self.path);
    }

    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn max_batch(&self) -> usize {
        self.stats.max_batch.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn serve(mut stream: UnixStream, opts: Arc<Opts>, stats: Arc<Stats>, drop_it: bool) {
    let mut input = BytesMut::with_capacity(8 * 1024);
    let mut output = BytesMut::with_capacity(8 * 1024);
    let mut batch = Vec::new();
    loop {
        if input.capacity() - input.len() < 1024 {
            input.reserve(8 * 1024);
        }
        match stream.read_buf(&mut input).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if drop_it {
            return;
        }
        loop {
            match decode_request(&mut input) {
                Ok(Some(req)) => batch.push(req),
                Ok(None) => break,
                Err(e) => {
                    encode_response(&e.error_response(), &mut output);
                    let _ = stream.write_all(&output).await;
                    return;
                }
            }
        }
        stats.requests.fetch_add(batch.len(), Ordering::SeqCst);
        stats.max_batch.fetch_max(batch.len(), Ordering::SeqCst);
        if opts.silent {
            batch.clear();
            continue;
        }
        if opts.garbage {
            let _ = stream
                .write_all(&[0x00, 0x06, 0x07, 0x81, 0, 0, 0, 1])
                .await;
            return;
        }
        if let Some(d) = opts.delay {
            tokio::time::sleep(d).await;
        }
        if opts.reverse {
            batch.reverse();
        }
        for req in batch.drain(..) {
            match req {
                Request::Lookup { id, addr } => match opts.error {
                    Some(code) => encode_response(
                        &Response::Error {
                            id,
                            code,
                            message: "test error",
                        },
                        &mut output,
                    ),
                    None => encode_lookup_answer(id, &answer_for(addr), &mut output),
                },
                Request::Ping { id } => {
                    encode_response(&Response::<&str>::Pong { id }, &mut output)
                }
            }
        }
        if stream.write_all(&output).await.is_err() {
            return;
        }
        output.clear();
    }
}

/// `n` distinct addresses, IPv4 and IPv6 mixed.
pub fn addresses(n: usize) -> Vec<IpAddr> {
    (0..n)
        .map(|i| {
            let i = i as u32;
            if i % 3 == 2 {
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    0,
                    0,
                    0,
                    (i >> 16) as u16,
                    i as u16,
                ))
            } else {
                IpAddr::V4(std::net::Ipv4Addr::from(0x0A00_0000 + i))
            }
        })
        .collect()
}
