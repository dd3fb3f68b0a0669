//! No code but the policy's one checker builds a `ModelPart` (docs/regression-plan.md §3):
//! every model part leaves a node through `policies::model::release_model`, whole or not at
//! all. Scans the workspace's Rust sources for a struct literal `ModelPart { ... }` outside
//! `policies/src/` and outside tests (test directories, and a file's `#[cfg(test)]` part).
//! Patterns that only read a part (`ModelPart { numbers, .. }`) are allowed.

use std::path::{Path, PathBuf};

const NAME: &str = "ModelPart";
/// The part and the messages of its numbers: none is built outside the checker.
const NAMES: [&str; 4] = [NAME, "SufficientPart", "ContributionPart", "NoisySufficientPart"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            // Build output, VCS data and test code are not shipped code.
            if !(name.starts_with('.') || name == "target" || name == "tests") {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// Byte offsets of struct literals `ModelPart { .. }` in `code`: the name (not part of a longer
/// identifier and not a return type or impl), then `{`, with a body that does not end in `..`
/// (a pattern that reads a part).
fn literals(code: &str, name: &str) -> Vec<usize> {
    let mut found = Vec::new();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    for (at, _) in code.match_indices(name) {
        let before = code[..at].chars().next_back();
        let rest = &code[at + name.len()..];
        if before.is_some_and(ident) || rest.chars().next().is_some_and(ident) {
            continue;
        }
        let Some(body) = rest.trim_start().strip_prefix('{') else { continue };
        // A return type or an impl before a block is no literal: `-> pb::ModelPart {`.
        let path = code[..at].trim_end_matches(|c: char| ident(c) || c == ':').trim_end();
        if path.ends_with("->") || path.ends_with(" for") || path.ends_with("impl") {
            continue;
        }
        let mut depth = 1;
        let end = body.char_indices().find_map(|(i, c)| {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            (depth == 0).then_some(i)
        });
        let inner = end.map_or(body, |e| &body[..e]).trim().trim_end_matches(',').trim_end();
        if !inner.ends_with("..") {
            found.push(at);
        }
    }
    found
}

#[test]
fn only_the_policy_builds_model_parts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace above policies/");
    let mut files = Vec::new();
    sources(root, &mut files);
    assert!(files.len() > 50, "the scan found the workspace's sources ({} files)", files.len());
    let allowed = root.join("policies").join("src");
    let mut offenders = Vec::new();
    for file in files.iter().filter(|f| !f.starts_with(&allowed)) {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        let shipped = text.split("#[cfg(test)]").next().unwrap_or_default();
        for name in NAMES {
            for at in literals(shipped, name) {
                let line = shipped[..at].lines().count();
                offenders.push(format!("{name} at {}:{line}", file.strip_prefix(root).unwrap_or(file).display()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "a model part or its numbers are built outside the policy's checker: {offenders:?}; pass the numbers to release_model instead"
    );
}

#[test]
fn the_scan_tells_literals_from_patterns() {
    assert_eq!(literals("let p = pb::ModelPart { attempt: 1, ..Default::default() };", NAME).len(), 1);
    assert_eq!(literals("pb::ModelPart{ numbers: Some(n), columns }", NAME).len(), 1);
    assert!(literals("let pb::ModelPart { numbers, .. } = part;", NAME).is_empty());
    assert!(literals("if let Some(ModelPart { beta, columns, .. }) = x {}", NAME).is_empty());
    assert!(literals("fn f(p: &pb::ModelPart) {} struct NoisyModelPart { a: u8 }", NAME).is_empty());
    assert!(literals("fn f() -> pb::ModelPart { g() } impl From<X> for ModelPart { }", NAME).is_empty());
}

#[test]
fn the_scan_finds_the_numbers_messages_too() {
    let code = "let z = pb::NoisySufficientPart { zz: vec![] }; let s = SufficientPart { n: 1 };";
    assert_eq!(literals(code, "NoisySufficientPart").len(), 1);
    assert_eq!(literals(code, "SufficientPart").len(), 1, "not counted twice inside NoisySufficientPart");
}
