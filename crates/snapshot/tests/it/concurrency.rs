//! Concurrency: threads and a second process save while a reader restores in a loop; the
//! reader never sees an invalid or mixed file, and no temp file is left.

use std::{
    io::Read,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
};

use keel_snapshot::CachePersistence;

use crate::support::{
    assert_whole_generation, child_dir, child_mode, child_start, generation, spawn_child,
    temp_files,
};

const TEST_NAME: &str = "concurrency::threads_and_processes_save_while_a_reader_restores";
const SIZE: u64 = 200;
const SAVES_PER_SAVER: u64 = 25;

#[test]
fn threads_and_processes_save_while_a_reader_restores() {
    if child_mode().as_deref() == Some("saver") {
        let persistence = CachePersistence::new(child_dir());
        for number in child_start()..child_start() + SAVES_PER_SAVER {
            persistence.save(&generation(number, SIZE)).unwrap();
        }
        println!("child saver done");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let persistence = CachePersistence::new(directory.path());
    persistence.save(&generation(0, SIZE)).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let persistence = persistence.clone();
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut restore_count = 0_u64;
            // Relaxed: the flag only ends the loop; the file system orders the data.
            while !done.load(Ordering::Relaxed) || restore_count < 10 {
                let restored = persistence
                    .restore::<serde_json::Value>()
                    .expect("the reader never sees an invalid file");
                assert_whole_generation(&restored, SIZE);
                restore_count += 1;
            }
            restore_count
        })
    };
    let mut child = spawn_child(TEST_NAME, "saver", directory.path(), 90_000, None);
    let savers: Vec<_> = (1..=3_u64)
        .map(|saver| {
            // Separate instances, like separate components of one process.
            let persistence = CachePersistence::new(directory.path());
            thread::spawn(move || {
                for index in 0..SAVES_PER_SAVER {
                    persistence
                        .save(&generation(saver * 1000 + index, SIZE))
                        .unwrap();
                }
            })
        })
        .collect();
    for saver in savers {
        saver.join().unwrap();
    }
    let mut output = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut output)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{output}");
    assert!(output.contains("child saver done"), "{output}");
    done.store(true, Ordering::Relaxed);
    let restore_count = reader.join().unwrap();
    assert!(restore_count >= 10);

    let last = assert_whole_generation(&persistence.restore().unwrap(), SIZE);
    assert!(
        (1000..4000).contains(&last) || last >= 90_000,
        "the final snapshot is one of the saved generations: {last}"
    );
    assert_eq!(temp_files(directory.path()), Vec::<String>::new());
}
