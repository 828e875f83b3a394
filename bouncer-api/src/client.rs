//! Async (tokio) client: a pool of pipelined connections.
//!
//! Each connection has a writer task, which coalesces every request queued since its
//! last write into one `write`, and a reader task, which decodes answers and hands
//! each to its caller by id. Any number of callers can share a connection; a batch
//! ([`Client::lookup_many`]) queues all its requests before waiting for the first
//! answer.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{decode_response, encode_request, LookupAnswer, Request, Response};
use crate::error::ClientError;

/// Default number of connections in a [`Client`]'s pool.
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Default timeout of one call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Path of the daemon's Unix socket.
    pub path: PathBuf,
    /// Connections in the pool (at least 1). Calls are spread over them round-robin.
    pub connections: usize,
    /// Deadline of one call (`lookup`, `lookup_many`, `ping`), reconnect and retry
    /// included.
    pub timeout: Duration,
}

impl ClientConfig {
    /// Defaults for the socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> ClientConfig {
        ClientConfig {
            path: path.into(),
            connections: DEFAULT_CONNECTIONS,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the pool size.
    #[must_use]
    pub fn connections(mut self, n: usize) -> ClientConfig {
        self.connections = n;
        self
    }

    /// Sets the per-call timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> ClientConfig {
        self.timeout = timeout;
        self
    }
}

/// A pooled, pipelining client. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    slots: Box<[Slot]>,
    next_slot: AtomicUsize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client with default settings, its connections opened now (fails if the
    /// socket cannot be connected).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        Client::connect_with(ClientConfig::new(path.as_ref())).await
    }

    /// A client for `cfg`, every connection of the pool opened now.
    pub async fn connect_with(cfg: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::new(cfg);
        for slot in client.inner.slots.iter() {
            client.conn(slot).await?;
        }
        Ok(client)
    }

    /// A client for `cfg` that connects lazily, on first use of each connection.
    /// Never fails; a missing daemon shows up as [`ClientError::Connect`] per call.
    pub fn new(cfg: ClientConfig) -> Client {
        let slots = (0..cfg.connections.max(1))
            .map(|_| Slot {
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        Client {
            inner: Arc::new(Inner {
                cfg,
                slots,
                next_slot: AtomicUsize::new(0),
            }),
        }
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// What to do with `addr`. Fails after the configured timeout; a connection that
    /// broke (daemon restart, idle close) is replaced and the lookup retried once.
    pub async fn lookup(&self, addr: IpAddr) -> Result<LookupAnswer, ClientError> {
        let timeout = self.inner.cfg.timeout;
        let call = async {
            let slot = self.pick_slot();
            into_answer(self.call(slot, |id| Request::Lookup { id, addr }).await?)
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)))
    }

    /// Answers for every address, in order, over one connection: all requests are
    /// written before the first answer is awaited. The timeout covers the whole
    /// batch. Requests whose answers were lost with a broken connection are sent
    /// again, once, on a fresh one. Any error fails the whole batch.
    pub async fn lookup_many(&self, addrs: &[IpAddr]) -> Result<Vec<LookupAnswer>, ClientError> {
        let timeout = self.inner.cfg.timeout;
        tokio::time::timeout(timeout, self.lookup_many_untimed(addrs))
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)))
    }

    /// Round trip of a ping frame (checks that the daemon answers).
    pub async fn ping(&self) -> Result<(), ClientError> {
        let timeout = self.inner.cfg.timeout;
        let call = async {
            let slot = self.pick_slot();
            match self.call(slot, |id| Request::Ping { id }).await? {
                Response::Pong { .. } => Ok(()),
                Response::Error { code, message, .. } => Err(ClientError::Server { code, message }),
                Response::Lookup { .. } => Err(ClientError::Unexpected("lookup answer to a ping")),
            }
        };
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)))
    }

    fn pick_slot(&self) -> &Slot {
        let slots = &self.inner.slots;
        let i = self.inner.next_slot.fetch_add(1, Ordering::Relaxed) % slots.len();
        &slots[i]
    }

    /// The slot's live connection, connecting if there is none.
    async fn conn(&self, slot: &Slot) -> Result<Arc<Conn>, ClientError> {
        if let Some(c) = slot.alive() {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = slot.alive() {
            return Ok(c);
        }
        let path = &self.inner.cfg.path;
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| ClientError::connect(path.clone(), e))?;
        let conn = Arc::new(Conn::start(stream));
        *lock(&slot.current) = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn call(
        &self,
        slot: &Slot,
        make: impl Fn(u32) -> Request,
    ) -> Result<Response, ClientError> {
        let mut retried = false;
        loop {
            let conn = self.conn(slot).await?;
            match conn.call(&make).await {
                Err(e) if e.is_connection_lost() && !retried => retried = true,
                other => return other,
            }
        }
    }

    async fn lookup_many_untimed(
        &self,
        addrs: &[IpAddr],
    ) -> Result<Vec<LookupAnswer>, ClientError> {
        let slot = self.pick_slot();
        let mut answers: Vec<Option<LookupAnswer>> = vec![None; addrs.len()];
        let mut todo: Vec<usize> = (0..addrs.len()).collect();
        let mut retried = false;
        while !todo.is_empty() {
            let conn = self.conn(slot).await?;
            let waits = conn.register_many(todo.len())?;
            let mut guard = Waiting {
                shared: &conn.shared,
                ids: waits.iter().map(|(id, _)| *id).collect(),
                armed: true,
            };
            for (&i, (id, _)) in todo.iter().zip(&waits) {
                conn.send(Request::Lookup {
                    id: *id,
                    addr: addrs[i],
                });
            }
            let mut lost = Vec::new();
            let mut lost_err = None;
            for (&i, (_, rx)) in todo.iter().zip(waits) {
                match rx.await.unwrap_or_else(|_| Err(ClientError::eof())) {
                    Ok(resp) => answers[i] = Some(into_answer(resp)?),
                    Err(e) if e.is_connection_lost() => {
                        lost.push(i);
                        lost_err = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            guard.armed = false;
            if let Some(e) = lost_err {
                if retried {
                    return Err(e);
                }
                retried = true;
            }
            todo = lost;
        }
        Ok(answers.into_iter().flatten().collect())
    }
}

fn into_answer(resp: Response) -> Result<LookupAnswer, ClientError> {
    match resp {
        Response::Lookup { answer, .. } => Ok(answer),
        Response::Error { code, message, .. } => Err(ClientError::Server { code, message }),
        Response::Pong { .. } => Err(ClientError::Unexpected("pong to a lookup")),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Slot {
    current: Mutex<Option<Arc<Conn>>>,
    /// Serializes reconnects so that concurrent callers open one connection.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn alive(&self) -> Option<Arc<Conn>> {
        lock(&self.current)
            .as_ref()
            .filter(|c| !c.shared.closed.load(Ordering::Acquire))
            .cloned()
    }
}

type Reply = Result<Response, ClientError>;

/// One connection: the sending side of its writer task and the table of callers
/// waiting for an answer.
struct Conn {
    tx: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    /// Set once the connection failed; new calls go to a fresh connection.
    closed: AtomicBool,
}

struct State {
    /// Why the connection failed; calls registered after that get this error.
    failed: Option<ClientError>,
    waiting: HashMap<u32, oneshot::Sender<Reply>, BuildHasherDefault<IdHasher>>,
}

/// Ids are sequential and chosen by us: a multiplicative hash is enough (and much
/// cheaper than SipHash).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Conn {
    fn start(stream: UnixStream) -> Conn {
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                failed: None,
                waiting: HashMap::default(),
            }),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(wr, rx, Arc::clone(&shared)));
        let reader = tokio::spawn(read_loop(rd, Arc::clone(&shared)));
        Conn {
            tx,
            shared,
            next_id: AtomicU32::new(1),
            reader,
        }
    }

    /// Reserves `n` fresh ids (never 0, none already waiting) with their reply
    /// channels.
    fn register_many(&self, n: usize) -> Result<Vec<(u32, oneshot::Receiver<Reply>)>, ClientError> {
        let mut st = lock(&self.shared.state);
        if let Some(e) = &st.failed {
            return Err(e.clone());
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = loop {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                if id != 0 && !st.waiting.contains_key(&id) {
                    break id;
                }
            };
            let (tx, rx) = oneshot::channel();
            st.waiting.insert(id, tx);
            out.push((id, rx));
        }
        Ok(out)
    }

    fn send(&self, req: Request) {
        // If the writer is gone, the connection has failed and every registered
        // caller has been (or is being) answered with the error: nothing to do.
        let _ = self.tx.send(req);
    }

    async fn call(&self, make: &impl Fn(u32) -> Request) -> Reply {
        let (id, rx) = self
            .register_many(1)?
            .pop()
            .expect("register_many(1) returns one id");
        let mut guard = Waiting {
            shared: &self.shared,
            ids: vec![id],
            armed: true,
        };
        self.send(make(id));
        let reply = rx.await.unwrap_or_else(|_| Err(ClientError::eof()));
        guard.armed = false;
        reply
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // The writer ends when `tx` drops; the reader would wait for the server.
        self.reader.abort();
    }
}

