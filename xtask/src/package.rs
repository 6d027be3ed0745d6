//! `cargo xtask packaged-readmes`: proves that what `cargo package` produced is what a
//! registry user gets working.
//!
//! It runs after `cargo package` (CI's `package` step), which has already built each library
//! crate from its packaged files alone. For each packaged crate under `target/package/` it
//! checks that the packaged README is the crate's README and that the packaged `lib.rs`
//! includes that README as doctests (so every example on the registry page is one that
//! `cargo test` compiles and runs), then builds and runs the README's first example in a
//! scratch project outside the workspace that depends on the unpacked packages by path, the
//! way a new user's project depends on the published crates.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{crates_with_file, package_field, package_name};

/// What the packaged `lib.rs` must contain, on consecutive lines, for the README's
/// examples to be doctests.
const README_DOCTESTS: [&str; 2] = ["#[cfg(doctest)]", "#[doc = include_str!(\"../README.md\")]"];

/// The scratch project's dependencies besides the packaged crates: what the README's first
/// examples use (an async runtime, serde). Versions resolve from the workspace's lock file.
const SCRATCH_DEPENDENCIES: &str = r#"tokio = { version = "1", features = ["rt", "rt-multi-thread", "macros", "time"] }
serde = { version = "1", features = ["derive"] }
serde_json = "1"
"#;

pub(crate) fn run() -> Result<(), String> {
    let root = crate::project_root();
    let mut packages = Vec::new();
    for folder in crates_with_file(&root, "Cargo.toml")? {
        let name = package_name(&root, &folder)?;
        let version = package_field(&root, &folder, "version")?;
        let unpacked = root
            .join("target/package")
            .join(format!("{name}-{version}"));
        if !unpacked.join("Cargo.toml").is_file() {
            return Err(format!(
                "{} is missing: run `cargo package --locked -p {name}` first (CI's `package` step)",
                unpacked.display()
            ));
        }
        check_readme_is_doctested(&root, &folder, &unpacked)?;
        let readme = read(&unpacked.join("README.md"))?;
        let example = first_example(&readme).ok_or_else(|| {
            format!("the packaged README of {name} has no Rust example (a ```rust block)")
        })?;
        println!(
            "{name}: packaged README is the doctested one; first example: {} lines",
            example.lines().count()
        );
        packages.push((name, unpacked, example));
    }
    build_scratch_project(&root, &packages)
}

/// The packaged README must be the crate's README, and the packaged `lib.rs` must include it
/// as doctests.
fn check_readme_is_doctested(root: &Path, folder: &str, unpacked: &Path) -> Result<(), String> {
    let ours = read(&root.join("crates").join(folder).join("README.md"))?;
    let packaged = read(&unpacked.join("README.md"))?;
    if ours != packaged {
        return Err(format!(
            "{}/README.md differs from crates/{folder}/README.md: set `readme = \"README.md\"` in its manifest",
            unpacked.display()
        ));
    }
    let lib = read(&unpacked.join("src/lib.rs"))?;
    let lines: Vec<&str> = lib.lines().map(str::trim).collect();
    let included = lines
        .windows(2)
        .any(|pair| pair[0] == README_DOCTESTS[0] && pair[1] == README_DOCTESTS[1]);
    if included {
        Ok(())
    } else {
        Err(format!(
            "crates/{folder}/src/lib.rs does not include its README as doctests: add\n    {}\n    {}\n    struct ReadmeDoctests;",
            README_DOCTESTS[0], README_DOCTESTS[1]
        ))
    }
}

/// The first fenced block of `markdown` that rustdoc runs as a Rust doctest, fences included.
fn first_example(markdown: &str) -> Option<String> {
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let mut body = String::new();
        for inner in lines.by_ref() {
            if inner.trim_start().starts_with("```") {
                break;
            }
            body.push_str(inner);
            body.push('\n');
        }
        if is_rust_doctest(info) {
            return Some(format!("```{info}\n{body}```\n"));
        }
    }
    None
}

/// Whether rustdoc compiles a block with this info string (` ```rust,no_run ` yes,
/// ` ```toml ` or ` ```rust,ignore ` no).
fn is_rust_doctest(info: &str) -> bool {
    let mut tokens = info
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|token| !token.is_empty());
    tokens.all(|token| {
        matches!(token, "rust" | "no_run" | "should_panic") || token.starts_with("edition")
    })
}

/// Builds and runs each first example as a doctest of a scratch crate outside the workspace
/// that depends on the unpacked packages by path.
fn build_scratch_project(
    root: &Path,
    packages: &[(String, PathBuf, String)],
) -> Result<(), String> {
    let scratch =
        std::env::temp_dir().join(format!("keel-packaged-readmes-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(scratch.join("src"))
        .map_err(|error| format!("cannot create {}: {error}", scratch.display()))?;
    let mut manifest = String::from(
        "[package]\nname = \"keel-scratch\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n[dependencies]\n",
    );
    let mut lib = String::from("//! The first example of each packaged README, as doctests.\n");
    for (name, unpacked, example) in packages {
        let _ = writeln!(
            manifest,
            "{name} = {{ path = {:?} }}",
            unpacked.display().to_string()
        );
        let file = format!("{name}.md");
        write(&scratch.join("src").join(&file), example)?;
        let _ = writeln!(
            lib,
            "#[doc = include_str!({file:?})]\npub mod {} {{}}",
            name.replace('-', "_")
        );
    }
    manifest.push_str(SCRATCH_DEPENDENCIES);
    write(&scratch.join("Cargo.toml"), &manifest)?;
    write(&scratch.join("src/lib.rs"), &lib)?;
    // The workspace's lock file: the scratch build resolves to the versions CI tested.
    fs::copy(root.join("Cargo.lock"), scratch.join("Cargo.lock"))
        .map_err(|error| format!("cannot copy Cargo.lock: {error}"))?;
    println!("scratch project: {}", scratch.display());
    let status = Command::new("cargo")
        .args(["test", "--doc", "--offline"])
        .current_dir(&scratch)
        .env("CARGO_TARGET_DIR", root.join("target/scratch"))
        .status()
        .map_err(|error| format!("could not start cargo: {error}"))?;
    if status.success() {
        let _ = fs::remove_dir_all(&scratch);
        Ok(())
    } else {
        Err(format!(
            "a packaged README's first example does not build against the packaged crates; the scratch project is kept in {}",
            scratch.display()
        ))
    }
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::{first_example, is_rust_doctest};

    #[test]
    fn the_first_example_is_the_first_block_rustdoc_runs() {
        let readme = "# T\n```toml\n[dependencies]\n```\n```rust,ignore\nnot this\n```\n```rust\nlet a = 1;\n```\n```rust\nlet b = 2;\n```\n";
        assert_eq!(
            first_example(readme).as_deref(),
            Some("```rust\nlet a = 1;\n```\n")
        );
        assert_eq!(
            first_example("```\nplain();\n```\n").as_deref(),
            Some("```\nplain();\n```\n")
        );
        assert_eq!(first_example("```sh\ncargo add x\n```\n"), None);
    }

    #[test]
    fn info_strings_rustdoc_compiles() {
        for info in [
            "",
            "rust",
            "rust,no_run",
            "no_run",
            "rust, edition2024",
            "should_panic",
        ] {
            assert!(is_rust_doctest(info), "{info:?}");
        }
        for info in [
            "toml",
            "text",
            "sh",
            "rust,ignore",
            "ignore",
            "compile_fail",
            "json",
        ] {
            assert!(!is_rust_doctest(info), "{info:?}");
        }
    }
}
