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
/// `.txt` list files (one path per line; relative entries are relative to the list file's
/// folder, see [`resolve_in`]).
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

/// Where a relative path written in a file resolves: against the folder of that file
/// (`folder`), the one rule for every path dfdet reads from a file (list entries, config keys).
/// Paths given on the command line are relative to the working folder, as for every program.
/// An empty or `.` folder leaves the path as written, so that lists read from the working
/// folder keep their entries' spelling (the reference's CSVs name frames that way).
pub fn resolve_in(folder: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() || folder.as_os_str().is_empty() || folder == Path::new(".") {
        path.to_path_buf()
    } else {
        without_parent_steps(&folder.join(path))
    }
}

/// `path` with each `dir/..` removed where `dir` is a real folder (not a symbolic link, whose
/// `..` is the parent of its target), so that `configs/../data/x.png` reads `data/x.png`
/// and means the same file.
pub fn without_parent_steps(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        let real_folder = || {
            matches!(out.components().next_back(), Some(Component::Normal(_)))
                && std::fs::symlink_metadata(&out).is_ok_and(|m| m.is_dir())
        };
        if c == Component::ParentDir && real_folder() {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads a list file: the paths it names that exist (relative entries relative to the list's
/// folder), and an error naming the list file and line for each that does not.
pub fn read_list(list: &Path) -> Result<(Vec<PathBuf>, Vec<InputError>), String> {
    read_list_in(list, None)
}

/// [`read_list`] with a data root: relative entries are relative to `root` instead of the
/// list's folder (lists of the reference's layout name `datasets/<dataset>/...` relative to the
/// folder holding `datasets/`). A UTF-8 byte-order mark at the start is ignored.
pub fn read_list_in(list: &Path, root: Option<&Path>) -> Result<(Vec<PathBuf>, Vec<InputError>), String> {
    let text = std::fs::read_to_string(list).map_err(|e| format!("cannot read list file: {e}"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let base = root.unwrap_or_else(|| list.parent().unwrap_or(Path::new("")));
    let mut paths = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let path = resolve_in(base, Path::new(line));
        if path.is_file() {
            paths.push(path);
            continue;
        }
        // Not there, or there but not a readable file (a folder, a FIFO, a name too long).
        let why = why_not_a_file(&path);
        let reason = if why != NOT_FOUND {
            format!("listed in {} line {}: {why}", list.display(), i + 1)
        } else if Path::new(line).is_absolute() {
            format!("listed in {} line {} but not found", list.display(), i + 1)
        } else {
            let rule = match root {
                Some(r) => format!("relative entries are looked up under the data root {}", r.display()),
                None => "relative entries are relative to the list's folder; for lists naming \
                         paths from a dataset root give --root DIR (data_root in a config)"
                    .to_string(),
            };
            format!("listed in {} line {} but not found: looked for {} ({rule})", list.display(), i + 1, path.display())
        };
        errors.push(InputError { path: line.to_string(), reason });
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
    fn parent_steps_go_only_through_real_folders() {
        let tmp = std::env::temp_dir().join(format!("dfdet-steps-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("a/b")).unwrap();
        std::fs::create_dir_all(tmp.join("elsewhere/deep")).unwrap();
        std::os::unix::fs::symlink(tmp.join("elsewhere/deep"), tmp.join("link")).unwrap();
        assert_eq!(without_parent_steps(&tmp.join("a/b/../../c.png")), tmp.join("c.png"));
        // `link/..` is `elsewhere`, not `tmp`: kept for the kernel to resolve.
        assert_eq!(without_parent_steps(&tmp.join("link/../x")), tmp.join("link/../x"));
        assert_eq!(without_parent_steps(Path::new("../x")), Path::new("../x"));
        assert_eq!(resolve_in(&tmp.join("a"), Path::new("../a/b")), tmp.join("a/b"));
        assert_eq!(resolve_in(Path::new("."), Path::new("../x")), Path::new("../x"));
        std::fs::remove_dir_all(&tmp).unwrap();
    }

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
