//! Annotated media and face crops, kept for a bounded time after their request: each job's
//! files in a folder of their own, named by 128 random bits from the operating system, and
//! served under `/v1/media/<id>/<file>`. The id is the key: a page's `<video>` and `<img>`
//! elements cannot send a bearer token, so whoever holds the URL may fetch the files until they
//! expire. Jobs expire after `ttl`; beyond `max_jobs` the oldest go first. Everything is in one
//! temporary folder, deleted when the server stops.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct MediaStore {
    root: tempfile::TempDir,
    ttl: Duration,
    max_jobs: usize,
    /// Kept jobs, oldest first: when each was made, and its id.
    jobs: Mutex<VecDeque<(Instant, String)>>,
}

/// Whether `s` could be a job id (32 lower-case hexadecimal digits).
fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `s` is a plain file name this store writes (no folders, no dot files).
fn is_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl MediaStore {
    pub fn new(ttl: Duration, max_jobs: usize) -> std::io::Result<Self> {
        let root = tempfile::Builder::new().prefix("dfdet-media-").tempdir()?;
        Ok(Self { root, ttl, max_jobs: max_jobs.max(1), jobs: Mutex::new(VecDeque::new()) })
    }

    /// Deletes expired jobs, and the oldest beyond `max_jobs - room`.
    fn purge(&self, jobs: &mut VecDeque<(Instant, String)>, room: usize) {
        let now = Instant::now();
        while let Some((made, id)) = jobs.front() {
            let expired = now.duration_since(*made) > self.ttl;
            if !expired && jobs.len() + room <= self.max_jobs {
                break;
            }
            let _ = std::fs::remove_dir_all(self.root.path().join(id));
            jobs.pop_front();
        }
    }

    /// A new job's folder: its id and path.
    pub fn create(&self) -> std::io::Result<(String, PathBuf)> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = self.root.path().join(&id);
        std::fs::create_dir(&dir)?;
        let mut jobs = self.jobs.lock().expect("media lock");
        self.purge(&mut jobs, 1);
        jobs.push_back((Instant::now(), id.clone()));
        Ok((id, dir))
    }

    /// Deletes a job's files at once (its request failed).
    pub fn discard(&self, id: &str) {
        let mut jobs = self.jobs.lock().expect("media lock");
        jobs.retain(|(_, j)| j != id);
        let _ = std::fs::remove_dir_all(self.root.path().join(id));
    }

    /// The file `name` of job `id`, while the job is kept.
    pub fn file(&self, id: &str, name: &str) -> Option<PathBuf> {
        if !is_id(id) || !is_file_name(name) {
            return None;
        }
        let mut jobs = self.jobs.lock().expect("media lock");
        self.purge(&mut jobs, 0);
        jobs.iter().any(|(_, j)| j == id).then(|| self.root.path().join(id).join(name)).filter(|p| p.is_file())
    }

    /// Jobs kept now.
    pub fn len(&self) -> usize {
        self.jobs.lock().expect("media lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_expire_and_the_oldest_go_first() {
        let store = MediaStore::new(Duration::from_secs(3600), 2).unwrap();
        let (a, dir_a) = store.create().unwrap();
        std::fs::write(dir_a.join("annotated.png"), b"x").unwrap();
        assert!(is_id(&a));
        assert_eq!(store.file(&a, "annotated.png"), Some(dir_a.join("annotated.png")));
        assert_eq!(store.file(&a, "../annotated.png"), None);
        assert_eq!(store.file(&a, ".hidden"), None);
        assert_eq!(store.file("0123", "annotated.png"), None);
        let (b, _) = store.create().unwrap();
        let (c, _) = store.create().unwrap();
        // Two jobs at most: the first is gone, files and all.
        assert_eq!(store.len(), 2);
        assert!(!dir_a.exists() && store.file(&a, "annotated.png").is_none());
        store.discard(&b);
        assert_eq!(store.len(), 1);
        let short = MediaStore::new(Duration::ZERO, 8).unwrap();
        let (d, dir_d) = short.create().unwrap();
        std::fs::write(dir_d.join("x.png"), b"x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(short.file(&d, "x.png"), None, "expired");
        assert!(!dir_d.exists());
        assert_ne!(c, d);
    }
}
