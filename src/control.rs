//! Changes asked from outside the sync (the admin API, tests): unban, delete by id, local
//! bans, "pull now". The writer has one owner, so these travel as [`Command`]s over a
//! channel to it: the sync loop in LAPI mode (which serves them even while a pull is in
//! flight), [`run_standalone`] otherwise. Each change is published before the caller
//! gets its answer, so the hot path sees it at once.
//!
//! An unban also records an override per lifted decision id, kept in SQLite until the
//! decision would have expired: a later full resync that still carries the decision
//! (LAPI could not be told, or the pull started before the delete) does not bring it
//! back. The overrides are re-applied after every pull.

use crate::clock;
use crate::decision::{Decision, Target};
use crate::persist::{Override, Persister};
use crate::store::Writer;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

/// A decision as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: i64,
    pub target: Target,
    pub value: String,
    pub scope: &'static str,
    pub type_name: String,
    pub origin: String,
    pub scenario: String,
    pub expires_at: u32,
}

impl Listed {
    pub fn new(target: Target, v: crate::store::Verdict, meta: &crate::store::Meta) -> Listed {
        Listed {
            id: v.id(),
            target,
            value: target.to_string(),
            scope: target.scope(),
            type_name: meta.type_name.to_string(),
            origin: meta.origin.to_string(),
            scenario: meta.scenario.to_string(),
            expires_at: v.expires_at(),
        }
    }
}

pub enum Command {
    /// Lifts every decision whose target contains this one.
    Unban {
        target: Target,
        reply: oneshot::Sender<Vec<Listed>>,
    },
    /// Lifts one decision by id.
    DeleteId {
        id: i64,
        reply: oneshot::Sender<Vec<Listed>>,
    },
    /// Adds decisions (standalone bans; tests). With `assign_ids`, each gets a fresh
    /// negative id, which LAPI never uses.
    Insert {
        decisions: Vec<Decision>,
        assign_ids: bool,
        reply: oneshot::Sender<Vec<Decision>>,
    },
    /// Pulls from LAPI now; answered once a pull that started after the ask is applied.
    PullNow {
        reply: oneshot::Sender<Result<(), String>>,
    },
}

/// The daemon stopped before answering.
#[derive(Debug, thiserror::Error)]
#[error("cerberus is shutting down")]
pub struct Gone;

/// The sending side, cheap to clone.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Command>,
}

impl Control {
    pub fn channel() -> (Control, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(256);
        (Control { tx }, rx)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Gone> {
        let (reply, answer) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Gone)?;
        answer.await.map_err(|_| Gone)
    }

    pub async fn unban(&self, target: Target) -> Result<Vec<Listed>, Gone> {
        self.ask(|reply| Command::Unban { target, reply }).await
    }

    pub async fn delete_id(&self, id: i64) -> Result<Vec<Listed>, Gone> {
        self.ask(|reply| Command::DeleteId { id, reply }).await
    }

    /// Inserts decisions as they are (ids included) and publishes.
    pub async fn insert(&self, decisions: Vec<Decision>) -> Result<Vec<Decision>, Gone> {
        self.ask(|reply| Command::Insert {
            decisions,
            assign_ids: false,
            reply,
        })
        .await
    }

    /// Adds a local decision with a fresh negative id; returns it.
    pub async fn ban_local(&self, decision: Decision) -> Result<Decision, Gone> {
        let mut out = self
            .ask(|reply| Command::Insert {
                decisions: vec![decision],
                assign_ids: true,
                reply,
            })
            .await?;
        out.pop().ok_or(Gone)
    }

    pub async fn pull_now(&self) -> Result<Result<(), String>, Gone> {
        self.ask(|reply| Command::PullNow { reply }).await
    }
}

/// The writer and what goes with it: persistence and the overrides.
pub struct Owner {
    pub writer: Writer,
    pub persist: Arc<Persister>,
    /// Lifted decision ids and until when (unix seconds), with their targets.
    overrides: HashMap<i64, (Target, u32)>,
    /// The next local (negative) id; found on the first local ban, not at start.
    next_local_id: Option<i64>,
}

