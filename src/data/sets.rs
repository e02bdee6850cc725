//! Splits made of list files, grouped under named sets (docs/method.md §8), as the reference's
//! `DeepfakeDataset` builds them: paths de-duplicated and sorted, labels from source names,
//! optionally limited to N files by whole videos in a seeded shuffle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::{InputError, label_of, read_list_in, video_of};
use crate::{Error, Result};

/// A named group of list files, e.g. `CDF = [Celeb-real.txt, Celeb-synthesis.txt, YouTube-real.txt]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SetSpec {
    pub name: String,
    pub lists: Vec<PathBuf>,
}

impl SetSpec {
    /// Parses `NAME=LIST[,LIST...]`; a bare `LIST` is named after its file stem.
    pub fn parse(s: &str) -> Result<Self> {
        let (name, lists) = match s.split_once('=') {
            Some((n, l)) => (n.trim().to_string(), l),
            None => {
                let stem = Path::new(s).file_stem().and_then(|x| x.to_str()).unwrap_or(s);
                (stem.to_string(), s)
            }
        };
        let lists: Vec<PathBuf> =
            lists.split(',').filter(|l| !l.trim().is_empty()).map(|l| PathBuf::from(l.trim())).collect();
        if name.is_empty() || lists.is_empty() {
            return Err(Error::config(format!("--set `{s}`"), "expected NAME=LIST[,LIST...]"));
        }
        Ok(Self { name, lists })
    }
}

/// The frames of a split: sorted, unique, labelled, with the named sets they belong to.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Frame paths, sorted and unique.
    pub files: Vec<String>,
    /// 0 real, 1 fake, from the source folder's name.
    pub labels: Vec<usize>,
    /// For each named set, the indices into `files` of its frames, in `files` order.
    pub sets: BTreeMap<String, Vec<usize>>,
    /// List lines that named no existing file, and unreadable list files.
    pub errors: Vec<InputError>,
}

impl Split {
    /// Reads every list of every set (entries resolved as [`read_list_in`] does, under `root`
    /// first when given). Missing images are reported (list file and line) and left out; a list
    /// file that cannot be read at all is an error.
    pub fn load(specs: &[SetSpec], limit: Option<usize>, root: Option<&Path>) -> Result<Self> {
        let mut per_set: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut errors = Vec::new();
        for spec in specs {
            let entry = per_set.entry(spec.name.clone()).or_default();
            for list in &spec.lists {
                let (paths, errs) = read_list_in(list, root).map_err(|reason| Error::format(list, reason))?;
                errors.extend(errs);
                entry.extend(paths.into_iter().map(|p| p.display().to_string()));
            }
        }
        let all: BTreeSet<&String> = per_set.values().flatten().collect();
        let mut files: Vec<String> = all.into_iter().cloned().collect();
        if let Some(n) = limit {
            files = limit_by_videos(&files, n, 42);
        }
        let mut labels = Vec::with_capacity(files.len());
        for f in &files {
            let label = label_of(Path::new(f)).ok_or_else(|| {
                Error::format(f, "expected <dataset>/<source>/<video>/<frame> to read its label from <source>")
            })?;
            labels.push(label);
        }
        let index: BTreeMap<&str, usize> = files.iter().enumerate().map(|(i, f)| (f.as_str(), i)).collect();
        let sets = per_set
            .iter()
            .map(|(name, members)| {
                let mut idx: Vec<usize> = members.iter().filter_map(|f| index.get(f.as_str()).copied()).collect();
                idx.sort_unstable();
                (name.clone(), idx)
            })
            .collect();
        Ok(Self { files, labels, sets, errors })
    }

    /// Frames, videos and per-class counts, per dataset (the path's `<dataset>` component).
    pub fn statistics(&self) -> String {
        let mut per_dataset: BTreeMap<String, ([usize; 2], BTreeSet<&str>)> = BTreeMap::new();
        for (f, &l) in self.files.iter().zip(&self.labels) {
            let p = Path::new(f);
            let dataset =
                p.ancestors().nth(3).and_then(|d| d.file_name()).and_then(|d| d.to_str()).unwrap_or("?").to_string();
            let e = per_dataset.entry(dataset).or_default();
            e.0[l.min(1)] += 1;
            e.1.insert(video_of(f));
        }
        let videos: BTreeSet<&str> = self.files.iter().map(|f| video_of(f)).collect();
        let real = self.labels.iter().filter(|&&l| l == 0).count();
        let mut s = format!(
            "{} frames, {} videos ({} real frames, {} fake)\n",
            self.files.len(),
            videos.len(),
            real,
            self.files.len() - real
        );
        for (name, (counts, vids)) in &per_dataset {
            s += &format!(
                "  {name}: {} frames, {} videos, {} real, {} fake\n",
                counts[0] + counts[1],
                vids.len(),
                counts[0],
                counts[1]
            );
        }
        s
    }
}

