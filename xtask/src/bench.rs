//! `cargo xtask bench`: runs each crate's `vs_peers` benchmark and writes the report.
//!
//! # Protocol between a benchmark and this runner
//!
//! Each crate that has `benches/vs_peers.rs` (a `harness = false` target) is run with
//! `cargo bench -p <crate> --bench vs_peers`, and these environment variables:
//!
//! - `BENCH_REPORT`: a path; the benchmark appends one JSON object per line to it, with
//!   `bench` (name of the row), `unit` (e.g. `"ns/call"`, `"MiB"`; lower is better),
//!   `ours`, `baseline` (name of what we compared against), `baseline_value`, and an
//!   optional `goal`: the smallest acceptable `ratio`, from the crate's issue.
//! - `BENCH_QUICK=1`: shorten runs; numbers are then only a smoke test.
//!
//! Every row must be measured side by side with its baseline in the same run: these
//! machines are noisy, so ratios, never absolute times, are what we quote.
//!
//! The runner adds `ratio = baseline_value / ours` (greater than 1 means we are faster or
//! smaller) and writes `target/bench/report.json`, an array of the rows.

use std::{fmt::Write as _, fs, process::Command};

use serde_json::{Map, Value, json};

use crate::{crates_with_file, project_root};

/// One measured comparison, as written into `report.json`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) bench: String,
    pub(crate) unit: String,
    pub(crate) ours: f64,
    pub(crate) baseline: String,
    pub(crate) baseline_value: f64,
    pub(crate) goal: Option<f64>,
}

impl Row {
    /// `baseline_value / ours`: above 1 means ours is faster (or smaller).
    pub(crate) fn ratio(&self) -> f64 {
        self.baseline_value / self.ours
    }

    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("bench".into(), json!(self.bench));
        object.insert("unit".into(), json!(self.unit));
        object.insert("ours".into(), json!(self.ours));
        object.insert("baseline".into(), json!(self.baseline));
        object.insert("baseline_value".into(), json!(self.baseline_value));
        object.insert("ratio".into(), json!(round(self.ratio(), 4)));
        if let Some(goal) = self.goal {
            object.insert("goal".into(), json!(goal));
        }
        Value::Object(object)
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut quick = false;
    let mut write_docs = false;
    for arg in args {
        match arg.as_str() {
            "--quick" => quick = true,
            "--write-docs" => write_docs = true,
            other => {
                return Err(format!(
                    "unknown bench flag `{other}`; run `cargo xtask help`"
                ));
            }
        }
    }
    let root = project_root();
    let out_dir = root.join("target/bench");
    fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let rows_path = out_dir.join("rows.jsonl");
    let _ = fs::remove_file(&rows_path);

    let crates = crates_with_file(&root, "benches/vs_peers.rs")?;
    for krate in &crates {
        let args = ["bench", "-p", krate, "--bench", "vs_peers", "--locked"];
        println!(
            "\n== cargo {}{}",
            args.join(" "),
            if quick { " (BENCH_QUICK=1)" } else { "" }
        );
        let mut command = Command::new("cargo");
        command
            .args(args)
            .current_dir(&root)
            .env("BENCH_REPORT", &rows_path);
        if quick {
            command.env("BENCH_QUICK", "1");
        }
        let status = command
            .status()
            .map_err(|e| format!("could not start cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "the `{krate}` benchmark failed; rerun `cargo bench -p {krate} --bench vs_peers` to see why"
            ));
        }
    }

    let text = match fs::read_to_string(&rows_path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", rows_path.display())),
    };
    let rows = parse_rows(&text)?;
    let report_path = out_dir.join("report.json");
    fs::write(&report_path, render_report(&rows))
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    let table = render_table(&rows);
    println!("\n{table}");
    println!("wrote {} ({} rows)", report_path.display(), rows.len());
    if write_docs {
        let docs_path = root.join("docs/benchmarks.md");
        fs::write(&docs_path, render_docs(&table, quick, &crates))
            .map_err(|e| format!("cannot write {}: {e}", docs_path.display()))?;
        println!("wrote {}", docs_path.display());
    }
    Ok(())
}

/// Parses the benchmarks' JSON lines, rejecting a row that could not be a measurement.
pub(crate) fn parse_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("benchmark row on line {}", index + 1);
        let value: Value =
            serde_json::from_str(line).map_err(|e| format!("{at} is not JSON ({e}): {line}"))?;
        let text_field = |key: &str| -> Result<String, String> {
            match value.get(key).and_then(Value::as_str) {
                Some(text) if !text.is_empty() => Ok(text.to_string()),
                _ => Err(format!("{at} needs a non-empty string `{key}`: {line}")),
            }
        };
        let number_field = |key: &str| -> Result<f64, String> {
            match value.get(key).and_then(Value::as_f64) {
                Some(number) if number.is_finite() && number > 0.0 => Ok(number),
                _ => Err(format!(
                    "{at} needs a positive finite number `{key}`: {line}"
                )),
            }
        };
        let goal = match value.get("goal") {
            None | Some(Value::Null) => None,
            Some(_) => Some(number_field("goal")?),
        };
        rows.push(Row {
            bench: text_field("bench")?,
            unit: text_field("unit")?,
            ours: number_field("ours")?,
            baseline: text_field("baseline")?,
            baseline_value: number_field("baseline_value")?,
            goal,
        });
    }
    Ok(rows)
}