impl Owner {
    /// `overrides` as loaded from the database.
    pub fn new(writer: Writer, persist: Arc<Persister>, overrides: Vec<Override>) -> Owner {
        let overrides = overrides
            .into_iter()
            .filter_map(|o| match Target::parse(&o.value) {
                Some(t) => Some((o.id, (t, o.until))),
                None => {
                    warn!("dropping unreadable override for {:?}", o.value);
                    None
                }
            })
            .collect();
        Owner {
            writer,
            persist,
            overrides,
            next_local_id: None,
        }
    }

    pub fn overrides(&self) -> usize {
        self.overrides.len()
    }

    /// True when `id` was lifted by an unban that is still in force.
    pub fn is_lifted(&self, id: i64) -> bool {
        self.overrides.contains_key(&id)
    }

    /// Removes the overridden decisions from the writer (after a pull, before its
    /// publish); returns how many were there.
    pub fn apply_overrides(&mut self) -> usize {
        let mut n = 0;
        for (&id, &(target, _)) in &self.overrides {
            n += usize::from(self.writer.remove(id, target));
        }
        n
    }

    /// Handles every command but `PullNow`, which is handed back.
    pub fn handle(&mut self, cmd: Command) -> Option<oneshot::Sender<Result<(), String>>> {
        match cmd {
            Command::Unban { target, reply } => {
                let found: Vec<Listed> = self
                    .writer
                    .pending()
                    .covering(target)
                    .into_iter()
                    .map(|(t, v, m)| Listed::new(t, v, m))
                    .collect();
                let _ = reply.send(self.lift(found));
            }
            Command::DeleteId { id, reply } => {
                let mut found = Vec::new();
                self.writer.pending().for_each(|t, v, m| {
                    if v.id() == id {
                        found.push(Listed::new(t, v, m));
                    }
                });
                let _ = reply.send(self.lift(found));
            }
            Command::Insert {
                mut decisions,
                assign_ids,
                reply,
            } => {
                for d in &mut decisions {
                    if assign_ids {
                        let id = *self.next_local_id.get_or_insert_with(|| {
                            let mut lowest = 0i64;
                            self.writer
                                .pending()
                                .for_each(|_, v, _| lowest = lowest.min(v.id()));
                            lowest - 1
                        });
                        d.id = id;
                        self.next_local_id = Some(id - 1);
                    }
                    self.writer.insert(d);
                }
                self.writer.publish();
                self.persist.delta(decisions.clone(), Vec::new());
                let _ = reply.send(decisions);
            }
            Command::PullNow { reply } => return Some(reply),
        }
        None
    }

    /// Removes the decisions, publishes, and records the overrides.
    fn lift(&mut self, found: Vec<Listed>) -> Vec<Listed> {
        if found.is_empty() {
            return found;
        }
        let mut overrides = Vec::new();
        for d in &found {
            self.writer.remove(d.id, d.target);
            if d.id >= 0 {
                self.overrides.insert(d.id, (d.target, d.expires_at));
                overrides.push(Override {
                    id: d.id,
                    value: d.value.clone(),
                    until: d.expires_at,
                });
            }
        }
        self.writer.publish();
        self.persist
            .delta(Vec::new(), found.iter().map(|d| d.id).collect());
        self.persist.add_overrides(overrides);
        info!(
            "unbanned {} decision(s): {}",
            found.len(),
            found
                .iter()
                .map(|d| format!("#{} {} {} ({})", d.id, d.type_name, d.value, d.origin))
                .collect::<Vec<_>>()
                .join(", ")
        );
        found
    }

    /// Drops expired decisions and overrides from memory and disk.
    pub fn purge(&mut self) {
        let now = clock::now_secs_precise();
        self.overrides.retain(|_, &mut (_, until)| until > now);
        let n = self.writer.purge_expired(now);
        if n > 0 {
            self.writer.publish();
            tracing::debug!("purged {n} expired decisions");
        }
        self.persist.purge(now);
    }
}

/// The owner's loop in standalone mode: commands, and a purge every minute.
pub async fn run_standalone(
    mut owner: Owner,
    mut commands: mpsc::Receiver<Command>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut purge = tokio::time::interval(Duration::from_secs(60));
    purge.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = purge.tick() => owner.purge(),
            cmd = commands.recv() => match cmd {
                None => break,
                Some(cmd) => {
                    if let Some(reply) = owner.handle(cmd) {
                        let _ = reply.send(Err("standalone mode: there is no LAPI to pull from".into()));
                    }
                }
            },
        }
    }
}
