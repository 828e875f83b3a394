//! The admin token: the configured one, else `data_dir/admin_token`, read without
//! following a symlink (a symlink, another owner or a non-file there refuses the start,
//! saying what to do), kept at mode 0600 (a looser file is fixed through its descriptor),
//! and created through [`crate::secure_file`]. Wrong tokens are slowed down: each one
//! waits its turn behind one gate, so guesses are bounded per second whatever the
//! number of connections (and those are capped by `admin_max_connections`).

use crate::config::Config;
use anyhow::{bail, Context};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use tracing::{info, warn};

/// How long each wrong token holds the gate: at most 1 s / this guesses per second.
pub const FAILURE_DELAY: Duration = Duration::from_millis(200);

/// The admin token: the configured one, else `data_dir/admin_token`, created (0600) with
/// a random value on first start or when the file is empty.
pub fn token(config: &Config) -> anyhow::Result<String> {
    if let Some(t) = &config.admin_token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join("admin_token");
    if let Some(t) = read_existing(&path)? {
        return Ok(t);
    }
    let token = generate();
    crate::secure_file::write(&path, format!("{token}\n").as_bytes(), 0o600)
        .with_context(|| format!("cannot write {}", path.display()))?;
    info!(
        "generated an admin API token in {} (mode 0600); send it as `Authorization: Bearer <token>`",
        path.display()
    );
    Ok(token)
}

/// The token in `path`, `None` when there is none (or the file is empty).
fn read_existing(path: &Path) -> anyhow::Result<Option<String>> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {shown}")),
    };
    if meta.file_type().is_symlink() {
        bail!(
            "{shown} is a symlink; cerberus keeps its admin token in a file of its own: \
             remove the link (a new token is written at the next start), or set admin_token_file"
        );
    }
    if !meta.is_file() {
        bail!(
            "{shown} is not a regular file: remove it (a new token is written at the next start)"
        );
    }
    // O_NOFOLLOW: a symlink swapped in since the check above fails the open.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("cannot open {shown}"))?;
    let meta = f.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "{shown} belongs to uid {}, not to this user ({me}): remove it (a new token is \
             written at the next start)",
            meta.uid()
        );
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("{shown} has mode {mode:04o} and cannot be set to 0600"))?;
        warn!(
            "{shown} had mode {mode:04o} (group or others could read the admin token): set to 0600"
        );
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .with_context(|| format!("cannot read {shown}"))?;
    let t = text.trim();
    if t.is_empty() {
        warn!("{shown} is empty: writing a new admin token");
        return Ok(None);
    }
    Ok(Some(t.to_string()))
}

fn generate() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits after a wrong token: the gate is held for [`FAILURE_DELAY`] by each failure in
/// turn. Memory stays bounded: the waiters are the connections, which are capped.
pub(crate) async fn after_failure() {
    static GATE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = GATE.lock().await;
    tokio::time::sleep(FAILURE_DELAY).await;
}
