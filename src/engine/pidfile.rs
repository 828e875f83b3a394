//! The managed engine's pid file: the pid and the process's start time (field 22 of
//! `/proc/PID/stat`, clock ticks since boot), so that a later run signals a leftover
//! engine only when the process at that pid is still the one that was started, not a
//! process that merely reused the pid.

use std::io;
use std::path::Path;

/// What the pid file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub pid: u32,
    /// `None` in a file written before start times were recorded.
    pub start_time: Option<u64>,
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from
    // after its closing one, where field 3 starts.
    let rest = stat.rsplit_once(") ")?.1;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// Writes `pid` and its start time.
pub fn write(path: &Path, pid: u32) -> io::Result<()> {
    let line = match start_time(pid) {
        Some(t) => format!("{pid} {t}\n"),
        None => format!("{pid}\n"),
    };
    crate::secure_file::write(path, line.as_bytes(), 0o644)
}

/// Reads the pid file: `Ok(None)` when there is none, `Err` with why when it is not one.
pub fn read(path: &Path) -> Result<Option<Recorded>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut words = text.split_whitespace();
    let pid = words
        .next()
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|p| *p > 0)
        .ok_or("not a pid")?;
    let start_time = match words.next() {
        None => None,
        Some(w) => Some(
            w.parse::<u64>()
                .map_err(|_| "not a start time after the pid")?,
        ),
    };
    Ok(Some(Recorded { pid, start_time }))
}

impl Recorded {
    /// False when the process now at `pid` started at another time than recorded (the
    /// pid was reused). A file without a start time cannot tell, and says true.
    pub fn same_process(&self) -> bool {
        match self.start_time {
            Some(t) => start_time(self.pid) == Some(t),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_tells_a_reused_pid_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.pid");
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        write(&path, child.id()).unwrap();
        let rec = read(&path).unwrap().unwrap();
        assert_eq!(rec.pid, child.id());
        assert!(rec.start_time.is_some());
        assert!(rec.same_process());
        let other = Recorded {
            start_time: rec.start_time.map(|t| t + 1),
            ..rec
        };
        assert!(
            !other.same_process(),
            "another start time is another process"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!rec.same_process(), "a gone process is not the same");
    }

    #[test]
    fn old_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.pid");
        assert_eq!(read(&path), Ok(None));
        std::fs::write(&path, "1234\n").unwrap();
        assert_eq!(
            read(&path),
            Ok(Some(Recorded {
                pid: 1234,
                start_time: None
            }))
        );
        for bad in ["x\n", "0\n", "12 x\n"] {
            std::fs::write(&path, bad).unwrap();
            assert!(read(&path).is_err(), "{bad:?}");
        }
    }
}
