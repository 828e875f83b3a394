//! The fast door: every published snapshot written as segment files (layout in
//! `bouncer-api/SNAPSHOT.md`) that the Caddy module maps and reads without asking.
//!
//! One thread (`cerberus-segments`), off the hot path: the store's publish hook only
//! wakes it, and it writes the newest snapshot when it gets to it, so back-to-back
//! publishes coalesce. A big base segment is written when the store installs a new base
//! (a fold) and a small overlay segment for every other publish (the overlay's keys,
//! the ranges when they changed, the protection switch and the outage state). Then the
//! `current` file (mapped read-write here, read-only by readers; a seqlock) names the
//! new set, and replaced files are unlinked after a grace period.

use super::Readiness;
use crate::decision::Target;
use crate::store::{Decider, IpKey, Snapshot, Verdict};
use anyhow::Context;
use bouncer_api::segment::{self as seg, Builder, Outage, CURRENT_LEN, CURRENT_MAGIC};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Segments written, by kind (`base`, `overlay`).
pub const SEGMENTS_WRITTEN: &str = "cerberus_snapshot_segments_written_total";
/// Segment writes that failed.
pub const SEGMENT_ERRORS: &str = "cerberus_snapshot_segment_errors_total";
/// Size of the segment set in force, in bytes.
pub const SEGMENT_BYTES: &str = "cerberus_snapshot_segment_bytes";

/// Where and how segments are written.
#[derive(Debug, Clone)]
pub struct SegmentSettings {
    pub dir: PathBuf,
    /// Files get this group (the socket's, so Caddy's user can read them); None: keep.
    pub gid: Option<u32>,
    /// How long a replaced segment stays on disk for readers that are about to open it.
    pub grace: Duration,
}

impl SegmentSettings {
    /// `dir`, with the group of `socket` when it exists.
    pub fn new(dir: PathBuf, socket: &Path) -> SegmentSettings {
        let gid = std::fs::metadata(socket).ok().map(|m| m.gid());
        SegmentSettings {
            dir,
            gid,
            grace: Duration::from_secs(10),
        }
    }
}

/// Wakes the writer thread (set by the publish hook, and at shutdown).
#[derive(Default)]
struct Signal {
    dirty: Mutex<bool>,
    cond: Condvar,
}

impl Signal {
    fn poke(&self) {
        *self.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_one();
    }

    /// Waits until poked or `timeout`; returns whether it was poked.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .cond
            .wait_timeout_while(guard, timeout, |dirty| !*dirty)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *guard, false)
    }
}

/// Starts the writer thread. Fails when the directory or `current` cannot be set up.
pub fn spawn(
    settings: SegmentSettings,
    decider: Arc<Decider>,
    ready: Readiness,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let mut writer = SegmentWriter::open(settings)?;
    let signal = Arc::new(Signal::default());
    let hook_signal = signal.clone();
    if !decider.on_publish(Box::new(move || hook_signal.poke())) {
        anyhow::bail!("snapshot segments: the decider already has a publish hook");
    }
    let handle = std::thread::Builder::new()
        .name("cerberus-segments".into())
        .spawn(move || {
            let mut beat = Instant::now();
            loop {
                signal.wait(Duration::from_millis(200));
                if *shutdown.borrow() {
                    break;
                }
                if ready.get() {
                    writer.sync(&decider);
                }
                if beat.elapsed() >= Duration::from_secs(1) {
                    writer.current.heartbeat();
                    beat = Instant::now();
                }
                writer.unlink_retired(false);
            }
            // Readers stop trusting the set at once instead of after the staleness delay.
            writer.current.update(5, &[0]);
            debug!("snapshot segments: writer stopped");
        })
        .context("snapshot segments: cannot spawn the writer thread")?;
    Ok(handle)
}

/// The state written into segment headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    disabled: bool,
    outage: Outage,
}

fn state_of(decider: &Decider) -> State {
    let outage = match decider.outage() {
        Some(crate::store::UnreachablePolicy::Open) => Outage::FailOpen,
        Some(crate::store::UnreachablePolicy::Closed) => Outage::FailClosed,
        _ => Outage::None,
    };
    State {
        disabled: !decider.enabled(),
        outage,
    }
}

