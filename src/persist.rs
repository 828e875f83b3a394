//! SQLite in `data_dir` (WAL): the decisions, settings and local overrides, so that
//! blocking resumes at once after a restart. Reads happen at start; every write goes
//! through one writer thread, in order, off the async runtime.

use crate::decision::{Decision, Target};
use crate::store::Snapshot;
use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use tracing::{debug, error, info, warn};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    value TEXT NOT NULL,
    type TEXT NOT NULL,
    origin TEXT NOT NULL,
    scenario TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (
    value TEXT NOT NULL,
    decision_id INTEGER NOT NULL,
    until INTEGER NOT NULL,
    PRIMARY KEY (value, decision_id)
);
";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot move the corrupt database {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The database, opened and checked.
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// What loading found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub decisions: usize,
    pub expired: usize,
    pub unreadable: usize,
}

impl Db {
    /// Opens `data_dir/cerberus.db`, creating it if needed. A file that is not a database or
    /// fails SQLite's quick check is moved aside (`cerberus.db.corrupt-<unix time>`) and a new
    /// one is created: LAPI is the source of truth and refills it.
    pub fn open(data_dir: &Path) -> Result<Db, PersistError> {
        let path = data_dir.join("cerberus.db");
        match Db::open_checked(&path) {
            Ok(db) => Ok(db),
            Err(e) => {
                let aside = data_dir.join(format!(
                    "cerberus.db.corrupt-{}",
                    crate::clock::now_secs_precise()
                ));
                error!(
                    "database {} is unusable ({e}); moving it to {} and starting with an empty one \
                     (decisions come back with the next LAPI sync)",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(&path, &aside).map_err(|source| PersistError::MoveAside {
                    path: path.clone(),
                    source,
                })?;
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", path.display()));
                    if side.exists() {
                        let _ = std::fs::rename(&side, format!("{}{suffix}", aside.display()));
                    }
                }
                Db::open_checked(&path)
            }
        }
    }

    fn open_checked(path: &Path) -> Result<Db, PersistError> {
        let wrap = |source| PersistError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .map_err(wrap)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(wrap)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(wrap)?;
        if check != "ok" {
            return Err(wrap(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(format!("quick_check: {check}")),
            )));
        }
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(wrap)?;
        conn.execute_batch(SCHEMA).map_err(wrap)?;
        Ok(Db {
            conn,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Feeds every persisted, unexpired decision to `f`.
    pub fn load_decisions(
        &self,
        now: u32,
        mut f: impl FnMut(Decision),
    ) -> Result<Loaded, PersistError> {
        let wrap = |source| PersistError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut loaded = Loaded::default();
        let mut stmt = self
            .conn
            .prepare("SELECT id, value, type, origin, scenario, expires_at FROM decisions")
            .map_err(wrap)?;
        let mut rows = stmt.query([]).map_err(wrap)?;
        while let Some(row) = rows.next().map_err(wrap)? {
            let expires_at: i64 = row.get(5).map_err(wrap)?;
            if expires_at <= now as i64 {
                loaded.expired += 1;
                continue;
            }
            let value: String = row.get(1).map_err(wrap)?;
            let Some(target) = Target::parse(&value) else {
                warn!("skipping persisted decision with unreadable value {value:?}");
                loaded.unreadable += 1;
                continue;
            };
            f(Decision {
                id: row.get(0).map_err(wrap)?,
                target,
                type_name: row.get(2).map_err(wrap)?,
                origin: row.get(3).map_err(wrap)?,
                scenario: row.get(4).map_err(wrap)?,
                expires_at: expires_at.clamp(0, u32::MAX as i64) as u32,
            });
            loaded.decisions += 1;
        }
        Ok(loaded)
    }

    /// The local overrides (unbans LAPI does not know about) still in force at `now`.
    pub fn load_overrides(&self, now: u32) -> Result<Vec<Override>, PersistError> {
        let wrap = |source| PersistError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let mut stmt = self
            .conn
            .prepare("SELECT decision_id, value, until FROM overrides WHERE until > ?1")
            .map_err(wrap)?;
        let rows = stmt
            .query_map([now], |r| {
                Ok(Override {
                    id: r.get(0)?,
                    value: r.get(1)?,
                    until: r.get::<_, i64>(2)?.clamp(0, u32::MAX as i64) as u32,
                })
            })
            .map_err(wrap)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(wrap)
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, PersistError> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })
            .map_err(|source| PersistError::Sqlite {
                path: self.path.clone(),
                source,
            })
    }

