//! The module layering of the crate, checked by a test: each top-level module may import only
//! the modules of its own layer or of the layers above it in [`LAYERS`], and inside a module
//! folder the files import each other without a cycle.

/// Top-level modules from the bottom layer up; a module may use those at or before its layer.
pub const LAYERS: &[&[&str]] = &[
    &["error", "files", "memory", "cpu", "rng", "progress"],
    &["data"],
    &["eval"],
    &["preprocess"],
    &["model"],
    &["score"],
    &["train"],
    &["study"],
    &["commands"],
    &["serve"],
];

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    use super::LAYERS;

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    /// Every `.rs` file under `dir` with its module path (`["train", "run"]`; `mod.rs` is its folder).
    fn files(dir: &Path, prefix: &[String], out: &mut Vec<(Vec<String>, PathBuf)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let path = e.path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            let mut module = prefix.to_vec();
            if path.is_dir() {
                module.push(name);
                files(&path, &module, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                if name != "mod" {
                    module.push(name);
                }
                out.push((module, path));
            }
        }
    }

    /// The names right after a path prefix: `x` in `prefix x::..`, or `a`, `b` in `prefix {a, b::c}`.
    fn names_after(rest: &str) -> Vec<(String, String)> {
        let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
        let item = |s: &str| {
            let first = ident(s);
            let second = s.strip_prefix(&format!("{first}::")).map(ident).unwrap_or_default();
            (first, second)
        };
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                group.split(',').map(|g| item(g.trim())).filter(|(f, _)| !f.is_empty()).collect()
            }
            None => vec![item(rest)].into_iter().filter(|(f, _)| !f.is_empty()).collect(),
        }
    }

    /// The module paths a file names outside its unit tests: `crate::a::b` as `[a, b]`,
    /// `super::x` resolved against `module` (the file's own module path).
    fn references(text: &str, module: &[String]) -> BTreeSet<Vec<String>> {
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut out = BTreeSet::new();
        for line in code.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                for (first, second) in names_after(&line[i + "crate::".len()..]) {
                    out.insert([first, second].into_iter().filter(|s| !s.is_empty()).collect());
                }
            }
            for (i, _) in line.match_indices("super::") {
                if i >= 2 && &line[i - 2..i] == "::" {
                    continue; // `super::super::` or a path segment
                }
                // The parent of a file's module (a `mod.rs` is its folder's module).
                let parent = &module[..module.len().saturating_sub(1)];
                for (name, _) in names_after(&line[i + "super::".len()..]) {
                    if name != "super" {
                        out.insert(parent.iter().cloned().chain([name]).collect());
                    }
                }
            }
        }
        out
    }

    #[test]
    fn modules_import_only_lower_layers_and_siblings_form_no_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &[], &mut all);
        let mut violations = Vec::new();
        // Edges between files of one folder: (folder, from child, to child).
        let mut siblings: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
        for (module, path) in &all {
            let Some(top) = module.first() else { continue }; // lib.rs / main.rs
            if top == "cli" || top == "main" || top == "lib" || top == "layers" {
                continue; // the binary and this file sit above every layer
            }
            let own = layer_of(top).unwrap_or_else(|| panic!("module `{top}` is not in LAYERS"));
            let text = std::fs::read_to_string(path).unwrap();
            for r in references(&text, module) {
                let Some(target) = r.first() else { continue };
                match layer_of(target) {
                    Some(l) if l > own => violations.push(format!(
                        "src/{} uses crate::{}",
                        path.strip_prefix(&src).unwrap().display(),
                        r.join("::")
                    )),
                    _ => {}
                }
                // Inside one folder: the edge between the two children where the paths part.
                if let Some(d) = (1..module.len().min(r.len())).find(|&d| module[d] != r[d])
                    && module[..d] == r[..d]
                {
                    siblings.entry(module[..d].to_vec()).or_default().insert((module[d].clone(), r[d].clone()));
                }
            }
        }
        assert!(violations.is_empty(), "imports from a higher layer:\n{}", violations.join("\n"));
        for (folder, edges) in &siblings {
            // Depth-first search for a cycle.
            let next =
                |n: &str| -> Vec<String> { edges.iter().filter(|(a, _)| a == n).map(|(_, b)| b.clone()).collect() };
            let nodes: BTreeSet<String> = edges.iter().flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
            for start in &nodes {
                let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
                while let Some((n, trail)) = stack.pop() {
                    for m in next(&n) {
                        assert!(&m != start, "import cycle in src/{}: {} -> {m}", folder.join("/"), trail.join(" -> "));
                        if !trail.contains(&m) {
                            let mut t = trail.clone();
                            t.push(m.clone());
                            stack.push((m, t));
                        }
                    }
                }
            }
        }
    }
}
