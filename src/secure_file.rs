//! Files written without following symlinks: a temp file with a random name beside the
//! target, created exclusively (`O_CREAT|O_EXCL|O_NOFOLLOW`, so nothing planted at that
//! name is opened or followed), given its mode on the descriptor, then renamed into place
//! (`rename` replaces a planted symlink at the target itself, never its target).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates a new file beside `path` (`.NAME.cerberus-tmp-RANDOM`), mode `mode`
/// (applied with `fchmod`, so the umask does not matter). Returns it and its path.
pub fn create_temp_beside(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    loop {
        let tmp = dir.join(format!(
            ".{name}.cerberus-tmp-{:016x}",
            rand::random::<u64>()
        ));
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .mode(0o600)
            .open(&tmp);
        match opened {
            Ok(f) => {
                f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
                return Ok((f, tmp));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Writes `bytes` to `path` with `mode` through [`create_temp_beside`], synced, then
/// renamed into place. The temp file is removed on any failure.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (mut f, tmp) = create_temp_beside(path, mode)?;
    let result = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_symlink_at_the_target_is_replaced_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = dir.path().join("secret");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::metadata(&victim).unwrap().mode() & 0o777, 0o644);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no temp file left");
    }

    #[test]
    fn temp_names_differ_each_time_and_the_mode_ignores_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.yaml");
        let (_a, a) = create_temp_beside(&path, 0o644).unwrap();
        let (_b, b) = create_temp_beside(&path, 0o644).unwrap();
        assert_ne!(a, b);
        assert_eq!(std::fs::metadata(&a).unwrap().mode() & 0o777, 0o644);
    }
}
