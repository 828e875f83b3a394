//! A stand-in LAPI that follows a script: each `startup=true` pull takes the next answer
//! of a queue (the last one repeats), every other pull gets the delta answer of the moment.
//!
//! It answers as CrowdSec's LAPI does on `GET /v1/decisions/stream`
//! (pkg/apiserver/controllers/v1/decisions.go, `StreamDecision`): a JSON object with
//! `new` and `deleted` lists; a startup answer that LAPI cuts short on a database error
//! part way is still a complete, shorter object, which `Reply::Body` plays.
//!
//! For the watcher's writes it answers `POST /v1/watchers/login` as LAPI's JWT middleware
//! does (pkg/apiserver/middlewares/v1/jwt.go, `LoginResponse`: code, expire, token) and
//! `DELETE /v1/decisions` as `DeleteDecisions` (pkg/apiserver/controllers/v1/decisions.go:
//! `{"nbDeleted":"N"}`). [`start_stoppable`] gives a stand-in that can die and come back
//! on the same port, for failover.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

#[derive(Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(String),
    /// This status with this body.
    Status(u16, String),
    /// 200 with this body, of which the first half is sent at once and the rest once the
    /// `Notify` is notified: a pull held open.
    Held(Arc<Notify>, String),
    /// Reads the request and never answers.
    Hang,
}

#[derive(Default)]
pub struct Script {
    pub startup: VecDeque<Reply>,
    pub delta: Option<Reply>,
    /// `startup=true` requests seen so far.
    pub startups: usize,
    /// Other pulls seen so far.
    pub deltas: usize,
    /// The request line of every request, in order.
    pub requests: Vec<String>,
}

pub type Shared = Arc<Mutex<Script>>;

/// One decision as LAPI sends it, lasting about 4 hours.
pub fn decision(id: i64, value: &str) -> String {
    let scope = if value.contains('/') { "Range" } else { "Ip" };
    format!(
        r#"{{"id":{id},"origin":"cscli","type":"ban","scope":"{scope}","value":"{value}","duration":"3h59m55.5s","scenario":"test"}}"#
    )
}

/// A stream answer with these decisions in `new` (and `deleted` null, as 1.4.6 sends it).
pub fn answer(decisions: &[(i64, &str)]) -> String {
    let new: Vec<String> = decisions.iter().map(|&(id, v)| decision(id, v)).collect();
    format!(r#"{{"new":[{}],"deleted":null}}"#, new.join(","))
}

/// The empty delta.
pub fn empty() -> Reply {
    Reply::Body(r#"{"new":null,"deleted":null}"#.into())
}

impl Script {
    /// Sets the queue of startup answers.
    pub fn startup(&mut self, replies: impl IntoIterator<Item = Reply>) {
        self.startup = replies.into_iter().collect();
    }

    fn next(&mut self, startup: bool) -> Reply {
        if !startup {
            self.deltas += 1;
            return self.delta.clone().unwrap_or_else(empty);
        }
        self.startups += 1;
        if self.startup.len() > 1 {
            self.startup.pop_front().unwrap()
        } else {
            self.startup.front().cloned().unwrap_or_else(empty)
        }
    }
}

/// Starts the stand-in on 127.0.0.1; returns its URL.
pub async fn start(script: Shared) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    serve(listener, script);
    url
}

/// A stand-in that can be stopped (its port then refuses connections) and started again
/// on the same port.
pub struct Stoppable {
    pub url: String,
    pub port: u16,
    script: Shared,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts a [`Stoppable`] stand-in on a free loopback port.
pub async fn start_stoppable(script: Shared) -> Stoppable {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    Stoppable {
        url: format!("http://127.0.0.1:{port}"),
        port,
        script: script.clone(),
        task: Some(serve(listener, script)),
    }
}

impl Stoppable {
    /// Closes the listener: new connections are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn resume(&mut self) {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on port {} again: {e}", self.port),
            }
        };
        self.task = Some(serve(listener, self.script.clone()));
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: tokio::net::TcpListener, script: Shared) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let Some(head) = super::read_head(&mut sock).await else {
                    return;
                };
                let line = head.lines().next().unwrap_or("").to_string();
                let startup = line.contains("startup=true");
                let reply = {
                    let mut s = script.lock().unwrap();
                    s.requests.push(line.clone());
                    if line.starts_with("POST /v1/watchers/login") {
                        Reply::Body(
                            r#"{"code":200,"expire":"2030-01-01T00:00:00Z","token":"stand-in-token"}"#
                                .into(),
                        )
                    } else if line.starts_with("DELETE /v1/decisions") {
                        Reply::Body(r#"{"nbDeleted":"1"}"#.into())
                    } else {
                        s.next(startup)
                    }
                };
                let head = |status: u16, len: usize| {
                    format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                    )
                };
                let out = match reply {
                    Reply::Body(body) => head(200, body.len()) + &body,
                    Reply::Status(code, body) => head(code, body.len()) + &body,
                    Reply::Held(release, body) => {
                        let (first, rest) = body.split_at(body.len() / 2);
                        let start = head(200, body.len()) + first;
                        if sock.write_all(start.as_bytes()).await.is_err() {
                            return;
                        }
                        release.notified().await;
                        rest.to_string()
                    }
                    Reply::Hang => {
                        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                        return;
                    }
                };
                let _ = sock.write_all(out.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    })
}
