//! Changes asked from outside the sync (the admin API, tests): unban, delete by id, local
//! bans, "pull now". The writer has one owner, so these travel as [`Command`]s over a
//! channel to it: the sync loop in LAPI mode (which serves them even while a pull is in
//! flight), [`run_standalone`] otherwise. Each change is published before the caller
//! gets its answer, so the hot path sees it at once.
//!
//! An unban also records an override per lifted decision, by (id, target), in the same
//! SQLite transaction as the row delete, and answers once that is committed: a later
//! pull that still carries the decision (LAPI could not be told, or the pull started
//! before the delete) does not bring it back, nor does a crash right after the answer.
//! The overrides are re-applied after every pull. One is dropped only when the decision
//! would have expired *and* a full pull that left nothing else out no longer carried it
//! (nor any delta since), so a wall clock that is wrong (ahead at start, or jumped) cannot
//! end an override that still matters: LAPI still sending the decision keeps it.

use crate::clock::{self, ClockWatch};
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

/// An unban in force.
#[derive(Debug, Clone, Copy)]
struct Lift {
    /// The lifted decision's own expiry (unix seconds).
    until: u32,
    /// Whether the last full pull that left nothing else out did not carry the decision
    /// (and no delta carried it since).
    missed: bool,
}

/// The writer and what goes with it: persistence and the overrides.
pub struct Owner {
    pub writer: Writer,
    pub persist: Arc<Persister>,
    /// Lifted decisions by (id, target): an id LAPI reuses on another target is another
    /// decision.
    overrides: HashMap<(i64, Target), Lift>,
    /// The next local (negative) id; found on the first local ban, not at start.
    next_local_id: Option<i64>,
    /// Purges trust the wall clock only while it agrees with the monotonic one.
    clock: ClockWatch,
}

