//! Tidy checks: project conventions enforced as plain `#[test]`s, run by `cargo test`.
//!
//! Each failure message says how to fix it. Add a check here rather than a script.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::project_root;

/// Every `.rs` file under the given top-level folders, skipping build output.
fn rust_files(root: &Path, folders: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|name| name == "target") {
                    continue;
                }
                walk(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    for folder in folders {
        walk(&root.join(folder), &mut found);
    }
    found.sort();
    found
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The library crates: each folder under `crates/` with a manifest.
fn library_crates(root: &Path) -> Vec<PathBuf> {
    let mut crates: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("crates/ exists")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    crates
}

#[test]
fn library_crates_never_depend_on_each_other() {
    let root = project_root();
    let crates_dir = root.join("crates");
    let packages = workspace_packages(&root);
    let is_library = |package: &Value| {
        package["manifest_path"]
            .as_str()
            .is_some_and(|path| Path::new(path).starts_with(&crates_dir))
    };
    let library_names: Vec<&str> = packages
        .iter()
        .filter(|package| is_library(package))
        .filter_map(|package| package["name"].as_str())
        .collect();
    assert!(
        library_names.len() >= 3,
        "expected the three library crates, found {library_names:?}"
    );

    let mut violations = Vec::new();
    for package in packages.iter().filter(|package| is_library(package)) {
        let name = package["name"].as_str().unwrap_or("?");
        for dependency in package["dependencies"].as_array().into_iter().flatten() {
            let dependency_name = dependency["name"].as_str().unwrap_or("?");
            let points_into_crates = dependency["path"]
                .as_str()
                .is_some_and(|path| Path::new(path).starts_with(&crates_dir));
            // A crate may name itself as a dev-dependency to turn its own features on
            // for its tests; that is not a dependency on another crate.
            if dependency_name == name {
                continue;
            }
            if library_names.contains(&dependency_name) || points_into_crates {
                violations.push(format!("{name} -> {dependency_name}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "crates under crates/ must stay independent (users pick only the ones they need), \
         but found {violations:?}. Remove the dependency; code that needs two crates belongs \
         in the `integration` package under tests/ or in an example."
    );
}

/// `cargo metadata --no-deps`: every workspace package, as JSON.
fn workspace_packages(root: &Path) -> Vec<Value> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value =
        serde_json::from_slice(&output.stdout).expect("cargo metadata prints JSON");
    metadata["packages"]
        .as_array()
        .expect("packages array")
        .clone()
}

#[test]
fn library_crates_carry_what_a_registry_page_needs() {
    let root = project_root();
    let crates_dir = root.join("crates");
    let mut problems = Vec::new();
    for package in workspace_packages(&root) {
        let name = package["name"].as_str().unwrap_or("?").to_string();
        let in_crates = package["manifest_path"]
            .as_str()
            .is_some_and(|path| Path::new(path).starts_with(&crates_dir));
        // `publish: []` is `publish = false`; null means any registry.
        let publishable = !package["publish"].as_array().is_some_and(Vec::is_empty);
        if !in_crates {
            if publishable {
                problems.push(format!("{name}: not a library crate, so `publish = false`"));
            }
            continue;
        }
        if !name.starts_with("keel-") {
            problems.push(format!(
                "{name}: library packages are named `keel-<folder>`"
            ));
        }
        if !publishable {
            problems.push(format!(
                "{name}: a library crate is publishable (drop `publish = false`)"
            ));
        }
        for field in [
            "description",
            "license",
            "repository",
            "readme",
            "rust_version",
            "documentation",
        ] {
            if package[field].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{name}: `{}` is missing", field.replace('_', "-")));
            }
        }
        for field in ["keywords", "categories"] {
            if package[field].as_array().is_none_or(Vec::is_empty) {
                problems.push(format!("{name}: `{field}` is missing"));
            }
        }
        if package["metadata"]["docs"]["rs"]["all-features"] != Value::Bool(true) {
            problems.push(format!(
                "{name}: `[package.metadata.docs.rs] all-features = true` is missing"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "library crates must be publishable with a complete registry page (and nothing else \
         publishable): {problems:#?}"
    );
}

#[test]
fn every_library_crate_has_readme_and_changelog() {
    let root = project_root();
    let mut missing = Vec::new();
    for krate in library_crates(&root) {
        for file in ["README.md", "CHANGELOG.md"] {
            if !krate.join(file).is_file() {
                missing.push(relative(&root, &krate.join(file)));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "every crate needs a README.md (what it is, an example, its benchmark table) and a \
         CHANGELOG.md (newest first: Added / Changed / Fixed); create {missing:?}"
    );
}

#[test]
fn every_rust_file_says_what_it_is_for() {
    let root = project_root();
    let mut unexplained = Vec::new();
    for file in rust_files(&root, &["crates", "xtask", "tests"]) {
        let text = fs::read_to_string(&file).unwrap_or_default();
        let first_line = text
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("");
        if !first_line.trim_start().starts_with("//") {
            unexplained.push(relative(&root, &file));
        }
    }
    assert!(
        unexplained.is_empty(),
        "start each of these files with a `//!` (or `//`) line saying what it is for: {unexplained:?}"
    );
}

#[test]
fn atomics_only_through_the_sync_facade() {
    // A crate with a `src/sync.rs` facade (for loom) must import atomics only through it,
    // otherwise `--cfg loom` silently checks a model that is not the code we ship.
    let root = project_root();
    let mut offenders = Vec::new();
    for krate in library_crates(&root) {
        if !krate.join("src/sync.rs").is_file() {
            continue;
        }
        for file in rust_files(&krate, &["src"]) {
            if file.ends_with("src/sync.rs") {
                continue;
            }
            let text = fs::read_to_string(&file).unwrap_or_default();
            if text.contains("std::sync::atomic") || text.contains("core::sync::atomic") {
                offenders.push(relative(&root, &file));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "import atomics through the crate's `sync` module (`use crate::sync::...`) so loom \
         can replace them; these files import them directly: {offenders:?}"
    );
}

#[test]
fn libraries_log_through_tracing_never_by_printing() {
    let root = project_root();
    let mut offenders = Vec::new();
    for krate in library_crates(&root) {
        for file in rust_files(&krate, &["src"]) {
            let text = fs::read_to_string(&file).unwrap_or_default();
            for (number, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue; // doc examples may print; they are not the library
                }
                if ["println!", "eprintln!", "print!(", "eprint!(", "dbg!("]
                    .iter()
                    .any(|macro_name| code.contains(macro_name))
                {
                    offenders.push(format!("{}:{}", relative(&root, &file), number + 1));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "library crates log through `tracing` (only the documented JSON-line sink writes to \
         stderr, through `std::io::Write`); replace the printing at {offenders:?}"
    );
}

#[test]
fn every_benchmark_measures_through_the_harness() {
    // A row timed by hand (ours in one pass, the baseline in another) is what made goals
    // flip from run to run; `xtask::harness` interleaves the two round by round.
    let root = project_root();
    let mut offenders = Vec::new();
    let mut packages = library_crates(&root);
    packages.push(root.join("tests"));
    for krate in packages {
        let bench = krate.join("benches/vs_peers.rs");
        let Ok(text) = fs::read_to_string(&bench) else {
            continue;
        };
        if !text.contains("Harness::from_env") || text.contains("BENCH_REPORT") {
            offenders.push(relative(&root, &bench));
        }
    }
    assert!(
        offenders.is_empty(),
        "measure every row with `xtask::harness::Harness` (`nanos` or `compare`) and let it \
         write the report, instead of timing and writing rows by hand: {offenders:?}"
    );
}

#[test]
fn the_harness_is_only_ever_a_dev_dependency() {
    // `xtask` is never published; a library that depended on it for real would not build
    // for a user, and would hand them our benchmark code.
    let root = project_root();
    let mut offenders = Vec::new();
    for krate in library_crates(&root) {
        let manifest = fs::read_to_string(krate.join("Cargo.toml")).unwrap_or_default();
        let mut section = String::new();
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                section = line.to_string();
            } else if line.starts_with("xtask") && !section.contains("dev-dependencies") {
                offenders.push(format!("{} in {section}", relative(&root, &krate)));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "depend on `xtask` (the benchmark harness) only under [dev-dependencies]: {offenders:?}"
    );
}
