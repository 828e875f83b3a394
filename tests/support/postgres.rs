//! A throwaway PostgreSQL server for tests, run by `scripts/postgres.sh` (Debian's
//! package, installed when absent) in a temporary directory of its own, on 127.0.0.1 and
//! a free port. Stopped when dropped, and by a watchdog of the script when the test
//! process dies.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    /// The `KEY=VALUE` file with PG_HOST, PG_PORT, PG_USER, PG_PASSWORD, PG_DB.
    pub env_file: PathBuf,
    dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh")
}

impl Postgres {
    /// Starts a new server with an empty `crowdsec` database; panics with the script's
    /// output when it cannot.
    pub fn start() -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("cerberus-pg-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .args(["--owner-pid", &std::process::id().to_string()])
            .output()
            .expect("cannot run scripts/postgres.sh");
        assert!(
            out.status.success(),
            "scripts/postgres.sh start failed ({})\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Postgres {
            env_file: dir.path().join("env"),
            dir,
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}
