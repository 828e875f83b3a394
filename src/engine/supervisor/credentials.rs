//! The engine's credentials: the bouncer key cerberus uses with the engine's LAPI (kept
//! in `data_dir`, checked against `cscli bouncers list`, replaced when unknown), the agent's
//! machine credentials, and the cscli runs that make them.

use super::{describe_status, EngineError, Inner, CSCLI_TIMEOUT, SHOWN_LINES};

use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use tracing::{info, warn};

/// SHA-512 in hex, as LAPI stores bouncer keys.
pub(super) fn sha512_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA512, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn new_key() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The key that `cscli bouncers add NAME -o raw` printed: one word of printable ASCII.
fn raw_key(printed: &str) -> Option<String> {
    let key = printed.trim();
    let ok = key.len() >= 16 && key.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| key.to_string())
}

impl Inner {
    /// The agent logs in to the LAPI with the machine credentials of
    /// `api.client.credentials_path`; create them when the file is missing (as the
    /// crowdsec package's install script does).
    pub(super) async fn ensure_agent_credentials(&self) -> Result<(), EngineError> {
        let path = &self.engine.credentials_path;
        if path.exists() {
            return Ok(());
        }
        info!(
            "the engine's agent has no LAPI credentials at {} (api.client.credentials_path); creating machine {} with cscli",
            path.display(),
            self.settings.bouncer_name
        );
        let path_text = path.display().to_string();
        self.cscli(&[
            "--error",
            "machines",
            "add",
            &self.settings.bouncer_name,
            "--auto",
            "--force",
            "-f",
            &path_text,
        ])
        .await?;
        Ok(())
    }

    /// Returns a bouncer key the engine's LAPI accepts: the one in the key file when LAPI
    /// still knows it, else a new one (bouncer re-created, file replaced).
    pub(super) async fn ensure_bouncer_key(&self) -> Result<String, EngineError> {
        let path = self.key_file();
        let name = self.settings.bouncer_name.clone();
        let existing = self.read_key_file(&path)?;
        let listed = self
            .cscli(&["--error", "bouncers", "list", "-o", "json"])
            .await?;
        let bouncers: serde_json::Value =
            serde_json::from_str(listed.trim()).map_err(|e| EngineError::Cscli {
                config: self.config().to_path_buf(),
                args: "bouncers list -o json".into(),
                status: format!("its output is not JSON ({e})"),
                output: listed
                    .lines()
                    .take(SHOWN_LINES)
                    .map(str::to_string)
                    .collect(),
            })?;
        let entry = bouncers
            .as_array()
            .and_then(|list| list.iter().find(|b| b["name"].as_str() == Some(&name)))
            .cloned();
        if let Some(key) = existing {
            let problem = match &entry {
                None => Some(format!("bouncer {name} is not in the engine's LAPI")),
                Some(b) if b["revoked"].as_bool() == Some(true) => {
                    Some(format!("bouncer {name} is revoked"))
                }
                Some(b) => match b["api_key"].as_str() {
                    Some(hash) if !hash.eq_ignore_ascii_case(&sha512_hex(&key)) => {
                        Some(format!("bouncer {name} has another key"))
                    }
                    _ => None,
                },
            };
            match problem {
                None => {
                    info!(
                        "[CROWDSEC_STARTUP] using the engine bouncer key in {} (bouncer {name})",
                        path.display()
                    );
                    return Ok(key);
                }
                Some(why) => warn!(
                    "the engine bouncer key in {} is no longer valid ({why}); creating a new one",
                    path.display()
                ),
            }
        }
        if entry.is_some() {
            self.cscli(&["--error", "bouncers", "delete", &name])
                .await?;
        }
        // cscli makes the key and prints it alone (`-o raw`), so that it is never on a
        // command line (where `ps` shows it to every user of the machine).
        let printed = self
            .cscli_with(&["--error", "-o", "raw", "bouncers", "add", &name], true)
            .await?;
        let key = raw_key(&printed).ok_or_else(|| EngineError::Cscli {
            config: self.config().to_path_buf(),
            args: format!("-o raw bouncers add {name}"),
            // Its output is not shown: it may hold the key after all.
            status: format!(
                "it printed no API key ({} bytes of output, not shown)",
                printed.len()
            ),
            output: vec![],
        })?;
        self.write_key_file(&path, &key)?;
        info!(
            "[CROWDSEC_STARTUP] created bouncer {name} in the engine's LAPI; its key is in {} (mode 0600)",
            path.display()
        );
        Ok(key)
    }

