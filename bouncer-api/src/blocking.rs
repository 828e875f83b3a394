//! Blocking client over `std::os::unix::net::UnixStream`: one connection, reused
//! across calls, with pipelined batches.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::codec::{encode_request, parse_response, LookupAnswer, Request, Response};
use crate::error::ClientError;

/// Default number of requests a [`BlockingClient`] keeps unanswered on its
/// connection during a batch.
pub const DEFAULT_WINDOW: usize = 64;

/// Settings of a [`BlockingClient`].
#[derive(Debug, Clone)]
pub struct BlockingConfig {
    /// Path of the daemon's Unix socket.
    pub path: PathBuf,
    /// Deadline of one call (`lookup`, `lookup_batch`, `ping`), reconnect and retry
    /// included. Enforced through the socket's read and write timeouts.
    pub timeout: Duration,
    /// Requests written ahead of their answers (at least 1). At 64 the answers can
    /// never fill the socket buffers, so the client cannot deadlock the server.
    pub window: usize,
}

impl BlockingConfig {
    /// Defaults for the socket at `path`.
    pub fn new(path: impl Into<PathBuf>) -> BlockingConfig {
        BlockingConfig {
            path: path.into(),
            timeout: crate::client::DEFAULT_TIMEOUT,
            window: DEFAULT_WINDOW,
        }
    }

    /// Sets the per-call timeout.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> BlockingConfig {
        self.timeout = timeout;
        self
    }

    /// Sets the pipelining window.
    #[must_use]
    pub fn window(mut self, window: usize) -> BlockingConfig {
        self.window = window;
        self
    }
}

/// A blocking client holding one connection. Use one per thread.
#[derive(Debug)]
pub struct BlockingClient {
    cfg: BlockingConfig,
    stream: Option<UnixStream>,
    /// Received bytes not yet decoded: `rbuf[rpos..]`.
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    next_id: u32,
}

impl BlockingClient {
    /// A client with default settings, connected now.
    pub fn connect(path: impl AsRef<Path>) -> Result<BlockingClient, ClientError> {
        BlockingClient::connect_with(BlockingConfig::new(path.as_ref()))
    }

    /// A client for `cfg`, connected now.
    pub fn connect_with(cfg: BlockingConfig) -> Result<BlockingClient, ClientError> {
        let mut client = BlockingClient::new(cfg);
        client.ensure_connected(Instant::now() + client.cfg.timeout)?;
        Ok(client)
    }

    /// A client for `cfg` that connects on first use.
    pub fn new(cfg: BlockingConfig) -> BlockingClient {
        BlockingClient {
            cfg,
            stream: None,
            rbuf: Vec::with_capacity(16 * 1024),
            rpos: 0,
            wbuf: Vec::with_capacity(4 * 1024),
            next_id: 1,
        }
    }

    /// The settings this client was built with.
    pub fn config(&self) -> &BlockingConfig {
        &self.cfg
    }

    /// Whether a connection is currently open.
    pub fn is_connected(&self) -> bool {
        self.stream.is_some()
    }

    /// What to do with `addr`.
    pub fn lookup(&mut self, addr: IpAddr) -> Result<LookupAnswer, ClientError> {
        let mut out = self.lookup_batch(&[addr])?;
        Ok(out.pop().expect("one answer per address"))
    }

