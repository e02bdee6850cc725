//! Shared by the four test binaries (each `main.rs` includes it with `#[path]`): where the
//! repository, its fixtures and the sample crops are, the dfdet binary, JSON files, and the rule
//! for what a test needs but the repository does not hold (third-party assets fetched by
//! scripts/setup-assets.sh, programs, files of system packages, a font): outside CI the test is
//! skipped with a `SKIPPED:` note on stderr; under `CI=true` it fails.
// Each binary uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// The sample crops, `../shared/data/samples` beside the repository.
pub fn samples() -> PathBuf {
    root().join("../shared/data/samples")
}

/// The environment every dfdet the tests start runs with: `--dtype auto` pinned to f32, since
/// the expected numbers are the reference's f32 ones and `auto` is bf16 on CPUs that multiply
/// bfloat16 natively. A test that wants bf16 passes `--dtype bf16`, which wins.
pub const DTYPE_F32: (&str, &str) = ("DFDET_DTYPE", "f32");

/// The dfdet binary, as an `assert_cmd::Command`.
pub fn dfdet() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_dfdet"));
    c.env(DTYPE_F32.0, DTYPE_F32.1);
    c
}

/// The dfdet binary, as a `std::process::Command` with stdout and stderr piped (so that a
/// spawned child's `wait_with_output` collects them, as `output` does).
pub fn dfdet_process() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dfdet"));
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).env(DTYPE_F32.0, DTYPE_F32.1);
    c
}

/// A JSON file: `path` relative to `tests/fixtures`, or absolute.
pub fn read_json(path: impl AsRef<Path>) -> serde_json::Value {
    let path = fixtures().join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `CI` is set to a true-ish value (anything but empty, `0` or `false`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// Something a test needs is missing (`msg` says what and how to get it): a failure under CI;
/// otherwise a `SKIPPED:` note on stderr, and the caller returns.
pub fn skip_or_fail(msg: &str) {
    assert!(!in_ci(), "{msg} (CI is set, so this fails instead of skipping)");
    eprintln!("SKIPPED: {msg}");
}

/// `assets/<name>`, or `None` when it is absent (see [`skip_or_fail`]): CI must run
/// scripts/setup-assets.sh.
pub fn asset(name: &str) -> Option<PathBuf> {
    let path = root().join("assets").join(name);
    if path.exists() {
        return Some(path);
    }
    skip_or_fail(&format!("asset {} is missing: run scripts/setup-assets.sh", path.display()));
    None
}

/// A file a system package installs (`package`, e.g. Debian's libdlib-data), by the same rule.
pub fn installed(path: &str, package: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    if path.is_file() {
        return Some(path);
    }
    skip_or_fail(&format!("{package} is not installed ({}): run scripts/setup-assets.sh", path.display()));
    None
}

/// A program on PATH (e.g. the ffmpeg CLI that makes test videos), by the same rule.
pub fn program(name: &str) -> Option<PathBuf> {
    let found =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()));
    if found.is_none() {
        skip_or_fail(&format!("`{name}` is not installed: run scripts/setup-assets.sh"));
    }
    found
}

/// A copy of the `gend-tiny` fixture as `<dir>/gend` (its config names the backbone
/// `tiny-clip-p14`, linked beside it), for tests that alter or overwrite it.
pub fn gend_copy(dir: &Path) -> PathBuf {
    let gend = dir.join("gend");
    std::fs::create_dir(&gend).unwrap();
    std::os::unix::fs::symlink(fixtures().join("tiny-clip-p14"), dir.join("tiny-clip-p14")).unwrap();
    for e in std::fs::read_dir(fixtures().join("gend-tiny")).unwrap().flatten() {
        std::fs::copy(e.path(), gend.join(e.file_name())).unwrap();
    }
    gend
}