/// The base segment in force: the snapshot it was written from (held, so its tables'
/// addresses cannot be reused by another base) and its serial.
struct WrittenBase {
    snap: Arc<Snapshot>,
    serial: u64,
    state: State,
}

pub struct SegmentWriter {
    settings: SegmentSettings,
    current: Current,
    next_serial: u64,
    base: Option<WrittenBase>,
    /// What the set in force shows: (snapshot generation, state).
    shown: Option<(u64, State)>,
    /// Files replaced, with when; unlinked after the grace period.
    retired: VecDeque<(PathBuf, Instant)>,
    in_force: Vec<PathBuf>,
}

impl SegmentWriter {
    /// Creates the directory (0750) and `current` (0640), and removes leftovers that
    /// `current` does not name. Segments named by it stay until the grace period
    /// after the first new set (a reader may be mapping them).
    pub fn open(settings: SegmentSettings) -> anyhow::Result<SegmentWriter> {
        let dir = &settings.dir;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .with_context(|| format!("snapshot_dir {}: cannot create it", dir.display()))?;
        if let Some(gid) = settings.gid {
            // Best effort: only root may give a group it is not in.
            let _ = std::os::unix::fs::chown(dir, None, Some(gid));
        }
        let current = Current::open(&dir.join("current"), settings.gid)?;
        let (base, overlay) = current.read();
        let keep = [seg::base_name(base), seg::overlay_name(overlay)];
        let mut retired = VecDeque::new();
        let mut max_serial = base.max(overlay);
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("snapshot_dir {}: cannot list it", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "current" {
                continue;
            }
            if let Some(serial) = serial_of(&name) {
                max_serial = max_serial.max(serial);
            }
            if keep.contains(&name) {
                retired.push_back((entry.path(), Instant::now()));
            } else if name.ends_with(".seg") || name.starts_with(".tmp-") {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    warn!("snapshot segments: cannot remove leftover {name}: {e}");
                }
            }
        }
        info!(
            "snapshot segments for the Caddy module in {}",
            dir.display()
        );
        Ok(SegmentWriter {
            settings,
            current,
            next_serial: max_serial + 1,
            base: None,
            shown: None,
            retired,
            in_force: Vec::new(),
        })
    }

    /// Writes the decider's newest snapshot and state, when they are not shown yet.
    pub fn sync(&mut self, decider: &Decider) {
        let snap = decider.snapshot();
        let state = state_of(decider);
        if self.shown == Some((snap.generation(), state)) {
            return;
        }
        if let Err(e) = self.write_set(&snap, state) {
            metrics::counter!(SEGMENT_ERRORS).increment(1);
            warn!(
                "snapshot segments: cannot write generation {} to {}: {e:#} (the module falls back to the socket when they get stale)",
                snap.generation(),
                self.settings.dir.display()
            );
            return;
        }
        self.shown = Some((snap.generation(), state));
    }

    fn write_set(&mut self, snap: &Arc<Snapshot>, state: State) -> anyhow::Result<()> {
        let new_base = self
            .base
            .as_ref()
            .map_or(true, |b| b.snap.base_identity() != snap.base_identity());
        let mut files = Vec::new();
        let mut bytes = 0;
        if new_base {
            let serial = self.take_serial();
            let mut b = Builder::new(seg::KIND_BASE, snap.generation(), snap.generation());
            b.set_state(state.disabled, state.outage);
            let mut metas = Metas::new(snap);
            snap.for_each_base(|k, list| metas.put_key(&mut b, snap, k, list));
            metas.put_ranges(&mut b, snap);
            let buf = b.finish(rand::random());
            bytes += buf.len();
            files.push(self.write_file(&seg::base_name(serial), &buf)?);
            metrics::counter!(SEGMENTS_WRITTEN, "kind" => "base").increment(1);
            info!(
                "snapshot segments: new base {} ({} keys, {} ranges, {} KiB)",
                seg::base_name(serial),
                snap.base_len(),
                snap.ranges().len(),
                buf.len() / 1024
            );
            self.base = Some(WrittenBase {
                snap: snap.clone(),
                serial,
                state,
            });
        }
        let base = self.base.as_ref().expect("a base was written");
        let (base_serial, base_gen) = (base.serial, base.snap.generation());
        let ranges_changed = base.snap.ranges_identity() != snap.ranges_identity();
        let mut overlay_serial = 0;
        if snap.overlay_len() > 0 || ranges_changed || base.state != state {
            overlay_serial = self.take_serial();
            let mut o = Builder::new(seg::KIND_OVERLAY, snap.generation(), base_gen);
            o.set_state(state.disabled, state.outage);
            let mut metas = Metas::new(snap);
            snap.for_each_overlay(|k, list| metas.put_key(&mut o, snap, k, list));
            if ranges_changed {
                o.carry_ranges();
                metas.put_ranges(&mut o, snap);
            }
            let buf = o.finish(rand::random());
            bytes += buf.len();
            files.push(self.write_file(&seg::overlay_name(overlay_serial), &buf)?);
            metrics::counter!(SEGMENTS_WRITTEN, "kind" => "overlay").increment(1);
        }
        if !new_base {
            files.push(self.settings.dir.join(seg::base_name(base_serial)));
        }
        self.current.switch(base_serial, overlay_serial);
        metrics::gauge!(SEGMENT_BYTES).set(bytes as f64);
        let now = Instant::now();
        for old in std::mem::replace(&mut self.in_force, files) {
            if !self.in_force.contains(&old) {
                self.retired.push_back((old, now));
            }
        }
        debug!(
            "snapshot segments: generation {} in force (base {base_serial}, overlay {overlay_serial})",
            snap.generation()
        );
        Ok(())
    }

    fn take_serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    /// Writes `.tmp-NAME` (0640, never following a link) and renames it to `NAME`.
    fn write_file(&self, name: &str, buf: &[u8]) -> anyhow::Result<PathBuf> {
        let tmp = self.settings.dir.join(format!(".tmp-{name}"));
        let path = self.settings.dir.join(name);
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(gid) = self.settings.gid {
            let _ = std::os::unix::fs::fchown(&f, None, Some(gid));
        }
        f.write_all(buf)
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {name}", tmp.display()))?;
        Ok(path)
    }

    /// Unlinks the replaced files whose grace period is over (all of them with `all`).
    pub fn unlink_retired(&mut self, all: bool) {
        while let Some((path, since)) = self.retired.front() {
            if !all && since.elapsed() < self.settings.grace {
                break;
            }
            if self.in_force.contains(path) {
                self.retired.pop_front();
                continue;
            }
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => warn!("snapshot segments: cannot unlink {}: {e}", path.display()),
            }
            self.retired.pop_front();
        }
    }
}