impl Shared {
    fn fail_all(&self, err: ClientError) {
        let waiting = {
            let mut st = lock(&self.state);
            self.closed.store(true, Ordering::Release);
            if st.failed.is_none() {
                st.failed = Some(err.clone());
            }
            std::mem::take(&mut st.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(err.clone()));
        }
    }

    fn deliver(&self, resp: Response) {
        let id = resp.id();
        let tx = lock(&self.state).waiting.remove(&id);
        match (tx, resp) {
            (Some(tx), resp) => {
                let _ = tx.send(Ok(resp));
            }
            // Id 0 is never used by this client: a connection-level error, after
            // which the server closes the connection.
            (
                None,
                Response::Error {
                    id: 0,
                    code,
                    message,
                },
            ) => {
                self.fail_all(ClientError::Server { code, message });
            }
            // The caller gave up (timeout) before its answer came.
            (None, _) => {}
        }
    }
}

/// Removes ids from the waiting table when a call is abandoned (timeout, cancel).
struct Waiting<'a> {
    shared: &'a Shared,
    ids: Vec<u32>,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut st = lock(&self.shared.state);
            for id in &self.ids {
                st.waiting.remove(id);
            }
        }
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Request>,
    shared: Arc<Shared>,
) {
    let mut reqs = Vec::with_capacity(256);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // Everything queued since the last write goes out in one write.
    while rx.recv_many(&mut reqs, 4096).await > 0 {
        for req in reqs.drain(..) {
            encode_request(&req, &mut buf);
        }
        if let Err(e) = wr.write_all(&buf).await {
            shared.fail_all(ClientError::lost(e));
            return;
        }
        buf.clear();
    }
}

async fn read_loop(mut rd: OwnedReadHalf, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let err = loop {
        if buf.capacity() - buf.len() < 2 * 1024 {
            buf.reserve(16 * 1024);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => break ClientError::eof(),
            Ok(_) => {}
            Err(e) => break ClientError::lost(e),
        }
        loop {
            match decode_response(&mut buf) {
                Ok(Some(resp)) => shared.deliver(resp),
                Ok(None) => break,
                Err(e) => {
                    shared.fail_all(ClientError::Frame(e));
                    return;
                }
            }
        }
    };
    shared.fail_all(err);
}
