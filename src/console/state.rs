//! `data_dir/console.json`: the enrollment state and the last heartbeat, kept across
//! restarts (written whole to a temporary file, then renamed over the old one).

use super::{EnrollState, FailureKind, Heartbeat, STATE_FILE};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tracing::warn;

/// What `console.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct Saved {
    pub(super) state: EnrollState,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) tags: Vec<String>,
    /// Why it failed (state `failed`), or a note on an enrollment that stands.
    #[serde(default)]
    pub(super) reason: Option<String>,
    #[serde(default)]
    pub(super) code: Option<String>,
    #[serde(default)]
    pub(super) attempts: u32,
    #[serde(default)]
    pub(super) updated_at: Option<String>,
    /// When the last successful enrollment was made (kept through later failures).
    #[serde(default)]
    pub(super) enrolled_at: Option<String>,
    #[serde(default)]
    pub(super) last_heartbeat: Option<Heartbeat>,
}

pub(super) fn load_state(data_dir: &Path) -> Saved {
    let path = data_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Saved::default(),
        Err(e) => {
            warn!(
                "console: cannot read {}: {e}; the enrollment shows as not_enrolled",
                path.display()
            );
            return Saved::default();
        }
    };
    match serde_json::from_str::<Saved>(&text) {
        Ok(mut saved) => {
            if saved.state == EnrollState::Enrolling {
                saved.state = EnrollState::Failed;
                saved.code = Some(FailureKind::Other.code().into());
                saved.reason = Some(
                    "interrupted: cerberus stopped during the enrollment; enroll again".into(),
                );
            }
            saved
        }
        Err(e) => {
            let aside = data_dir.join(format!("{STATE_FILE}.corrupt"));
            warn!(
                "console: {} is not valid ({e}); moved to {} and starting as not_enrolled",
                path.display(),
                aside.display()
            );
            let _ = std::fs::rename(&path, &aside);
            Saved::default()
        }
    }
}

pub(super) fn save_state(data_dir: &Path, saved: &Saved) -> std::io::Result<()> {
    let path = data_dir.join(STATE_FILE);
    let tmp = data_dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(saved).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)
}
