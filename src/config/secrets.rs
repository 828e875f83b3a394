//! Secrets on disk and the admin token's strength: the files secrets are read from
//! (reported by `cerberus check`, logged at start, when group or others can open them)
//! and the minimum length of `admin_token` when the admin API is reachable off loopback.

use super::{is_loopback, Config, Listen, Problem};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The shortest `admin_token` accepted when `admin_listen` is not a loopback address.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// A problem when `token` is too short for an admin API other machines reach.
pub(super) fn token_strength(listen: &Listen, token: Option<&str>) -> Option<Problem> {
    let (Listen::Tcp(addr), Some(token)) = (listen, token) else {
        return None;
    };
    let len = token.chars().count();
    (!is_loopback(addr) && len < MIN_ADMIN_TOKEN_LEN).then(|| Problem {
        key: "admin_token".into(),
        message: format!(
            "is {len} characters, but admin_listen {addr} is reachable from other machines, so \
             it must be at least {MIN_ADMIN_TOKEN_LEN} (make one with `openssl rand -hex 32`)"
        ),
    })
}

/// A problem naming `key` when group or others can read or write the file at `path`.
fn exposed(key: &str, path: &Path) -> Option<Problem> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| Problem {
        key: key.into(),
        message: format!(
            "{} holds a secret but its mode is {mode:04o} (group or others can open it): \
             chmod 600 {}",
            path.display(),
            path.display()
        ),
    })
}

impl Config {
    /// Secret files that group or others can open, by the key that names them: the
    /// `*_file` secrets, `key_path`, and `data_dir/admin_token` (named `data_dir`).
    pub fn exposed_secret_files(&self) -> Vec<Problem> {
        let token = self.data_dir.join("admin_token");
        self.secret_files
            .iter()
            .map(|(k, p)| (k.as_str(), p.as_path()))
            .chain(self.key_path.as_deref().map(|p| ("key_path", p)))
            .chain(std::iter::once(("data_dir", token.as_path())))
            .filter_map(|(key, path)| exposed(key, path))
            .collect()
    }
}