    pub(super) fn read_key_file(&self, path: &Path) -> Result<Option<String>, EngineError> {
        let key_err = |reason: String| EngineError::KeyFile {
            path: path.to_path_buf(),
            reason,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_err(format!("cannot read it: {e}"))),
        };
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o600);
        if mode & 0o077 != 0 {
            warn!(
                "the engine bouncer key {} had mode {mode:04o}; setting 0600",
                path.display()
            );
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| key_err(format!("cannot set mode 0600: {e}")))?;
        }
        let key = text.trim();
        Ok((!key.is_empty()).then(|| key.to_string()))
    }

    pub(super) fn write_key_file(&self, path: &Path, key: &str) -> Result<(), EngineError> {
        let key_err = |e: io::Error| EngineError::KeyFile {
            path: path.to_path_buf(),
            reason: format!("cannot write it: {e}"),
        };
        std::fs::create_dir_all(&self.settings.data_dir).map_err(key_err)?;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(key_err)?;
        f.write_all(format!("{key}\n").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(key_err)?;
        std::fs::rename(&tmp, path).map_err(key_err)
    }

    pub(super) async fn cscli(&self, args: &[&str]) -> Result<String, EngineError> {
        self.cscli_with(args, false).await
    }

    /// [`Inner::cscli`] for a command whose stdout may hold a secret.
    pub(super) async fn cscli_secret(&self, args: &[&str]) -> Result<String, EngineError> {
        self.cscli_with(args, true).await
    }

    /// Runs cscli; with `secret_stdout`, a failure shows only its stderr (its stdout is
    /// where a raw secret goes).
    async fn cscli_with(&self, args: &[&str], secret_stdout: bool) -> Result<String, EngineError> {
        let shown = args.join(" ");
        let fail = |status: String, output: Vec<String>| EngineError::Cscli {
            config: self.config().to_path_buf(),
            args: shown.clone(),
            status,
            output,
        };
        let mut cmd = tokio::process::Command::new(&self.settings.cscli_bin);
        cmd.arg("-c")
            .arg(self.config())
            .args(args)
            .current_dir(&self.cwd)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CSCLI_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err(fail(
                    format!("no answer within {}s", CSCLI_TIMEOUT.as_secs()),
                    vec![],
                ))
            }
            Ok(Err(e)) => return Err(fail(format!("cannot run it: {e}"), vec![])),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            let stdout = if secret_stdout {
                String::new()
            } else {
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let text = format!("{}{stdout}", String::from_utf8_lossy(&out.stderr));
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            return Err(fail(describe_status(&out.status), lines));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_matches_lapi() {
        // `printf %s 0123456789abcdef0123456789abcdef | sha512sum`, and what 1.4.6's
        // `cscli bouncers list -o json` shows for that key.
        assert_eq!(
            sha512_hex("0123456789abcdef0123456789abcdef"),
            "0372a8619ebcbbcd91abcda1ba389ac36e72962887b3019de3372a561fd962da\
             7e9cfa0c3069c46ca5dc2ad88e607e70bb7a87996ab96fea7aa27e5288952055"
        );
        assert_eq!(
            raw_key("  abcdef0123456789ABCDEF\n").as_deref(),
            Some("abcdef0123456789ABCDEF")
        );
        assert_eq!(raw_key(""), None);
        assert_eq!(raw_key("API key for 'x':\n\n   abcdef0123456789\n"), None);
        let k = new_key();
        assert_eq!(k.len(), 64);
        assert_ne!(k, new_key());
    }
}