    /// Moves the connection to a writer thread and returns the handle that feeds it.
    pub fn into_writer(self) -> Persister {
        let (tx, rx) = mpsc::channel::<Op>();
        let thread = std::thread::Builder::new()
            .name("cerberus-persist".into())
            .spawn(move || writer_loop(self, rx))
            .expect("spawn persist thread");
        Persister {
            tx,
            thread: Some(thread),
        }
    }
}

/// An unbanned decision: LAPI's decision `id` on `value` stays lifted until `until`
/// (the decision's own expiry), whatever later pulls say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub id: i64,
    pub value: String,
    pub until: u32,
}

/// Called by the persist thread once an unban is committed (`Err` when it could not be).
pub type Then = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Op {
    Replace(Arc<Snapshot>),
    Overrides(Vec<Override>),
    Delta {
        upserts: Vec<Decision>,
        deletes: Vec<(i64, String)>,
    },
    /// Row deletes and the overrides of one unban, in one transaction.
    Unban {
        deletes: Vec<(i64, String)>,
        overrides: Vec<Override>,
        then: Then,
    },
    Purge(u32),
    DropOverrides(Vec<(i64, String)>),
    #[cfg(test)]
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
    Setting(String, String),
    Flush(mpsc::Sender<()>),
}

/// Queues writes for the persist thread. Cloning the sender is cheap; dropping the last
/// `Persister` lets the thread finish what is queued and exit.
pub struct Persister {
    tx: mpsc::Sender<Op>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Persister {
    /// Replaces every stored decision with the snapshot's (after a full sync).
    pub fn replace(&self, snapshot: Arc<Snapshot>) {
        self.send(Op::Replace(snapshot));
    }

    /// Upserts decisions and deletes the rows of (id, target) pairs.
    pub fn delta(&self, upserts: Vec<Decision>, deletes: &[(i64, Target)]) {
        if !upserts.is_empty() || !deletes.is_empty() {
            self.send(Op::Delta {
                upserts,
                deletes: rows(deletes),
            });
        }
    }

    /// Deletes the rows of an unban's decisions and records its overrides in one
    /// transaction; `then` runs on the persist thread once that is committed (or failed).
    pub fn unban(
        &self,
        deletes: &[(i64, Target)],
        overrides: Vec<Override>,
        then: impl FnOnce(Result<(), String>) + Send + 'static,
    ) {
        let op = Op::Unban {
            deletes: rows(deletes),
            overrides,
            then: Box::new(then),
        };
        if let Err(mpsc::SendError(Op::Unban { then, .. })) = self.tx.send(op) {
            error!("persist thread is gone; the unban is kept in memory only");
            then(Err("the persist thread is gone".into()));
        }
    }

    /// Drops decisions expired at `now` (overrides go only by [`Persister::drop_overrides`]).
    pub fn purge(&self, now: u32) {
        self.send(Op::Purge(now));
    }

    /// Deletes these overrides.
    pub fn drop_overrides(&self, overrides: &[(i64, Target)]) {
        if !overrides.is_empty() {
            self.send(Op::DropOverrides(rows(overrides)));
        }
    }

    /// Runs `f` on the writer thread's connection, in order with the other writes (tests:
    /// to hold the thread, or to break the schema).
    #[cfg(test)]
    pub(crate) fn run(&self, f: impl FnOnce(&mut Connection) + Send + 'static) {
        self.send(Op::Run(Box::new(f)));
    }

    pub fn add_overrides(&self, overrides: Vec<Override>) {
        if !overrides.is_empty() {
            self.send(Op::Overrides(overrides));
        }
    }

    pub fn set_setting(&self, key: &str, value: &str) {
        self.send(Op::Setting(key.into(), value.into()));
    }

    /// Waits until everything queued so far is written.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let _ = rx.recv();
    }

