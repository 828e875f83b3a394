//! A journal of file changes that can be undone whole: files written atomically (temp
//! file + rename, so no reader sees half a file), every replaced file copied to a backup
//! directory first, links created or removed, directories created. Rolling back restores
//! the backups (content, mode and mtime), removes what was created, and puts back the
//! mtimes of the directories it touched, so the tree is as it was.

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A failed step: what, where, why.
#[derive(Debug)]
pub(crate) struct StepError {
    pub action: &'static str,
    pub path: PathBuf,
    pub error: io::Error,
}

type Step<T> = Result<T, StepError>;

fn step<T>(action: &'static str, path: &Path, r: io::Result<T>) -> Step<T> {
    r.map_err(|error| StepError {
        action,
        path: path.to_path_buf(),
        error,
    })
}

#[derive(Debug)]
enum Undo {
    CreatedDir(PathBuf),
    CreatedFile(PathBuf),
    ReplacedFile {
        path: PathBuf,
        backup: PathBuf,
        mode: u32,
        mtime: SystemTime,
    },
    CreatedLink(PathBuf),
    RemovedLink {
        path: PathBuf,
        target: PathBuf,
        mtime: Option<SystemTime>,
    },
}

/// One change set. Drop without [`Txn::commit`] or [`Txn::rollback`] leaves the changes
/// in place (callers always call one of them).
#[derive(Debug)]
pub(crate) struct Txn {
    undo: Vec<Undo>,
    dir_mtimes: BTreeMap<PathBuf, SystemTime>,
    backup_dir: PathBuf,
    backups: usize,
}

impl Txn {
    /// A transaction whose backups go to `backup_dir` (created on the first backup).
    pub fn new(backup_dir: PathBuf) -> Txn {
        Txn {
            undo: Vec::new(),
            dir_mtimes: BTreeMap::new(),
            backup_dir,
            backups: 0,
        }
    }

