//! Pausing the guest's free page reporting for the length of a benchmark run.
//!
//! On a virtual machine whose balloon device takes *free page reporting* (virtio-balloon's
//! `VIRTIO_BALLOON_F_REPORTING`; Linux's `page_reporting`), the guest hands large blocks of
//! memory it has freed back to the host, which drops them, and whichever allocation gets
//! such a block next waits for the host to fault every page of it in afresh. Which call
//! that is depends on when the reporting worker last ran, not on the code being timed: on
//! one host a 242 MB `write` into the page cache (the original plan's save) took 0.05 s or
//! 0.5 s, at random, so that row's baseline was bimodal (0.56–0.65 s or 1.0–1.6 s per save,
//! two rounds in five slow) and its median ratio 4.16× in one run and 3.46× in the next.
//! With reporting paused the same write took 0.05 s every time after the first.
//!
//! Linux reports only free blocks of at least `page_reporting_order` (a module parameter,
//! writable by root), so an order above the largest (10 on x86-64) reports nothing. The run
//! sets it, says so in the output and in `machine.json`, and puts the old value back when
//! it ends (a run killed outright leaves reporting paused: the guest merely keeps memory it
//! freed). Where the parameter is absent or cannot be written, nothing changes and the
//! output says which.

use std::{fs, path::PathBuf};

/// Where Linux exposes the order, when the kernel has free page reporting at all.
pub(crate) const ORDER_PATH: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// An order no free block reaches (`MAX_PAGE_ORDER` is 10 on x86-64 and 10 or less on
/// arm64's 4 KiB pages), so nothing is reported.
const NEVER: &str = "11";

/// Free page reporting as the run found and left it; restores the old order when dropped.
#[derive(Debug)]
pub(crate) struct Paused {
    /// The parameter and its value before the run, when the run changed it.
    restore: Option<(PathBuf, String)>,
    /// What was done, for the output and `machine.json`.
    pub(crate) state: String,
}

/// Pauses reporting through the parameter at `path` (see the module docs).
pub(crate) fn pause(path: impl Into<PathBuf>) -> Paused {
    let path = path.into();
    let unchanged = |state: String| Paused {
        restore: None,
        state,
    };
    let Ok(before) = fs::read_to_string(&path) else {
        return unchanged("not reported by this kernel".to_string());
    };
    let before = before.trim().to_string();
    if before == NEVER {
        return unchanged(format!("already paused (page_reporting_order {NEVER})"));
    }
    if let Err(error) = fs::write(&path, NEVER) {
        return unchanged(format!(
            "NOT paused: page_reporting_order {before} could not be set ({error})"
        ));
    }
    let after = fs::read_to_string(&path).map(|text| text.trim().to_string());
    if after.ok().as_deref() != Some(NEVER) {
        let _ = fs::write(&path, &before);
        return unchanged(format!(
            "NOT paused: page_reporting_order {before} did not take {NEVER}"
        ));
    }
    Paused {
        restore: Some((path, before.clone())),
        state: format!("paused for the run (page_reporting_order {before} -> {NEVER})"),
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some((path, before)) = self.restore.take()
            && let Err(error) = fs::write(&path, &before)
        {
            eprintln!(
                "xtask: could not put page_reporting_order back to {before} ({}): {error}",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_reporting_for_the_run_and_puts_the_old_order_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("page_reporting_order");
        fs::write(&path, "9\n").unwrap();
        let paused = pause(&path);
        assert_eq!(fs::read_to_string(&path).unwrap(), NEVER);
        assert!(paused.state.starts_with("paused"), "{}", paused.state);
        assert!(paused.state.contains("9 -> 11"), "{}", paused.state);
        drop(paused);
        assert_eq!(fs::read_to_string(&path).unwrap(), "9");
    }

    #[test]
    fn a_kernel_without_reporting_or_with_it_paused_already_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let absent = pause(dir.path().join("page_reporting_order"));
        assert_eq!(absent.state, "not reported by this kernel");
        assert!(!dir.path().join("page_reporting_order").exists());

        let already = dir.path().join("already");
        fs::write(&already, "11\n").unwrap();
        let paused = pause(&already);
        assert!(
            paused.state.starts_with("already paused"),
            "{}",
            paused.state
        );
        drop(paused);
        assert_eq!(fs::read_to_string(&already).unwrap(), "11\n");
    }
}
