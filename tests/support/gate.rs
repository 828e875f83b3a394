//! A gate in front of a real LAPI: a loopback proxy that forwards one request per
//! connection while open, and holds every new request (and waits for those in flight)
//! while closed. The reliability tests close it to keep a restarted daemon from any pull,
//! and to change LAPI while no pull can see half a change.
//!
//! It forwards bytes and adds nothing of its own, so the daemon gets LAPI's own answers;
//! the only change is `Connection: close` on each request (so that every pull opens a new
//! connection and passes the gate; a pooled connection would slip past it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};

/// The proxy; dropping it leaves the listener task running until the test process ends.
pub struct Gate {
    /// `http://127.0.0.1:PORT` of the proxy.
    pub url: String,
    lock: Arc<RwLock<()>>,
    closed: tokio::sync::Mutex<Option<OwnedRwLockWriteGuard<()>>>,
    /// Stream pulls with `startup=true` that got their whole answer through.
    pub startups_done: Arc<AtomicUsize>,
    /// Stream pulls with `startup=true` let through (answered or not).
    pub startups_begun: Arc<AtomicUsize>,
    /// Requests read, whether held at the gate or let through.
    pub arrived: Arc<AtomicUsize>,
}

impl Gate {
    /// Starts the proxy to `upstream` (`127.0.0.1:PORT`), closed.
    pub async fn start(upstream: &str) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lock = Arc::new(RwLock::new(()));
        let closed = lock.clone().write_owned().await;
        let gate = Gate {
            url,
            lock: lock.clone(),
            closed: tokio::sync::Mutex::new(Some(closed)),
            startups_done: Arc::default(),
            startups_begun: Arc::default(),
            arrived: Arc::default(),
        };
        let upstream = upstream.to_string();
        let counters = [
            gate.startups_done.clone(),
            gate.startups_begun.clone(),
            gate.arrived.clone(),
        ];
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (lock, upstream) = (lock.clone(), upstream.clone());
                let counters = counters.clone();
                tokio::spawn(async move {
                    forward(sock, &upstream, &lock, &counters).await;
                });
            }
        });
        gate
    }

    /// Opens the gate (held requests go through).
    pub async fn open(&self) {
        self.closed.lock().await.take();
    }

    /// Closes the gate once every request in flight is answered; new ones wait.
    pub async fn close(&self) {
        let mut closed = self.closed.lock().await;
        if closed.is_none() {
            *closed = Some(self.lock.clone().write_owned().await);
        }
    }
}

async fn forward(
    mut sock: TcpStream,
    upstream: &str,
    lock: &RwLock<()>,
    [done, begun, arrived]: &[Arc<AtomicUsize>; 3],
) {
    let Some(head) = super::read_head(&mut sock).await else {
        return;
    };
    arrived.fetch_add(1, Ordering::SeqCst);
    let _pass = lock.read().await;
    let startup = head.lines().next().unwrap_or("").contains("startup=true");
    if startup {
        begun.fetch_add(1, Ordering::SeqCst);
    }
    let Ok(mut up) = TcpStream::connect(upstream).await else {
        return;
    };
    // The head without its own Connection header, then ours (GETs: no body follows).
    let mut request = String::new();
    for line in head.trim_end().split("\r\n") {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            request.push_str(line);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    if up.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let copied = tokio::io::copy(&mut up, &mut sock).await;
    let _ = sock.shutdown().await;
    if startup && copied.is_ok() {
        done.fetch_add(1, Ordering::SeqCst);
    }
}