fn serial_of(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix("base-")
        .or_else(|| name.strip_prefix("overlay-"))?
        .strip_suffix(".seg")?;
    digits.parse().ok()
}

/// The builder's meta index of each snapshot meta, added when first used (an overlay
/// carries only the metas its lists use).
struct Metas(Vec<u32>);

impl Metas {
    fn new(snap: &Snapshot) -> Metas {
        Metas(vec![u32::MAX; snap.metas().len()])
    }

    fn verdicts(
        &mut self,
        b: &mut Builder,
        snap: &Snapshot,
        list: &[Verdict],
    ) -> Vec<seg::Verdict> {
        list.iter()
            .map(|v| {
                let i = snap.meta_of(v);
                if self.0[i] == u32::MAX {
                    let m = &snap.metas()[i];
                    self.0[i] = b.meta(
                        super::wire_remediation(m.remediation),
                        &m.type_name,
                        &m.origin,
                        &m.scenario,
                    );
                }
                seg::Verdict {
                    expires: v.expires_at(),
                    meta: self.0[i],
                }
            })
            .collect()
    }

    fn put_key(&mut self, b: &mut Builder, snap: &Snapshot, k: IpKey, list: &[Verdict]) {
        let list = self.verdicts(b, snap, list);
        match k {
            IpKey::V4(a) => b.exact4(a, &list),
            IpKey::V6(a) => b.exact6(a, &list),
        }
    }

