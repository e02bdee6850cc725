//! Property tests over the parsers of the text files a user hands dfdet: list files, predictions
//! CSVs and the train / test / study TOML configs (and `--set` overrides). Whatever the text —
//! random bytes, a valid file with edits, cut short — the result is a value or an error that
//! names the file or key, never a panic, and no allocation above `alloc::BOUND`.

use std::path::Path;

use proptest::prelude::*;

use dfdet::commands::test::TestConfig;
use dfdet::data::read_list_in;
use dfdet::eval::report::Predictions;
use dfdet::study::StudyConfig;
use dfdet::train::TrainConfig;

/// `base` with `edits` (char position modulo the length, replacement) and cut to `keep`.
fn mutate(base: &str, edits: &[(usize, char)], keep: Option<f64>) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for &(at, c) in edits {
        if !chars.is_empty() {
            let n = chars.len();
            chars[at % n] = c;
        }
    }
    if let Some(k) = keep {
        chars.truncate((chars.len() as f64 * k) as usize);
    }
    chars.into_iter().collect()
}

/// Characters that matter to these formats, and any other.
fn a_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '\n', '\r', ',', '"', '=', '[', ']', '{', '}', '#', '.', '/', '\0', '\u{feff}', ' ', '-', '1', 'e'
        ]),
        any::<char>(),
    ]
}

fn edits() -> impl Strategy<Value = Vec<(usize, char)>> {
    prop::collection::vec((any::<usize>(), a_char()), 0..12)
}

fn keep() -> impl Strategy<Value = Option<f64>> {
    prop::option::weighted(0.3, 0.0..1.0f64)
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(a_char(), 0..400).prop_map(|c| c.into_iter().collect())
}

/// An error's text names `what` (a file name or a key), or the input was accepted.
fn names<T>(result: Result<T, dfdet::Error>, what: &[&str]) {
    if let Err(e) = result {
        let text = e.to_string();
        assert!(what.iter().any(|w| text.contains(w)), "`{text}` names none of {what:?}");
    }
}

const PREDICTIONS: &str = "files,labels,prob_class_0,prob_class_1,set\n\
    datasets/FF/real/000/000.png,0,0.9,0.1,FF\n\
    datasets/FF/DF/000_003/000.png,1,0.2,0.8,FF;all\n\
    datasets/CDFv2/Celeb-real/id0_0000/000.png,0,0.6,0.4,CDF\n";

const TEST_TOML: &str = "weights = \"w.ckpt\"\nbatch_size = 8\ndtype = \"f32\"\nlimit_files = 10\n\
    data_root = \"data\"\n[sets]\nFF = [\"ff.txt\"]\nCDF = [\"a.txt\", \"b.txt\"]\n";

const STUDY_TOML: &str = "run_name = \"s\"\nmax_epochs = 2\ntrn_files = [\"t.txt\"]\n\
    [study]\nfractions = [0.25, 1.0]\n[study.methods.ln-tuning]\nlr = 1e-3\n";

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn list_files_never_panic(text in text(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let tmp = tempfile::tempdir().unwrap();
        let list = write(tmp.path(), "list.txt", &text);
        if let Ok((paths, errors)) = read_list_in(&list, Some(tmp.path())) {
            prop_assert!(paths.iter().all(|p| p.is_file()));
            prop_assert!(errors.iter().all(|e| e.reason.contains("list.txt line")));
        }
        std::fs::write(&list, bytes).unwrap();
        let _ = read_list_in(&list, None);
        crate::alloc::assert_bounded("list file");
    }

    #[test]
    fn predictions_csvs_never_panic(edits in edits(), keep in keep(), random in text()) {
        let tmp = tempfile::tempdir().unwrap();
        for (name, text) in [("edited.csv", mutate(PREDICTIONS, &edits, keep)), ("random.csv", random)] {
            let path = write(tmp.path(), name, &text);
            let result = Predictions::read_csv(&path);
            if let Ok(p) = &result {
                prop_assert!(p.probs.iter().all(|x| (0.0..=1.0).contains(x)));
                prop_assert_eq!(p.probs.len(), p.files.len() * p.n_classes);
                let _ = p.named_sets();
            }
            names(result, &[name]);
        }
        crate::alloc::assert_bounded("predictions CSV");
    }

    #[test]
    fn train_configs_never_panic(edits in edits(), keep in keep(), set in "[a-z_.]{0,20}=[ -~]{0,20}") {
        let tmp = tempfile::tempdir().unwrap();
        let base = TrainConfig::default().to_toml_with_unset();
        let path = write(tmp.path(), "train.toml", &mutate(&base, &edits, keep));
        let _ = TrainConfig::load(Some(&path), &[]);
        // An override applied to a valid file: an error names the key it was given.
        let valid = write(tmp.path(), "valid.toml", &base);
        if let Err(e) = TrainConfig::load(Some(&valid), std::slice::from_ref(&set)) {
            let text = e.to_string();
            let key = set.split('=').next().unwrap_or("").trim();
            let last = key.rsplit('.').next().unwrap_or("");
            prop_assert!(text.contains("--set") || (!last.is_empty() && text.contains(last)), "--set {}: {}", set, text);
        }
        crate::alloc::assert_bounded("train config");
    }

    #[test]
    fn test_and_study_configs_never_panic(edits in edits(), keep in keep()) {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "test.toml", &mutate(TEST_TOML, &edits, keep));
        names(TestConfig::from_file(&path), &["test.toml"]);
        let path = write(tmp.path(), "study.toml", &mutate(STUDY_TOML, &edits, keep));
        let _ = StudyConfig::load(&path, &[]);
        crate::alloc::assert_bounded("test or study config");
    }
}
