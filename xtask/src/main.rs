//! Project automation: `cargo xtask ci` is the whole definition of CI, `cargo xtask bench`
//! runs every crate's comparison benchmark and writes the report.
//!
//! Every command is echoed before it runs, so a failure can be reproduced by copying the
//! line. The package's library half (`src/lib.rs`) is the benchmark harness the crates'
//! benchmarks measure with; the binary needs only `serde_json`, for the report.

mod bench;
mod free_pages;
mod package;
#[cfg(test)]
mod tidy;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

const HELP: &str = "\
cargo xtask <task>

Tasks:
  ci                  format check, clippy, tests (unit, integration, doc, property, tidy),
                      rustdoc, loom models, benches compiled. The whole CI.
  bench [--only <crate|row text>] [--rounds N] [--quick] [--twice] [--write-docs]
                      run every crate's `vs_peers` benchmark: each row interleaves ours and
                      its baseline in rounds and reports the median ratio with its spread;
                      writes target/bench/report.json and machine.json, prints a table.
                      --only X      one crate, or the rows whose name or baseline contain X
                      --rounds N    exactly N rounds for every row (default: 41 for
                                    nanosecond rows, more until the median settles)
                      --quick       short runs, for smoke testing
                      --twice       run it all twice; list the rows whose median ratio
                                    moved > 15% (target/bench/stability.md), fail if any
                      --write-docs  also regenerate docs/benchmarks.md from this (full) run
  packaged-readmes    after `cargo package`: each packaged README is the doctested one, and
                      its first example builds and runs in a scratch project outside the
                      workspace that depends on the unpacked packages (CI runs it)
  help                this text
";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::run(&args[1..]),
        Some("packaged-readmes") => package::run(),
        Some("help" | "--help" | "-h") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown task `{other}`; run `cargo xtask help`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// One step of CI: a command, the environment it needs, and what to do when it fails.
struct Step {
    name: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    fix_hint: String,
}

impl Step {
    fn new(name: &'static str, args: &[&str], fix_hint: &str) -> Step {
        Step {
            name,
            args: args.iter().map(ToString::to_string).collect(),
            env: Vec::new(),
            fix_hint: fix_hint.to_string(),
        }
    }

    /// Appends `-p <package>` for each package.
    fn packages(mut self, packages: &[String]) -> Step {
        for package in packages {
            self.args.push("-p".to_string());
            self.args.push(package.clone());
        }
        self
    }

    fn env(mut self, key: &'static str, value: impl Into<String>) -> Step {
        self.env.push((key, value.into()));
        self
    }
}

fn ci() -> Result<(), String> {
    let root = project_root();
    let steps = ci_steps(&root)?;
    run_steps(&root, &steps)
}

/// The steps of CI, in order: the one definition of what CI checks.
fn ci_steps(root: &Path) -> Result<Vec<Step>, String> {
    let mut steps = vec![
        Step::new(
            "fmt",
            &["cargo", "fmt", "--all", "--check"],
            "run `cargo fmt --all` and commit the result",
        ),
        Step::new(
            "clippy",
            &[
                "cargo",
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--locked",
                "--",
                "-D",
                "warnings",
            ],
            "fix the warnings above (`cargo clippy --workspace --all-targets` shows them while editing)",
        ),
        Step::new(
            "test",
            &["cargo", "test", "--workspace", "--all-features", "--locked"],
            "reproduce one crate with `cargo test -p <crate> --all-features`; a tidy failure says how to fix itself",
        ),
    ];
    steps.extend(library_steps(root)?);
    // Model tests are discovered, so a crate that adds `tests/loom.rs` is checked without
    // editing this file. They build with `--cfg loom` in their own target directory so the
    // normal build cache is not invalidated by the changed RUSTFLAGS.
    for folder in crates_with_file(root, "tests/loom.rs")? {
        let krate = package_name(root, &folder)?;
        steps.push(
            Step {
                name: "loom",
                args: ["cargo", "test", "-p", &krate, "--test", "loom", "--release", "--locked"]
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                env: Vec::new(),
                fix_hint: format!(
                    "reproduce with `RUSTFLAGS=\"--cfg loom\" CARGO_TARGET_DIR=target/loom cargo test -p {krate} --test loom --release`; \
                     set LOOM_LOG=trace LOOM_LOCATION=1 for the failing interleaving"
                ),
            }
            .env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", root.join("target/loom").display().to_string()),
        );
    }
    steps.push(Step::new(
        "bench-build",
        // The dev profile reuses every dependency the test step already built; a release
        // build of the benchmarks' peers would double CI's time and prove nothing more.
        // `cargo xtask bench` builds them optimized when they are run.
        &[
            "cargo",
            "build",
            "--workspace",
            "--benches",
            "--all-features",
            "--locked",
        ],
        "the benchmarks must compile; run `cargo build --workspace --benches --all-features` to see why they do not",
    ));
    Ok(steps)
}