    /// True when nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Writes `bytes` to `path` (mode 0644), creating its parents; a file already there
    /// is first copied to `backup_dir/backup_name`.
    pub fn write_file(&mut self, path: &Path, bytes: &[u8], backup_name: &Path) -> Step<()> {
        let parent = parent_of(path);
        self.create_dirs(&parent)?;
        self.note_dir(&parent);
        let existing = match fs::symlink_metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return step("inspect", path, Err(e)),
        };
        let replaced = match existing {
            Some(meta) if meta.file_type().is_file() => {
                let backup = self.backup_dir.join(backup_name);
                copy_with_times(path, &backup, &meta)?;
                self.backups += 1;
                Some(Undo::ReplacedFile {
                    path: path.to_path_buf(),
                    backup,
                    mode: meta.permissions().mode(),
                    mtime: step("read the mtime of", path, meta.modified())?,
                })
            }
            Some(_) => {
                return step(
                    "replace",
                    path,
                    Err(io::Error::other("it is not a regular file; move it away")),
                )
            }
            None => None,
        };
        write_atomic(path, bytes, 0o644, None)?;
        self.undo
            .push(replaced.unwrap_or_else(|| Undo::CreatedFile(path.to_path_buf())));
        Ok(())
    }

    /// Creates the symlink `link -> target`, creating its parents.
    pub fn symlink(&mut self, link: &Path, target: &Path) -> Step<()> {
        let parent = parent_of(link);
        self.create_dirs(&parent)?;
        self.note_dir(&parent);
        step(
            "create the link",
            link,
            std::os::unix::fs::symlink(target, link),
        )?;
        self.undo.push(Undo::CreatedLink(link.to_path_buf()));
        Ok(())
    }

    /// Removes the symlink `link` (which must be one).
    pub fn remove_link(&mut self, link: &Path) -> Step<()> {
        let target = step("read the link", link, fs::read_link(link))?;
        let mtime = fs::symlink_metadata(link).and_then(|m| m.modified()).ok();
        self.note_dir(&parent_of(link));
        step("remove the link", link, fs::remove_file(link))?;
        self.undo.push(Undo::RemovedLink {
            path: link.to_path_buf(),
            target,
            mtime,
        });
        Ok(())
    }

    /// Keeps the changes; returns the backup directory when something was backed up.
    pub fn commit(self) -> Option<PathBuf> {
        (self.backups > 0).then_some(self.backup_dir)
    }

    /// Undoes every change, newest first, and restores the touched directories' mtimes.
    /// Returns what could not be undone (empty when the tree is back as it was).
    pub fn rollback(mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut note = |what: &str, path: &Path, r: io::Result<()>| {
            if let Err(e) = r {
                problems.push(format!("cannot {what} {}: {e}", path.display()));
            }
        };
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::CreatedDir(dir) => note("remove the directory", &dir, fs::remove_dir(&dir)),
                Undo::CreatedFile(path) | Undo::CreatedLink(path) => {
                    note("remove", &path, fs::remove_file(&path))
                }
                Undo::ReplacedFile {
                    path,
                    backup,
                    mode,
                    mtime,
                } => note(
                    "restore",
                    &path,
                    fs::read(&backup).and_then(|bytes| {
                        write_atomic(&path, &bytes, mode, Some(mtime)).map_err(|e| e.error)
                    }),
                ),
                Undo::RemovedLink {
                    path,
                    target,
                    mtime,
                } => note(
                    "recreate the link",
                    &path,
                    std::os::unix::fs::symlink(&target, &path)
                        .and_then(|()| mtime.map_or(Ok(()), |t| set_link_mtime(&path, t))),
                ),
            }
        }
        // Deepest first: setting a directory's times does not touch its parent's.
        let mut dirs: Vec<(PathBuf, SystemTime)> = std::mem::take(&mut self.dir_mtimes)
            .into_iter()
            .filter(|(d, _)| d.exists())
            .collect();
        dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dir, mtime) in dirs {
            note(
                "restore the mtime of",
                &dir,
                File::open(&dir).and_then(|f| f.set_times(FileTimes::new().set_modified(mtime))),
            );
        }
        if self.backups > 0 {
            note(
                "remove the backups",
                &self.backup_dir,
                fs::remove_dir_all(&self.backup_dir),
            );
        }
        problems
    }

    /// Creates `dir` and its missing ancestors, journaling each one created.
    fn create_dirs(&mut self, dir: &Path) -> Step<()> {
        let mut missing = Vec::new();
        let mut cur = dir.to_path_buf();
        while fs::symlink_metadata(&cur).is_err() {
            missing.push(cur.clone());
            match cur.parent() {
                Some(p) if !p.as_os_str().is_empty() => cur = p.to_path_buf(),
                _ => break,
            }
        }
        if let Some(outermost) = missing.last() {
            self.note_dir(&parent_of(outermost));
        }
        for d in missing.into_iter().rev() {
            step("create the directory", &d, fs::create_dir(&d))?;
            self.undo.push(Undo::CreatedDir(d));
        }
        Ok(())
    }

    /// Remembers the mtime of an existing directory before its first change.
    fn note_dir(&mut self, dir: &Path) {
        if self.dir_mtimes.contains_key(dir) || self.created(dir) {
            return;
        }
        if let Ok(mtime) = fs::metadata(dir).and_then(|m| m.modified()) {
            self.dir_mtimes.insert(dir.to_path_buf(), mtime);
        }
    }

    fn created(&self, dir: &Path) -> bool {
        self.undo
            .iter()
            .any(|u| matches!(u, Undo::CreatedDir(d) if d == dir))
    }
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Writes through a temp file in the same directory, then renames it into place.
pub(crate) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    mtime: Option<SystemTime>,
) -> Step<()> {
    // A random name, created exclusively and without following a symlink.
    let (mut f, tmp) = step(
        "create a temp file beside",
        path,
        crate::secure_file::create_temp_beside(path, mode),
    )?;
    let result = (|| {
        step("write", &tmp, f.write_all(bytes))?;
        if let Some(t) = mtime {
            step(
                "set the mtime of",
                &tmp,
                f.set_times(FileTimes::new().set_modified(t)),
            )?;
        }
        step("sync", &tmp, f.sync_all())?;
        step("rename into place", path, fs::rename(&tmp, path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Sets the mtime of a symlink itself (std only sets it through the link).
fn set_link_mtime(path: &Path, mtime: SystemTime) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let since = mtime
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(io::Error::other)?;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: since.as_secs() as libc::time_t,
            tv_nsec: since.subsec_nanos() as libc::c_long,
        },
    ];
    // SAFETY: c_path is a valid NUL-terminated string and times has the two entries
    // utimensat reads; neither is kept past the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn copy_with_times(from: &Path, to: &Path, meta: &fs::Metadata) -> Step<()> {
    if let Some(parent) = to.parent() {
        step(
            "create the backup directory",
            parent,
            fs::create_dir_all(parent),
        )?;
    }
    step("back up", from, fs::copy(from, to))?;
    if let Ok(mtime) = meta.modified() {
        let f = step("open the backup", to, File::options().write(true).open(to))?;
        step(
            "set the mtime of",
            to,
            f.set_times(FileTimes::new().set_modified(mtime)),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Every entry under `root` with its kind, content or target, mode and mtime.
    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                let what = if m.file_type().is_symlink() {
                    format!("link {}", fs::read_link(&p).unwrap().display())
                } else if m.is_dir() {
                    stack.push(p.clone());
                    "dir".into()
                } else {
                    format!("file {:?}", fs::read(&p).unwrap())
                };
                out.push(format!(
                    "{} {what} {:o} {}.{}",
                    p.display(),
                    m.mode(),
                    m.mtime(),
                    m.mtime_nsec()
                ));
            }
            // The directory itself: its mtime must come back too.
            let m = fs::metadata(&dir).unwrap();
            out.push(format!(
                "{} {}.{}",
                dir.display(),
                m.mtime(),
                m.mtime_nsec()
            ));
        }
        out.sort();
        out
    }

    #[test]
    fn rollback_restores_the_tree_exactly() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().join("engine");
        fs::create_dir_all(r.join("hub/parsers")).unwrap();
        fs::create_dir_all(r.join("config/parsers")).unwrap();
        fs::write(r.join("hub/parsers/old.yaml"), "old").unwrap();
        fs::set_permissions(
            r.join("hub/parsers/old.yaml"),
            fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            r.join("hub/parsers/old.yaml"),
            r.join("config/parsers/old.yaml"),
        )
        .unwrap();
        // mtimes in the past, so a change would show.
        let past = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        for p in [
            "hub/parsers/old.yaml",
            "hub/parsers",
            "hub",
            "config/parsers",
            "config",
            "",
        ] {
            File::open(r.join(p))
                .unwrap()
                .set_times(FileTimes::new().set_modified(past))
                .unwrap();
        }
        let before = tree(&r);

        let backups = root.path().join("backups/1");
        let mut txn = Txn::new(backups.clone());
        txn.write_file(
            &r.join("hub/parsers/old.yaml"),
            b"new",
            Path::new("hub/parsers/old.yaml"),
        )
        .unwrap();
        txn.write_file(&r.join("hub/scenarios/deep/s.yaml"), b"s", Path::new("x"))
            .unwrap();
        txn.symlink(
            &r.join("config/scenarios/s.yaml"),
            &r.join("hub/scenarios/deep/s.yaml"),
        )
        .unwrap();
        txn.remove_link(&r.join("config/parsers/old.yaml")).unwrap();
        assert_eq!(fs::read(r.join("hub/parsers/old.yaml")).unwrap(), b"new");
        assert_eq!(
            fs::read(backups.join("hub/parsers/old.yaml")).unwrap(),
            b"old"
        );
        assert_ne!(tree(&r), before);

        let problems = txn.rollback();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(tree(&r), before);
        assert!(
            !backups.exists(),
            "backups of a rolled back change are removed"
        );
    }

    #[test]
    fn commit_keeps_changes_and_names_the_backups() {
        let root = tempfile::tempdir().unwrap();
        let f = root.path().join("a.yaml");
        fs::write(&f, "1").unwrap();
        let mut txn = Txn::new(root.path().join("b"));
        txn.write_file(&f, b"2", Path::new("a.yaml")).unwrap();
        assert_eq!(txn.commit(), Some(root.path().join("b")));
        assert_eq!(fs::read(&f).unwrap(), b"2");
        assert_eq!(fs::read(root.path().join("b/a.yaml")).unwrap(), b"1");
        // Only new files: no backup directory.
        let mut txn = Txn::new(root.path().join("c"));
        txn.write_file(&root.path().join("n.yaml"), b"n", Path::new("n"))
            .unwrap();
        assert_eq!(txn.commit(), None);
    }

    #[test]
    fn a_symlink_at_the_old_predictable_temp_name_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        // Where today's main put its temp file: `.NAME.cerberus-tmp-PID`.
        let planted = root
            .path()
            .join(format!(".x.yaml.cerberus-tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&root.path().join("x.yaml"), b"new", 0o644, None).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read(root.path().join("x.yaml")).unwrap(), b"new");
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let root = tempfile::tempdir().unwrap();
        // A directory where the file should go: rename fails.
        fs::create_dir(root.path().join("x.yaml")).unwrap();
        fs::write(root.path().join("x.yaml/inner"), "").unwrap();
        let err = write_atomic(&root.path().join("x.yaml"), b"1", 0o644, None).unwrap_err();
        assert_eq!(err.action, "rename into place");
        let names: Vec<_> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.yaml"]);
    }
}
