//! The crash test: SIGKILL a saving child at random moments; every restore must be whole.

use std::{
    io::{BufRead, BufReader, Read, Write},
    time::Duration,
};

use keel_snapshot::CachePersistence;

use crate::support::{
    Rng, assert_whole_generation, child_dir, child_mode, child_start, generation, spawn_child,
    temp_files,
};

const TEST_NAME: &str = "crash::sigkill_during_saves_never_tears_the_snapshot";
const SIZE: u64 = 300;
const KILLS: u32 = 120;

#[test]
fn sigkill_during_saves_never_tears_the_snapshot() {
    if child_mode().as_deref() == Some("crash") {
        run_child();
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    let seed = u64::from(std::process::id()) ^ 0x5EED;
    let mut rng = Rng::new(seed);
    let mut acknowledged: Option<u64> = None;
    let mut next_start = 1;
    let mut mid_save_kills = 0;
    for kill in 0..KILLS {
        let mut child = spawn_child(TEST_NAME, "crash", directory.path(), next_start, None);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        // Wait for 0–2 acknowledgements, then a random fraction of a save, then SIGKILL.
        let mut wait_for = rng.below(3);
        let mut line = String::new();
        while wait_for > 0 {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if let Some(number) = acknowledgement(&line) {
                acknowledged = Some(number);
                wait_for -= 1;
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(3000)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Generations printed before the kill were acknowledged: `save` had returned.
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        // A line cut by the kill has no newline and does not count.
        let complete = &rest[..rest.rfind('\n').map_or(0, |end| end + 1)];
        for printed in complete.lines() {
            if let Some(number) = acknowledgement(printed) {
                acknowledged = Some(number);
            }
        }

        let restored = persistence
            .restore::<serde_json::Value>()
            .unwrap_or_else(|error| panic!("restore after kill {kill} (seed {seed}): {error}"));
        if restored.report.found {
            let number = assert_whole_generation(&restored, SIZE);
            if let Some(acknowledged) = acknowledged {
                assert!(
                    number >= acknowledged,
                    "kill {kill}: restored generation {number}, but {acknowledged} was acknowledged (seed {seed})"
                );
            }
            next_start = number.max(acknowledged.unwrap_or(0)) + 1;
        } else {
            assert_eq!(acknowledged, None, "an acknowledged save vanished");
        }
        let temps = temp_files(directory.path());
        if !temps.is_empty() {
            mid_save_kills += 1;
        }
        assert!(
            temps.len() <= 1,
            "temp files accumulate after kill {kill}: {temps:?}"
        );
    }
    assert!(acknowledged.is_some(), "the child never completed a save");
    // The kills must have hit saves in progress, or the test proves nothing.
    assert!(mid_save_kills > 0, "no kill interrupted a save");
    persistence.save(&generation(0, SIZE)).unwrap();
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}

fn run_child() {
    let persistence = CachePersistence::new(child_dir());
    let mut stdout = std::io::stdout().lock();
    for number in child_start().. {
        persistence.save(&generation(number, SIZE)).unwrap();
        writeln!(stdout, "saved generation {number}").unwrap();
        stdout.flush().unwrap();
    }
}

/// The generation in a child's "saved generation N" line; libtest prints other lines too.
fn acknowledgement(line: &str) -> Option<u64> {
    line.trim_end_matches('\n')
        .strip_prefix("saved generation ")
        .map(|number| number.parse().expect("the child prints whole numbers"))
}