/// The steps that check each library crate on its own: without its optional features, as
/// packaged for the registry, and its rustdoc.
fn library_steps(root: &Path) -> Result<Vec<Step>, String> {
    let libraries = crates_with_file(root, "Cargo.toml")?
        .iter()
        .map(|folder| package_name(root, folder))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![
        // Every feature is tested above; this proves each library still builds without its
        // optional features (features are additive, so nothing may need one to compile).
        Step::new(
            "no-default",
            &[
                "cargo",
                "check",
                "--locked",
                "--no-default-features",
            ],
            "a library needs one of its optional features to compile: gate the code that uses it with `#[cfg(feature = \"...\")]`",
        )
        .packages(&libraries)
        .env("RUSTFLAGS", "-D warnings")
        .env("CARGO_TARGET_DIR", root.join("target/no-default").display().to_string()),
        // What `cargo publish` would upload, built from its packaged files alone (no path to a
        // sibling, no file outside the crate); then the packaged READMEs' first examples in a
        // scratch project outside the workspace.
        Step::new(
            "package",
            &[
                "cargo",
                "package",
                "--locked",
                "--allow-dirty",
            ],
            "a packaged crate does not build alone: a file outside `include` in its manifest, or a path-only dependency",
        )
        .packages(&libraries),
        Step::new(
            "packaged-readmes",
            &["cargo", "xtask", "packaged-readmes"],
            "the message above says which README or example; the scratch project is kept to reproduce it",
        ),
        Step::new(
            "doc",
            &["cargo", "doc", "--workspace", "--all-features", "--no-deps", "--locked"],
            "fix the rustdoc warnings above (broken intra-doc links, missing docs)",
        )
        .env("RUSTDOCFLAGS", "-D warnings"),
    ])
}

fn run_steps(root: &Path, steps: &[Step]) -> Result<(), String> {
    let total = steps.len();
    let ci_start = Instant::now();
    let mut timings = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        println!(
            "\n== [{}/{total}] {}: {}",
            index + 1,
            step.name,
            render(step)
        );
        let started = Instant::now();
        let succeeded = run_step(root, step)?;
        let elapsed = started.elapsed();
        if !succeeded {
            println!("== FAILED {} after {}", step.name, seconds(elapsed));
            return Err(format!("`{}` failed: {}", step.name, step.fix_hint));
        }
        println!("== ok {} ({})", step.name, seconds(elapsed));
        timings.push((step.name, elapsed));
    }
    println!("\n== CI passed in {}", seconds(ci_start.elapsed()));
    for (name, elapsed) in timings {
        println!("   {name:<16} {}", seconds(elapsed));
    }
    Ok(())
}

fn render(step: &Step) -> String {
    let env: Vec<String> = step
        .env
        .iter()
        .map(|(k, v)| format!("{k}=\"{v}\""))
        .collect();
    let mut words = env;
    words.extend(step.args.iter().cloned());
    words.join(" ")
}

fn run_step(root: &Path, step: &Step) -> Result<bool, String> {
    let mut command = Command::new(&step.args[0]);
    command.args(&step.args[1..]).current_dir(root);
    for (key, value) in &step.env {
        command.env(key, value);
    }
    let status = command
        .status()
        .map_err(|error| format!("could not start `{}`: {error}", step.args[0]))?;
    Ok(status.success())
}

fn seconds(elapsed: Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

/// The package name of the crate in `crates/<folder>` (the folders keep short names; the
/// packages carry the `keel-` prefix a registry needs), read from its manifest.
fn package_name(root: &Path, folder: &str) -> Result<String, String> {
    package_field(root, folder, "name")
}

/// A string field under `[package]` in `crates/<folder>/Cargo.toml` (`name = "..."`).
fn package_field(root: &Path, folder: &str, field: &str) -> Result<String, String> {
    let manifest = root.join("crates").join(folder).join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|error| format!("cannot read {}: {error}", manifest.display()))?;
    let prefix = format!("{field} = \"");
    text.lines()
        .skip_while(|line| line.trim() != "[package]")
        .find_map(|line| line.strip_prefix(&prefix)?.strip_suffix('"'))
        .map(ToString::to_string)
        .ok_or_else(|| format!("{} has no `{field}` under `[package]`", manifest.display()))
}

/// Names of the folders under `crates/` that contain `relative` (sorted, so runs are repeatable).
fn crates_with_file(root: &Path, relative: &str) -> Result<Vec<String>, String> {
    let crates_dir = root.join("crates");
    let entries = std::fs::read_dir(&crates_dir)
        .map_err(|error| format!("cannot list {}: {error}", crates_dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|error| format!("cannot list {}: {error}", crates_dir.display()))?;
        if entry.path().join(relative).is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}