/// The reference's `limit_files`: the unique videos (sorted) are shuffled with
/// `np.random.RandomState(seed).shuffle`, and whole videos are taken in that order until `limit`
/// frames are reached; the list is then cut at `limit`.
pub fn limit_by_videos(files: &[String], limit: usize, seed: u32) -> Vec<String> {
    let mut videos: Vec<&str> = files.iter().map(|f| video_of(f)).collect::<BTreeSet<_>>().into_iter().collect();
    let mut by_video: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for f in files {
        by_video.entry(video_of(f)).or_default().push(f);
    }
    let mut rng = Mt19937::new(seed);
    rng.shuffle(&mut videos);
    let mut out = Vec::new();
    for v in videos {
        out.extend(by_video[v].iter().map(|f| (*f).clone()));
        if out.len() >= limit {
            break;
        }
    }
    out.truncate(limit);
    out
}

/// The Mersenne Twister behind NumPy's legacy `RandomState`, enough of it to reproduce
/// `RandomState(seed).shuffle` (so a limited split holds the same videos as the reference's).
pub struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    /// `init_genrand(seed)`, as `RandomState(seed)` seeds it.
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32.wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30)).wrapping_add(i as u32);
        }
        Self { state, index: 624 }
    }

    /// The next 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mut v = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    v ^= 0x9908_b0df;
                }
                self.state[i] = v;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// NumPy's legacy bounded integer in `[0, max]`: rejection sampling under the smallest
    /// all-ones mask covering `max` (32-bit draws while `max` fits in 32 bits).
    fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        loop {
            let v = if max <= 0xffff_ffff {
                (self.next_u32() as u64) & mask
            } else {
                (((self.next_u32() as u64) << 32) | self.next_u32() as u64) & mask
            };
            if v <= max {
                return v;
            }
        }
    }

    /// `RandomState.shuffle` on a sequence: Fisher-Yates from the end.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.interval(i as u64) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_generator() {
        // First outputs of init_genrand(5489), the published MT19937 reference values.
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        assert_eq!(mt.next_u32(), 581_869_302);
        assert_eq!(mt.next_u32(), 3_890_346_734);
    }

    #[test]
    fn set_spec_parsing() {
        let s = SetSpec::parse("CDF=a.txt,b.txt").unwrap();
        assert_eq!(s.name, "CDF");
        assert_eq!(s.lists, [PathBuf::from("a.txt"), PathBuf::from("b.txt")]);
        assert_eq!(SetSpec::parse("dir/DF.txt").unwrap().name, "DF");
        assert!(SetSpec::parse("X=").is_err());
    }

    #[test]
    fn limit_keeps_whole_videos_then_cuts() {
        let files: Vec<String> = (0..5).flat_map(|v| (0..3).map(move |f| format!("D/S/v{v}/{f}.png"))).collect();
        let out = limit_by_videos(&files, 7, 42);
        assert_eq!(out.len(), 7);
        let videos: BTreeSet<&str> = out.iter().map(|f| video_of(f)).collect();
        assert_eq!(videos.len(), 3);
    }
}

#[cfg(test)]
mod numpy_parity {
    use super::*;

    /// `np.random.RandomState(seed).shuffle(list(range(n)))`, from scripts/fixtures/make_data_fixtures.py.
    #[test]
    fn shuffle_matches_numpy() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpy_shuffle.json");
        let cases: BTreeMap<String, Vec<usize>> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(cases.len(), 15);
        for (key, want) in cases {
            let (seed, n) = key.split_once('/').unwrap();
            let mut items: Vec<usize> = (0..n.parse().unwrap()).collect();
            Mt19937::new(seed.parse().unwrap()).shuffle(&mut items);
            assert_eq!(items, want, "seed/n = {key}");
        }
    }
}