    fn put_ranges(&mut self, b: &mut Builder, snap: &Snapshot) {
        for (t, v) in snap.ranges() {
            let v = self.verdicts(b, snap, std::slice::from_ref(v))[0];
            match *t {
                Target::V4 { addr, prefix } => {
                    let span = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                    b.range4(addr & !span, addr | span, v)
                }
                Target::V6 { addr, prefix } => {
                    let span = u128::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
                    b.range6(addr & !span, addr | span, v)
                }
            }
        }
    }
}

/// The `current` file, mapped read-write (SNAPSHOT.md section 8).
struct Current {
    map: *mut u8,
    _file: File,
}

// SAFETY: the mapping is owned by this value and only touched through atomics.
unsafe impl Send for Current {}

impl Current {
    fn open(path: &Path, gid: Option<u32>) -> anyhow::Result<Current> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .with_context(|| format!("snapshot segments: cannot open {}", path.display()))?;
        if let Some(gid) = gid {
            let _ = std::os::unix::fs::fchown(&file, None, Some(gid));
        }
        if file.metadata()?.len() != CURRENT_LEN as u64 {
            file.set_len(CURRENT_LEN as u64)
                .with_context(|| format!("snapshot segments: cannot size {}", path.display()))?;
        }
        // SAFETY: a shared read-write mapping of a file we keep open, of its exact size.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                CURRENT_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            anyhow::bail!(
                "snapshot segments: cannot map {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        let c = Current {
            map: map.cast(),
            _file: file,
        };
        // SAFETY: inside the mapping; readers check the magic after the version.
        unsafe {
            if std::slice::from_raw_parts(c.map, 8) != CURRENT_MAGIC {
                c.word(1).store(0, Ordering::Release);
                std::ptr::copy_nonoverlapping(CURRENT_MAGIC.as_ptr(), c.map, 8);
            }
            c.map
                .add(8)
                .cast::<u32>()
                .write_volatile(seg::VERSION.to_le());
        }
        c.word(6)
            .store(u64::from(std::process::id()), Ordering::Release);
        c.heartbeat();
        Ok(c)
    }

    /// The 8-byte word at offset `8 * i`.
    fn word(&self, i: usize) -> &AtomicU64 {
        assert!((1..CURRENT_LEN / 8).contains(&i));
        // SAFETY: aligned (the mapping is page-aligned) and inside the mapping, which
        // lives as long as self.
        unsafe { &*self.map.add(8 * i).cast::<AtomicU64>() }
    }

    fn read(&self) -> (u64, u64) {
        (
            u64::from_le(self.word(3).load(Ordering::Acquire)),
            u64::from_le(self.word(4).load(Ordering::Acquire)),
        )
    }

    /// Seqlock write of the fields at words `first..`.
    fn update(&self, first: usize, values: &[u64]) {
        let seq = self.word(2);
        let s = u64::from_le(seq.load(Ordering::Relaxed));
        let s = if s % 2 == 1 { s + 1 } else { s };
        seq.store((s + 1).to_le(), Ordering::Release);
        std::sync::atomic::fence(Ordering::Release);
        for (i, v) in values.iter().enumerate() {
            self.word(first + i).store(v.to_le(), Ordering::Release);
        }
        seq.store((s + 2).to_le(), Ordering::Release);
    }

    fn switch(&self, base: u64, overlay: u64) {
        self.update(
            3,
            &[base, overlay, u64::from(crate::clock::now_secs_precise())],
        );
    }

    fn heartbeat(&self) {
        self.update(5, &[u64::from(crate::clock::now_secs_precise())]);
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        // SAFETY: the mapping made in open, unmapped once.
        unsafe {
            libc::munmap(self.map.cast(), CURRENT_LEN);
        }
    }
}

#[cfg(test)]
mod tests;
