//! Writing files so that a reader (or a run killed mid-write) never sees half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Writes `bytes` to a temporary file beside `path` (unique per process and call, so that
/// processes sharing a folder may write the same file at once), syncs it, then renames it over
/// `path`. On failure the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_then_rename(path, bytes, true)
}

/// [`write_atomic`] without waiting for the data to reach the disk: for caches, where a file
/// lost in a power cut is only recomputed.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    write_then_rename(path, bytes, false)
}

fn write_then_rename(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp: PathBuf = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// [`write_atomic`] unless `path` already holds `bytes`, creating its folder.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    write_atomic(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_and_leaves_no_temporary_file() {
        let tmp = std::env::temp_dir().join(format!("dfdet-files-{}", std::process::id()));
        let path = tmp.join("sub/a.txt");
        write_if_changed(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.join("sub")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
        // A folder in the way: the error names the path and nothing is left behind.
        std::fs::create_dir_all(tmp.join("sub/dir")).unwrap();
        let err = write_atomic(&tmp.join("sub/dir"), b"x").unwrap_err();
        assert!(err.to_string().contains("sub/dir"), "{err}");
        assert_eq!(std::fs::read_dir(tmp.join("sub")).unwrap().count(), 2);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