    /// Answers for every address, in order. Requests are pipelined: up to `window`
    /// are written ahead of their answers. If the connection breaks, the requests
    /// not yet answered are sent again, once, on a fresh connection. The timeout
    /// covers the whole batch.
    pub fn lookup_batch(&mut self, addrs: &[IpAddr]) -> Result<Vec<LookupAnswer>, ClientError> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut out = Vec::with_capacity(addrs.len());
        let mut retried = false;
        while out.len() < addrs.len() {
            match self.run_batch(&addrs[out.len()..], &mut out, deadline) {
                Ok(()) => {}
                Err(e) => {
                    // The stream is out of step (or dead): never reuse it.
                    self.disconnect();
                    if !e.is_connection_lost() || retried {
                        return Err(e);
                    }
                    retried = true;
                }
            }
        }
        Ok(out)
    }

    /// Round trip of a ping frame.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.cfg.timeout;
        let mut retried = false;
        loop {
            let res = self.ping_once(deadline);
            match res {
                Err(e) => {
                    self.disconnect();
                    if !e.is_connection_lost() || retried {
                        return Err(e);
                    }
                    retried = true;
                }
                Ok(()) => return Ok(()),
            }
        }
    }

    /// Closes the connection; the next call opens a new one.
    pub fn disconnect(&mut self) {
        self.stream = None;
        self.rbuf.clear();
        self.rpos = 0;
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn ensure_connected(&mut self, deadline: Instant) -> Result<(), ClientError> {
        if self.stream.is_some() {
            return Ok(());
        }
        let path = &self.cfg.path;
        remaining(deadline, self.cfg.timeout)?;
        let stream =
            UnixStream::connect(path).map_err(|e| ClientError::connect(path.clone(), e))?;
        self.rbuf.clear();
        self.rpos = 0;
        self.stream = Some(stream);
        Ok(())
    }

    fn ping_once(&mut self, deadline: Instant) -> Result<(), ClientError> {
        self.ensure_connected(deadline)?;
        let id = self.next_id();
        self.wbuf.clear();
        encode_request(&Request::Ping { id }, &mut self.wbuf);
        self.flush(deadline)?;
        match self.read_response(deadline)? {
            Response::Pong { id: got } if got == id => Ok(()),
            Response::Error { code, message, .. } => Err(ClientError::Server { code, message }),
            _ => Err(ClientError::Unexpected("answer to a ping is not its pong")),
        }
    }

    /// Sends `addrs` with at most `window` unanswered, pushing answers to `out`.
    fn run_batch(
        &mut self,
        addrs: &[IpAddr],
        out: &mut Vec<LookupAnswer>,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        self.ensure_connected(deadline)?;
        let window = self.cfg.window.max(1);
        let mut in_flight: VecDeque<u32> = VecDeque::with_capacity(window.min(addrs.len()));
        let mut sent = 0;
        let mut answered = 0;
        while answered < addrs.len() {
            self.wbuf.clear();
            while in_flight.len() < window && sent < addrs.len() {
                let id = self.next_id();
                encode_request(
                    &Request::Lookup {
                        id,
                        addr: addrs[sent],
                    },
                    &mut self.wbuf,
                );
                in_flight.push_back(id);
                sent += 1;
            }
            if !self.wbuf.is_empty() {
                self.flush(deadline)?;
            }
            // At least one answer, then whatever else is already buffered.
            loop {
                let resp = self.read_response(deadline)?;
                let want = in_flight.pop_front().expect("an answer is awaited");
                if resp.id() != want {
                    return Err(ClientError::Unexpected("answer out of request order"));
                }
                match resp {
                    Response::Lookup { answer, .. } => out.push(answer),
                    Response::Error { code, message, .. } => {
                        return Err(ClientError::Server { code, message })
                    }
                    Response::Pong { .. } => {
                        return Err(ClientError::Unexpected("pong to a lookup"))
                    }
                }
                answered += 1;
                if in_flight.is_empty() || !self.has_buffered_frame()? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let timeout = remaining(deadline, self.cfg.timeout)?;
        let stream = self.stream.as_mut().expect("connected");
        stream
            .set_write_timeout(Some(timeout))
            .map_err(ClientError::lost)?;
        stream
            .write_all(&self.wbuf)
            .map_err(|e| io_error(e, self.cfg.timeout))
    }

    fn has_buffered_frame(&self) -> Result<bool, ClientError> {
        Ok(crate::codec::frame_len(&self.rbuf[self.rpos..])?.is_some())
    }

    /// The next response, reading from the socket as needed.
    fn read_response(&mut self, deadline: Instant) -> Result<Response, ClientError> {
        loop {
            if let Some((resp, used)) = parse_response(&self.rbuf[self.rpos..])? {
                self.rpos += used;
                if self.rpos == self.rbuf.len() {
                    self.rbuf.clear();
                    self.rpos = 0;
                }
                return Ok(resp);
            }
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            let timeout = remaining(deadline, self.cfg.timeout)?;
            let stream = self.stream.as_mut().expect("connected");
            stream
                .set_read_timeout(Some(timeout))
                .map_err(ClientError::lost)?;
            let filled = self.rbuf.len();
            self.rbuf.resize(filled + 8 * 1024, 0);
            let res = stream.read(&mut self.rbuf[filled..]);
            let n = match res {
                Ok(n) => n,
                Err(e) => {
                    self.rbuf.truncate(filled);
                    return Err(io_error(e, self.cfg.timeout));
                }
            };
            self.rbuf.truncate(filled + n);
            if n == 0 {
                return Err(ClientError::eof());
            }
        }
    }
}

/// Time left before `deadline`, or a timeout error if none.
fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, ClientError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ClientError::Timeout(timeout))
    } else {
        Ok(left)
    }
}

fn io_error(e: io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout(timeout),
        _ => ClientError::lost(e),
    }
}
