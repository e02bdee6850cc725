//! Files from the Hugging Face Hub, through the standard HF cache (`HF_HOME`/`HF_HUB_CACHE`).
//!
//! A cached copy is always used first, without touching the network; `HF_HUB_OFFLINE=1`
//! forbids the network altogether, as it does for the Python `huggingface_hub`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hf_hub::{HFClient, HFClientSync, HFError};

use crate::{Error, Result};

/// Where hub files come from: a cache folder, and whether the network may be used.
#[derive(Debug)]
pub struct Hub {
    cache_dir: PathBuf,
    offline: bool,
    client: OnceLock<std::result::Result<HFClientSync, String>>,
}

/// What a lookup of one file found.
#[derive(Debug)]
pub enum Lookup {
    /// The file, in the cache.
    Found(PathBuf),
    /// The repository is reachable (or cached) and has no such file.
    Absent,
    /// The file could not be had: offline and not cached, network down, repo missing.
    Unavailable(String),
}

impl Hub {
    /// The cache and offline mode the environment selects: `HF_HUB_CACHE`,
    /// `HUGGINGFACE_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        Self::new(hf_hub::resolve_cache_dir(), offline)
    }

    /// An explicit cache folder (laid out as HF's `hub/` folder: `models--org--name/...`).
    pub fn new(cache_dir: impl Into<PathBuf>, offline: bool) -> Self {
        Self { cache_dir: cache_dir.into(), offline, client: OnceLock::new() }
    }

    /// The cache folder searched and written.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Whether the network is off limits.
    pub fn offline(&self) -> bool {
        self.offline
    }

    fn client(&self) -> std::result::Result<&HFClientSync, String> {
        self.client
            .get_or_init(|| {
                let inner = HFClient::builder().cache_dir(&self.cache_dir).build().map_err(|e| e.to_string())?;
                HFClientSync::from_inner(inner).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| format!("cannot start the Hugging Face client: {e}"))
    }

    /// Looks `filename` of model repo `repo_id` up in the cache only.
    pub fn lookup_cached(&self, repo_id: &str, filename: &str) -> Lookup {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Lookup::Unavailable(e),
        };
        let (owner, name) = hf_hub::split_id(repo_id);
        match client.model(owner, name).download_file().filename(filename).local_files_only(true).send() {
            Ok(path) => Lookup::Found(path),
            Err(HFError::EntryNotFound { .. }) => Lookup::Absent, // a cached "no-exist" marker
            Err(_) => Lookup::Unavailable("not in the cache".into()),
        }
    }

    /// Looks `filename` of model repo `repo_id` up: the cache first, then (unless offline) the Hub.
    pub fn lookup(&self, repo_id: &str, filename: &str) -> Lookup {
        match self.lookup_cached(repo_id, filename) {
            Lookup::Unavailable(_) => {}
            found_or_absent => return found_or_absent,
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => return Lookup::Unavailable(e),
        };
        let (owner, name) = hf_hub::split_id(repo_id);
        let repo = client.model(owner, name);
        if self.offline {
            return Lookup::Unavailable("offline (HF_HUB_OFFLINE is set) and not in the cache".into());
        }
        match repo.download_file().filename(filename).send() {
            Ok(path) => Lookup::Found(path),
            Err(HFError::EntryNotFound { .. }) => Lookup::Absent,
            Err(HFError::RepoNotFound { .. }) => {
                Lookup::Unavailable("repository not found on the Hub (or private: set HF_TOKEN)".into())
            }
            Err(HFError::LocalEntryNotFound { .. }) => {
                Lookup::Unavailable("the Hub is unreachable and the file is not in the cache".into())
            }
            Err(HFError::Request { source, .. }) => {
                Lookup::Unavailable(format!("the Hub is unreachable and the file is not in the cache ({source})"))
            }
            Err(e) => Lookup::Unavailable(format!("the Hub failed and the file is not in the cache ({e})")),
        }
    }

    /// `filename` of `repo_id`, or an [`Error::Hub`] saying what is missing and how to supply it.
    pub fn file(&self, repo_id: &str, filename: &str) -> Result<PathBuf> {
        match self.lookup(repo_id, filename) {
            Lookup::Found(path) => Ok(path),
            Lookup::Absent => Err(Error::Hub(format!("Hugging Face repo `{repo_id}` has no file `{filename}`"))),
            Lookup::Unavailable(reason) => Err(self.missing(repo_id, &[filename], &reason)),
        }
    }

    /// The [`Error::Hub`] for files of `repo_id` that could not be had.
    pub fn missing(&self, repo_id: &str, files: &[&str], reason: &str) -> Error {
        let what = match files {
            [one] => format!("`{one}`"),
            many => format!("any of {}", many.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")),
        };
        Error::Hub(format!(
            "cannot get {what} of Hugging Face repo `{repo_id}`: {reason} (cache: {cache}). \
             Download it where the Hub is reachable (e.g. `hf download {repo_id}`) and pass the local \
             file or folder instead, or set HF_HOME (or HF_HUB_CACHE) to a cache that holds it.",
            cache = self.cache_dir.display()
        ))
    }
}

/// Whether `s` has the shape of a Hub repo id, `owner/name` (letters, digits, `-_.`).
pub fn looks_like_repo_id(s: &str) -> bool {
    let ok = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && !part.ends_with('.')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match s.split_once('/') {
        Some((owner, name)) => ok(owner) && ok(name) && !name.contains('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        assert!(looks_like_repo_id("yermandy/deepfake-detection"));
        assert!(looks_like_repo_id("openai/clip-vit-large-patch14"));
        assert!(!looks_like_repo_id("model.ckpt"));
        assert!(!looks_like_repo_id("./runs/a"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
    }
}
