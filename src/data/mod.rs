//! Inputs: image files, folders and list files, and the dataset layout of the reference
//! (`<dataset>/<source>/<video>/<frame>`, docs/method.md §8).

pub mod sets;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// File extensions read as images.
pub const IMAGE_EXTENSIONS: [&str; 7] = ["png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff"];

/// File extensions read as videos.
pub const VIDEO_EXTENSIONS: [&str; 14] =
    ["mp4", "avi", "mov", "mkv", "webm", "m4v", "mpg", "mpeg", "wmv", "flv", "3gp", "ts", "mts", "ogv"];

/// Whether `path` has a video extension.
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Whether `path` has an image extension.
pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// An input that could not be turned into frames, with where it came from.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InputError {
    /// The path as given or as written in a list file.
    pub path: String,
    /// Why, including the list file and line where it came from one.
    pub reason: String,
}

/// Frames and video files found in the inputs, in the order given, without duplicates, and
/// what failed.
#[derive(Debug, Default)]
pub struct Inputs {
    pub frames: Vec<PathBuf>,
    /// Video files (by extension): given, found in a folder or named in a list.
    pub videos: Vec<PathBuf>,
    pub errors: Vec<InputError>,
}

impl Inputs {
    /// Adds `path` unless it was seen; `./x.png` and `x.png` are one frame (and one video).
    fn push(&mut self, seen: &mut HashSet<PathBuf>, path: PathBuf) {
        let path = without_dot_components(&path);
        if seen.insert(path.clone()) {
            if is_video(&path) {
                self.videos.push(path);
            } else {
                self.frames.push(path);
            }
        }
    }
}

/// Expands image and video files, folders (recursively, sorted; their images and videos) and
/// `.txt` list files (one path per line; a path not found as written is resolved relative to the
/// list file's folder).
pub fn expand_inputs(inputs: &[PathBuf]) -> Inputs {
    let mut out = Inputs::default();
    let mut seen = HashSet::new();
    for input in inputs {
        if input.is_dir() {
            let mut files = Vec::new();
            collect_images(input, &mut files, &mut out.errors);
            files.sort();
            for f in files {
                out.push(&mut seen, f);
            }
        } else if input.extension().is_some_and(|e| e == "txt") {
            match read_list(input) {
                Ok((paths, errors)) => {
                    out.errors.extend(errors);
                    for p in paths {
                        out.push(&mut seen, p);
                    }
                }
                Err(reason) => out.errors.push(InputError { path: input.display().to_string(), reason }),
            }
        } else if input.is_file() {
            out.push(&mut seen, input.clone());
        } else {
            out.errors.push(InputError { path: input.display().to_string(), reason: why_not_a_file(input) });
        }
    }
    out
}

/// `path` without its `.` components (a path of only `.` stays `.`).
pub fn without_dot_components(path: &Path) -> PathBuf {
    let kept: PathBuf = path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect();
    if kept.as_os_str().is_empty() { path.to_path_buf() } else { kept }
}

const NOT_FOUND: &str = "no such file or folder";

/// Why `path` cannot be read as a file: the system's reason (not found, name too long, a loop of
/// symbolic links, no permission) or what it is instead.
pub fn why_not_a_file(path: &Path) -> String {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => NOT_FOUND.into(),
        Err(e) => format!("cannot be read: {e}"),
        Ok(m) if m.is_dir() => "is a folder".into(),
        Ok(_) => "not a regular file (a FIFO, socket or device): not read".into(),
    }
}

fn collect_images(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<InputError>) {
    walk_files(dir, &|p: &Path| is_image(p) || is_video(p), files, errors);
}

/// Collects the regular files under `dir` (recursively) that `keep` accepts. A folder or entry
/// that cannot be read is reported in `errors`, never dropped in silence; a folder reached again
/// through a symbolic link is walked once; FIFOs, sockets and devices are passed over (reading
/// one would block or never end).
pub fn walk_files(dir: &Path, keep: &dyn Fn(&Path) -> bool, files: &mut Vec<PathBuf>, errors: &mut Vec<InputError>) {
    walk(dir, keep, files, errors, &mut HashSet::new());
}