    /// Writes what is queued and stops the thread.
    pub fn close(mut self) {
        self.flush();
        let (dead_tx, _) = mpsc::channel();
        self.tx = dead_tx;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn send(&self, op: Op) {
        if self.tx.send(op).is_err() {
            error!("persist thread is gone; the change is kept in memory only");
        }
    }
}

/// (id, target) pairs as rows are keyed: (id, value).
fn rows(pairs: &[(i64, Target)]) -> Vec<(i64, String)> {
    pairs.iter().map(|&(id, t)| (id, t.to_string())).collect()
}

fn writer_loop(mut db: Db, rx: mpsc::Receiver<Op>) {
    while let Ok(op) = rx.recv() {
        let what = match &op {
            Op::Replace(_) => "full replace",
            Op::Overrides(_) => "override",
            Op::Delta { .. } => "delta",
            Op::Unban { .. } => "unban",
            Op::Purge(_) => "purge",
            Op::DropOverrides(_) => "override removal",
            #[cfg(test)]
            Op::Run(_) => "test step",
            Op::Setting(..) => "setting",
            Op::Flush(_) => "flush",
        };
        let started = std::time::Instant::now();
        let result = match op {
            Op::Replace(snap) => write_replace(&mut db.conn, &snap),
            Op::Delta { upserts, deletes } => write_delta(&mut db.conn, &upserts, &deletes),
            Op::Unban {
                deletes,
                overrides,
                then,
            } => {
                let result = write_unban(&mut db.conn, &deletes, &overrides);
                then(result.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                result
            }
            Op::Purge(now) => db
                .conn
                .execute("DELETE FROM decisions WHERE expires_at <= ?1", [now])
                .map(|_| ()),
            Op::DropOverrides(list) => write_drop_overrides(&mut db.conn, &list),
            #[cfg(test)]
            Op::Run(f) => {
                f(&mut db.conn);
                Ok(())
            }
            Op::Overrides(list) => write_overrides(&mut db.conn, &list),
            Op::Setting(k, v) => db
                .conn
                .execute(
                    "INSERT INTO settings (key, value) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    params![k, v],
                )
                .map(|_| ()),
            Op::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        match result {
            Ok(()) => debug!("persisted {what} in {:?}", started.elapsed()),
            Err(e) => {
                metrics::counter!(crate::metrics::PERSIST_ERRORS).increment(1);
                error!(
                    "could not persist a {what} to {}: {e}; memory stays right, a restart \
                     before the next full sync may enforce stale data",
                    db.path.display()
                );
            }
        }
    }
}

fn write_replace(conn: &mut Connection, snap: &Snapshot) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute("DELETE FROM decisions", [])?;
    {
        let mut insert = tx.prepare(
            "INSERT OR REPLACE INTO decisions (id, value, type, origin, scenario, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut result = Ok(());
        snap.for_each(|target, v, meta| {
            if result.is_ok() {
                result = insert
                    .execute(params![
                        v.id(),
                        target.to_string(),
                        &*meta.type_name,
                        &*meta.origin,
                        &*meta.scenario,
                        v.expires_at()
                    ])
                    .map(|_| ());
            }
        });
        result?;
    }
    tx.commit()?;
    // Keep the WAL from growing with every full sync.
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    info!("persisted {} decisions", snap.len());
    Ok(())
}

fn write_overrides(conn: &mut Connection, list: &[Override]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    insert_overrides(&tx, list)?;
    tx.commit()
}

fn insert_overrides(tx: &rusqlite::Transaction, list: &[Override]) -> rusqlite::Result<()> {
    let mut insert = tx.prepare(
        "INSERT OR REPLACE INTO overrides (value, decision_id, until) VALUES (?1, ?2, ?3)",
    )?;
    for o in list {
        insert.execute(params![o.value, o.id, o.until])?;
    }
    Ok(())
}

/// Deletes decision rows by (id, value): a reused id on another target keeps its row.
fn delete_rows(tx: &rusqlite::Transaction, deletes: &[(i64, String)]) -> rusqlite::Result<()> {
    let mut del = tx.prepare("DELETE FROM decisions WHERE id = ?1 AND value = ?2")?;
    for (id, value) in deletes {
        del.execute(params![id, value])?;
    }
    Ok(())
}

fn write_unban(
    conn: &mut Connection,
    deletes: &[(i64, String)],
    overrides: &[Override],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    delete_rows(&tx, deletes)?;
    insert_overrides(&tx, overrides)?;
    tx.commit()
}

fn write_drop_overrides(conn: &mut Connection, list: &[(i64, String)]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut del = tx.prepare("DELETE FROM overrides WHERE decision_id = ?1 AND value = ?2")?;
        for (id, value) in list {
            del.execute(params![id, value])?;
        }
    }
    tx.commit()
}

fn write_delta(
    conn: &mut Connection,
    upserts: &[Decision],
    deletes: &[(i64, String)],
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    delete_rows(&tx, deletes)?;
    {
        let mut insert = tx.prepare(
            "INSERT OR REPLACE INTO decisions (id, value, type, origin, scenario, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for d in upserts {
            insert.execute(params![
                d.id,
                d.target.to_string(),
                d.type_name,
                d.origin,
                d.scenario,
                d.expires_at
            ])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Decider;

    /// A ban from cscli (shared with the control tests).
    pub(crate) fn dec(id: i64, value: &str, expires_at: u32) -> Decision {
        Decision {
            id,
            target: Target::parse(value).unwrap(),
            type_name: "ban".into(),
            origin: "cscli".into(),
            scenario: "test".into(),
            expires_at,
        }
    }

    fn load_all(dir: &Path, now: u32) -> (Vec<Decision>, Loaded) {
        let db = Db::open(dir).unwrap();
        let mut out = Vec::new();
        let loaded = db.load_decisions(now, |d| out.push(d)).unwrap();
        out.sort_by_key(|d| d.id);
        (out, loaded)
    }

    #[test]
    fn replace_delta_purge_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let decider = Decider::new();
        let mut w = decider.writer();
        for d in [
            dec(1, "192.0.2.1", 100),
            dec(2, "10.0.0.0/8", 200),
            dec(3, "2001:db8::1", 300),
        ] {
            w.insert(&d);
        }
        w.insert(&Decision {
            type_name: "captcha".into(),
            ..dec(4, "192.0.2.1", 400)
        });
        let snap = w.publish();
        let p = Db::open(dir.path()).unwrap().into_writer();
        p.replace(snap);
        p.delta(
            vec![dec(5, "2001:db8::/32", 500)],
            &[(3, Target::parse("2001:db8::1").unwrap())],
        );
        p.set_setting("enabled", "false");
        p.add_overrides(vec![
            Override {
                id: 1,
                value: "192.0.2.1".into(),
                until: 100,
            },
            Override {
                id: 2,
                value: "10.0.0.0/8".into(),
                until: 300,
            },
        ]);
        p.close();
        let (all, loaded) = load_all(dir.path(), 0);
        assert_eq!(loaded.decisions, 4);
        let values: Vec<(i64, String, String)> = all
            .iter()
            .map(|d| (d.id, d.target.to_string(), d.type_name.clone()))
            .collect();
        assert_eq!(
            values,
            vec![
                (1, "192.0.2.1".into(), "ban".into()),
                (2, "10.0.0.0/8".into(), "ban".into()),
                (4, "192.0.2.1".into(), "captcha".into()),
                (5, "2001:db8::/32".into(), "ban".into()),
            ]
        );
        let (_, loaded) = load_all(dir.path(), 250);
        assert_eq!((loaded.decisions, loaded.expired), (2, 2));
        let p = Db::open(dir.path()).unwrap();
        assert_eq!(p.setting("enabled").unwrap().as_deref(), Some("false"));
        assert_eq!(p.setting("missing").unwrap(), None);
        assert_eq!(p.load_overrides(0).unwrap().len(), 2);
        assert_eq!(
            p.load_overrides(100).unwrap(),
            vec![Override {
                id: 2,
                value: "10.0.0.0/8".into(),
                until: 300
            }]
        );
        let p = p.into_writer();
        p.purge(300);
        p.close();
        // A purge leaves overrides alone; they go one by one, by (id, value).
        assert_eq!(
            Db::open(dir.path())
                .unwrap()
                .load_overrides(0)
                .unwrap()
                .len(),
            2
        );
        let p = Db::open(dir.path()).unwrap().into_writer();
        p.drop_overrides(&[
            (1, Target::parse("192.0.2.1").unwrap()),
            (2, Target::parse("10.0.0.1").unwrap()),
        ]);
        p.close();
        assert_eq!(
            Db::open(dir.path()).unwrap().load_overrides(0).unwrap(),
            vec![Override {
                id: 2,
                value: "10.0.0.0/8".into(),
                until: 300
            }]
        );
        let (all, _) = load_all(dir.path(), 0);
        assert_eq!(all.iter().map(|d| d.id).collect::<Vec<_>>(), vec![4, 5]);
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cerberus.db"), vec![0x42u8; 8192]).unwrap();
        let db = Db::open(dir.path()).unwrap();
        assert_eq!(db.load_decisions(0, |_| {}).unwrap(), Loaded::default());
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("cerberus.db.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
    }
}