pub(crate) fn render_report(rows: &[Row]) -> String {
    let array = Value::Array(rows.iter().map(Row::to_json).collect());
    let mut text = serde_json::to_string_pretty(&array).expect("a JSON value always serializes");
    text.push('\n');
    text
}

/// A Markdown table: readable on a terminal and pasteable into a README as it is.
pub(crate) fn render_table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return "no benchmark rows: no crate has a `benches/vs_peers.rs` that reported any".into();
    }
    let mut table = String::from(
        "| bench | unit | ours | baseline | baseline value | ratio (baseline / ours) | goal |\n\
         |---|---|---:|---|---:|---:|---|\n",
    );
    for row in rows {
        let goal = match row.goal {
            Some(goal) if row.ratio() >= goal => format!("≥ {} met", significant(goal)),
            Some(goal) => format!("≥ {} **missed**", significant(goal)),
            None => String::new(),
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {:.2}× | {} |",
            row.bench,
            row.unit,
            significant(row.ours),
            row.baseline,
            significant(row.baseline_value),
            row.ratio(),
            goal
        );
    }
    table
}

/// Three significant digits, the precision a noisy machine supports.
fn significant(value: f64) -> String {
    let text = if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else if value >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    };
    if text.contains('.') {
        // 0.625 stays, 0.500 reads 0.5, 3.50 reads 3.5; integers keep their zeros.
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn render_docs(table: &str, quick: bool, crates: &[String]) -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let memory = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .next()
                .map(|line| line.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or_else(
            || "unknown".into(),
            |kib| format!("{} GiB", kib / (1024 * 1024)),
        );
    let rustc = command_output("rustc", &["--version"]);
    let date = command_output("date", &["-u", "+%Y-%m-%d"]);
    let flags = if quick {
        " --quick` (smoke-test lengths: numbers are rough)"
    } else {
        "`"
    };
    format!(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench --write-docs{flags}; do not edit by hand.\n\n\
         - date: {date}\n- machine: {cpu}, {cores} cores, {memory} memory\n- toolchain: {rustc}\n\
         - crates measured: {}\n\n\
         Each row is measured side by side with its baseline in one run. \
         `ratio = baseline value / ours`: above 1 means ours is faster (or smaller). \
         A `goal` is the smallest ratio the crate's issue asks for. \
         Absolute numbers vary from machine to machine and from run to run; compare ratios.\n\n\
         {table}\n\
         Reproduce: `cargo xtask bench` (writes `target/bench/report.json`); \
         `cargo xtask bench --write-docs` regenerates this page.\n",
        crates.join(", "),
    )
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or_else(|| "unknown".into(), |text| text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE_ROWS: &str = r#"
{"bench":"closed success, 1 thread","unit":"ns/call","ours":1.5,"baseline":"failsafe 1.3","baseline_value":12.0,"goal":3.5}
{"bench":"closed success, 1 thread","unit":"ns/call","ours":1.5,"baseline":"bare call","baseline_value":1.0}
"#;

    #[test]
    fn report_has_the_documented_fields_and_ratio() {
        let rows = parse_rows(FAKE_ROWS).unwrap();
        assert_eq!(rows.len(), 2);
        let report: Value = serde_json::from_str(&render_report(&rows)).unwrap();
        let first = &report[0];
        for key in ["bench", "unit", "baseline"] {
            assert!(first[key].is_string(), "{key} must be a string in {first}");
        }
        for key in ["ours", "baseline_value", "ratio"] {
            assert!(first[key].is_number(), "{key} must be a number in {first}");
        }
        assert_eq!(first["ratio"], json!(8.0), "ratio is baseline_value / ours");
        assert!((report[1]["ratio"].as_f64().unwrap() - 1.0 / 1.5).abs() < 1e-3);
    }

    #[test]
    fn table_says_whether_each_goal_was_met() {
        let table = render_table(&parse_rows(FAKE_ROWS).unwrap());
        assert!(table.contains("8.00×"), "{table}");
        assert!(table.contains("≥ 3.5 met"), "{table}");
        let missed = FAKE_ROWS.replace("12.0", "3.0");
        let table = render_table(&parse_rows(&missed).unwrap());
        assert!(table.contains("**missed**"), "{table}");
    }

    #[test]
    fn rows_that_cannot_be_measurements_are_rejected_with_their_line() {
        let zero = r#"{"bench":"b","unit":"ns","ours":0,"baseline":"x","baseline_value":1}"#;
        let error = parse_rows(zero).unwrap_err();
        assert!(
            error.contains("line 1") && error.contains("`ours`"),
            "{error}"
        );
        let missing = r#"{"bench":"b","ours":1,"baseline":"x","baseline_value":1}"#;
        assert!(parse_rows(missing).unwrap_err().contains("`unit`"));
        assert!(parse_rows("not json").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn numbers_keep_three_significant_digits_without_trailing_zeros() {
        assert_eq!(significant(4940.0), "4940");
        assert_eq!(significant(1.0 / 3.0), "0.333");
        assert_eq!(significant(0.5), "0.5");
        assert_eq!(significant(3.5), "3.5");
        assert_eq!(significant(20.0), "20");
    }

    #[test]
    fn no_rows_is_an_empty_array() {
        assert_eq!(render_report(&[]).trim(), "[]");
    }
}