fn walk(
    dir: &Path,
    keep: &dyn Fn(&Path) -> bool,
    files: &mut Vec<PathBuf>,
    errors: &mut Vec<InputError>,
    seen: &mut HashSet<PathBuf>,
) {
    match dir.canonicalize() {
        Ok(real) => {
            if !seen.insert(real) {
                return; // a symbolic link back into the walk
            }
        }
        Err(e) => {
            errors.push(InputError { path: dir.display().to_string(), reason: format!("cannot resolve folder: {e}") });
            return;
        }
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(InputError { path: dir.display().to_string(), reason: format!("cannot list folder: {e}") });
            return;
        }
    };
    for entry in entries {
        let path = match entry {
            Ok(entry) => entry.path(),
            Err(e) => {
                errors.push(InputError { path: dir.display().to_string(), reason: format!("cannot list folder: {e}") });
                continue;
            }
        };
        if path.is_dir() {
            walk(&path, keep, files, errors, seen);
        } else if path.is_file() && keep(&path) {
            files.push(path);
        }
    }
}

/// Reads a list file: the paths it names that exist (as written, or relative to the list's
/// folder), and an error naming the list file and line for each that does not.
pub fn read_list(list: &Path) -> Result<(Vec<PathBuf>, Vec<InputError>), String> {
    read_list_in(list, None)
}

/// [`read_list`] with a data root: a relative entry is looked up under `root` first (lists of
/// the reference's layout name `datasets/<dataset>/...` relative to the folder holding
/// `datasets/`), then as written, then relative to the list's folder. A UTF-8 byte-order mark
/// at the start is ignored.
pub fn read_list_in(list: &Path, root: Option<&Path>) -> Result<(Vec<PathBuf>, Vec<InputError>), String> {
    let text = std::fs::read_to_string(list).map_err(|e| format!("cannot read list file: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let base = list.parent().unwrap_or(Path::new(""));
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let as_written = PathBuf::from(line);
        let under_root = root.filter(|_| as_written.is_relative()).map(|r| r.join(line));
        if let Some(p) = under_root.as_ref().filter(|p| p.is_file()) {
            paths.push(p.clone());
        } else if as_written.is_file() {
            paths.push(as_written);
        } else if base.join(line).is_file() {
            paths.push(base.join(line));
        } else {
            let looked = match &under_root {
                Some(r) => format!("{}, ", r.display()),
                None => String::new(),
            };
            // Not there, or there but not a readable file (a folder, a FIFO, a name too long).
            let candidates = under_root.iter().cloned().chain([as_written.clone(), base.join(line)]);
            let why = candidates.map(|p| why_not_a_file(&p)).find(|w| w != NOT_FOUND).unwrap_or(NOT_FOUND.into());
            let reason = if why == NOT_FOUND {
                format!(
                    "listed in {} line {} but not found (looked for {looked}{line} and {})",
                    list.display(),
                    i + 1,
                    base.join(line).display()
                )
            } else {
                format!("listed in {} line {}: {why}", list.display(), i + 1)
            };
            errors.push(InputError { path: line.to_string(), reason });
        }
    }
    Ok((paths, errors))
}

/// Whether `name` can name a folder inside an output folder: one plain path component (not
/// empty, `.` or `..`, no separator), so that it cannot write outside it.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// The video of a frame path: everything before its last `/` (the parent folder), as the
/// reference groups frames into videos.
///
/// The original keeps the trailing `/` in its keys (`f[: -f[::-1].find("/")]`) and, for a path
/// without `/`, takes its first character; here such paths belong to the video `.` (the
/// working folder), and `/x.png` to `/`.
pub fn video_of(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) => "/",
        Some(i) => &path[..i],
        None => ".",
    }
}

/// The reference's label rule: 0 (real) if the source folder's name contains "real", else 1.
pub fn label_of(frame: &Path) -> Option<usize> {
    let source = frame.parent()?.parent()?.file_name()?.to_str()?;
    Some(if source.contains("real") { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_is_the_parent_directory() {
        assert_eq!(video_of("FF/DF/000_003/025.png"), "FF/DF/000_003");
        assert_eq!(video_of("/abs/v/0.png"), "/abs/v");
        assert_eq!(video_of("frame.png"), ".", "a frame in the working folder");
        assert_eq!(video_of("/frame.png"), "/");
    }

    #[test]
    fn labels_follow_source_names() {
        assert_eq!(label_of(Path::new("CDFv2/Celeb-real/id0_0000/000.png")), Some(0));
        assert_eq!(label_of(Path::new("CDFv2/YouTube-real/00000/000.png")), Some(0));
        assert_eq!(label_of(Path::new("FF/DF/000_003/025.png")), Some(1));
    }
}