impl Owner {
    /// `overrides` as loaded from the database (all of them, also those past their
    /// expiry: see the module notes).
    pub fn new(writer: Writer, persist: Arc<Persister>, overrides: Vec<Override>) -> Owner {
        let overrides = overrides
            .into_iter()
            .filter_map(|o| match Target::parse(&o.value) {
                Some(t) => Some((
                    (o.id, t),
                    Lift {
                        until: o.until,
                        missed: false,
                    },
                )),
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
            clock: ClockWatch::new(),
        }
    }

    pub fn overrides(&self) -> usize {
        self.overrides.len()
    }

    /// True when the decision `id` on `target` was lifted by an unban still in force
    /// (LAPI still sends it: the override keeps mattering).
    pub fn is_lifted(&mut self, id: i64, target: Target) -> bool {
        match self.overrides.get_mut(&(id, target)) {
            Some(lift) => {
                lift.missed = false;
                true
            }
            None => false,
        }
    }

    /// Removes the overridden decisions from the writer after a full pull, before its
    /// publish; returns how many were there. `whole`: the pull left out nothing held (it
    /// was not shorter than what is known), so what it does not carry, LAPI no longer has;
    /// then overrides past their expiry that it did not carry are dropped.
    pub fn apply_overrides(&mut self, whole: bool, now: u32) -> usize {
        let mut n = 0;
        for (&(id, target), lift) in self.overrides.iter_mut() {
            if self.writer.remove(id, target) {
                lift.missed = false;
                n += 1;
            } else if whole {
                lift.missed = true;
            }
        }
        self.drop_spent_overrides(now);
        n
    }

    /// Drops (memory and disk) the overrides past their expiry at `now` whose decision
    /// LAPI no longer sends.
    fn drop_spent_overrides(&mut self, now: u32) {
        let mut spent = Vec::new();
        self.overrides.retain(|&key, lift| {
            let keep = lift.until > now || !lift.missed;
            if !keep {
                spent.push(key);
            }
            keep
        });
        if !spent.is_empty() {
            tracing::debug!("{} overrides ended with their decisions", spent.len());
            self.persist.drop_overrides(&spent);
        }
    }

    /// Checks the wall clock against the monotonic one since the last check: `Some(ms)`
    /// (logged and counted) when it jumped.
    pub fn clock_jumped(&mut self) -> Option<i64> {
        let jump = self.clock.check()?;
        let direction = if jump > 0 { "forward" } else { "backward" };
        metrics::counter!(crate::metrics::CLOCK_JUMPS, "direction" => direction).increment(1);
        warn!(
            "the wall clock jumped {direction} by {:.0}s (against the monotonic clock): \
             no purge on it; decisions are refreshed by a full resync (when there is a LAPI)",
            jump.unsigned_abs() as f64 / 1000.0
        );
        Some(jump)
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
                self.lift(found, reply);
            }
            Command::DeleteId { id, reply } => {
                let mut found = Vec::new();
                self.writer.pending().for_each(|t, v, m| {
                    if v.id() == id {
                        found.push(Listed::new(t, v, m));
                    }
                });
                self.lift(found, reply);
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
                self.persist.delta(decisions.clone(), &[]);
                let _ = reply.send(decisions);
            }
            Command::PullNow { reply } => return Some(reply),
        }
        None
    }

    /// Removes the decisions and publishes at once; the row deletes and the overrides go
    /// to SQLite in one transaction, and `reply` is answered once it is committed.
    fn lift(&mut self, found: Vec<Listed>, reply: oneshot::Sender<Vec<Listed>>) {
        if found.is_empty() {
            let _ = reply.send(found);
            return;
        }
        let mut overrides = Vec::new();
        for d in &found {
            self.writer.remove(d.id, d.target);
            if d.id >= 0 {
                let lift = Lift {
                    until: d.expires_at,
                    missed: false,
                };
                self.overrides.insert((d.id, d.target), lift);
                overrides.push(Override {
                    id: d.id,
                    value: d.value.clone(),
                    until: d.expires_at,
                });
            }
        }
        self.writer.publish();
        info!(
            "unbanned {} decision(s): {}",
            found.len(),
            found
                .iter()
                .map(|d| format!("#{} {} {} ({})", d.id, d.type_name, d.value, d.origin))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows: Vec<(i64, Target)> = found.iter().map(|d| (d.id, d.target)).collect();
        // A failed commit is logged and counted by the persist thread; memory is right.
        self.persist.unban(&rows, overrides, move |_| {
            let _ = reply.send(found);
        });
    }

    /// Drops expired decisions and spent overrides from memory and disk, unless the wall
    /// clock jumped since the last check: then nothing is purged and the jump is returned.
    pub fn purge(&mut self) -> Option<i64> {
        if let Some(jump) = self.clock_jumped() {
            return Some(jump);
        }
        self.purge_at(clock::now_secs_precise());
        None
    }

    /// The purge at unix second `now`: decisions expired at `now`; overrides past their
    /// expiry whose decision LAPI no longer sends.
    pub fn purge_at(&mut self, now: u32) {
        self.drop_spent_overrides(now);
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
            _ = purge.tick() => {
                // A jump is logged; the next tick purges on the new clock.
                let _ = owner.purge();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::tests::dec;
    use crate::persist::Db;
    use crate::store::Decider;
    use std::sync::mpsc as std_mpsc;

    fn owner(dir: &std::path::Path, overrides: Vec<Override>) -> Owner {
        let persist = Arc::new(Db::open(dir).unwrap().into_writer());
        Owner::new(Decider::new().writer(), persist, overrides)
    }

    fn insert(o: &mut Owner, d: Decision) {
        let (reply, _answer) = oneshot::channel();
        o.handle(Command::Insert {
            decisions: vec![d],
            assign_ids: false,
            reply,
        });
    }

    fn unban(o: &mut Owner, value: &str) -> oneshot::Receiver<Vec<Listed>> {
        let (reply, answer) = oneshot::channel();
        o.handle(Command::Unban {
            target: Target::parse(value).unwrap(),
            reply,
        });
        answer
    }

    fn rows(dir: &std::path::Path) -> (Vec<i64>, Vec<Override>) {
        // A connection of its own: sees only what is committed.
        let db = Db::open(dir).unwrap();
        let mut ids = Vec::new();
        db.load_decisions(0, |d| ids.push(d.id)).unwrap();
        ids.sort();
        (ids, db.load_overrides(0).unwrap())
    }

    /// Item 7: the unban answers only once the row delete and the override are committed.
    #[test]
    fn unban_answers_after_delete_and_override_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = owner(dir.path(), Vec::new());
        let far = clock::now_secs_precise() + 3600;
        insert(&mut o, dec(7, "192.0.2.7", far));
        insert(&mut o, dec(8, "192.0.2.8", far));
        o.persist.flush();
        // Hold the persist thread, as a slow disk would.
        let (release, held) = std_mpsc::channel::<()>();
        o.persist.run(move |_| {
            let _ = held.recv();
        });
        let mut answer = unban(&mut o, "192.0.2.7");
        assert!(
            answer.try_recv().is_err(),
            "the unban answered before anything was written"
        );
        // The hot path already has it lifted.
        assert!(!o.writer.contains(7, Target::parse("192.0.2.7").unwrap()));
        release.send(()).unwrap();
        let lifted = answer.blocking_recv().unwrap();
        assert_eq!(lifted.iter().map(|d| d.id).collect::<Vec<_>>(), vec![7]);
        let (ids, overrides) = rows(dir.path());
        assert_eq!(ids, vec![8]);
        assert_eq!(
            overrides,
            vec![Override {
                id: 7,
                value: "192.0.2.7".into(),
                until: far
            }]
        );
    }

    /// Item 7: delete and override are one transaction: when the override cannot be
    /// written, the row delete is rolled back too (no decision lost without its override
    /// on disk, which a restart would otherwise bring back).
    #[test]
    fn unban_delete_and_override_commit_together() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = owner(dir.path(), Vec::new());
        let far = clock::now_secs_precise() + 3600;
        insert(&mut o, dec(7, "192.0.2.7", far));
        o.persist
            .run(|c| c.execute_batch("DROP TABLE overrides").unwrap());
        let lifted = unban(&mut o, "192.0.2.7").blocking_recv().unwrap();
        assert_eq!(lifted.len(), 1);
        let db = Db::open(dir.path()).unwrap();
        let mut ids = Vec::new();
        db.load_decisions(0, |d| ids.push(d.id)).unwrap();
        assert_eq!(
            ids,
            vec![7],
            "the delete was committed without its override"
        );
    }

    /// Item 4: overrides match by (id, target).
    #[test]
    fn an_override_lifts_its_own_target_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = owner(
            dir.path(),
            vec![Override {
                id: 5,
                value: "192.0.2.1".into(),
                until: u32::MAX,
            }],
        );
        assert!(o.is_lifted(5, Target::parse("192.0.2.1").unwrap()));
        assert!(!o.is_lifted(5, Target::parse("192.0.2.2").unwrap()));
        o.writer.insert(&dec(5, "192.0.2.2", u32::MAX));
        o.writer.insert(&dec(5, "192.0.2.1", u32::MAX));
        assert_eq!(o.apply_overrides(true, 0), 1);
        assert!(o.writer.contains(5, Target::parse("192.0.2.2").unwrap()));
        assert!(!o.writer.contains(5, Target::parse("192.0.2.1").unwrap()));
    }

    /// Item 6: a clock past an override's expiry ends it only once a whole full pull no
    /// longer carried its decision; a short one (that left held decisions out) does not.
    #[test]
    fn overrides_outlive_a_clock_ahead_while_lapi_still_sends_them() {
        let dir = tempfile::tempdir().unwrap();
        let gone = Override {
            id: 1,
            value: "192.0.2.1".into(),
            until: 100,
        };
        let sent = Override {
            id: 2,
            value: "192.0.2.2".into(),
            until: 100,
        };
        let mut o = owner(dir.path(), vec![gone.clone(), sent.clone()]);
        o.persist.add_overrides(vec![gone.clone(), sent.clone()]);
        let far_ahead = 2_000_000_000;
        o.purge_at(far_ahead);
        assert_eq!(o.overrides(), 2, "no full pull said anything yet");
        // Full pulls carrying decision 2 only: a short one, then a whole one.
        o.writer.insert(&dec(2, "192.0.2.2", u32::MAX));
        o.apply_overrides(false, far_ahead);
        o.purge_at(far_ahead);
        assert_eq!(o.overrides(), 2, "a short pull ended an override");
        o.writer.insert(&dec(2, "192.0.2.2", u32::MAX));
        o.apply_overrides(true, far_ahead);
        o.purge_at(far_ahead);
        assert_eq!(o.overrides(), 1);
        assert!(o.is_lifted(2, Target::parse("192.0.2.2").unwrap()));
        o.persist.flush();
        assert_eq!(rows(dir.path()).1, vec![sent]);
    }
}
