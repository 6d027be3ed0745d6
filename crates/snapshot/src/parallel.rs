//! Writes a save's document, serializing the entries on worker threads in ordered batches
//! while the calling thread pulls entries from the iterator and writes finished batches.
//!
//! `serde_json`'s serializer is the slowest step of a save (the disk keeps up, with the
//! background `fdatasync`), so a large save spreads it over the available cores. Batches
//! hold the caller's items (borrowed entries stay borrowed: nothing is cloned); each
//! worker turns a batch into bytes, and the calling thread writes the bytes in the
//! iterator's order, so the file is byte-for-byte what one thread would write.

use std::{
    borrow::Borrow,
    io::{self, Write},
    num::NonZero,
    path::Path,
    sync::mpsc::{Receiver, Sender, channel},
    thread::{self, ScopedJoinHandle},
};

use serde::Serialize;

use crate::{
    CacheEntry, SnapshotError, check,
    format::{EntryRef, VERSION},
};

/// Entries in the first batch. A save of fewer entries is serialized on the calling
/// thread, without starting any thread.
const FIRST_BATCH_ENTRIES: usize = 256;

/// Serialized bytes a batch aims for: large enough that handing batches between threads
/// costs nothing measurable, small enough that the batches in flight stay near a MiB.
const BATCH_TARGET_BYTES: u64 = 256 * 1024;

/// Upper bound on a batch's entries, whatever their size.
const MAX_BATCH_ENTRIES: usize = 16 * 1024;

/// Serializer threads at most: a save should not take over a large machine.
pub(crate) const MAX_WORKERS: usize = 4;

/// Batches sent to workers but not yet written, per worker: one being serialized and one
/// waiting, so no worker idles while the calling thread writes.
const IN_FLIGHT_PER_WORKER: usize = 2;

/// Writes `{"version":1,"timestamp":…,"entries":[…]}` and a newline; returns the number
/// of entries written.
///
/// Each value is checked before it is serialized, so a NaN never reaches the file as
/// `null`; the first entry (in iterator order) that cannot be written fails the save with
/// an error naming its key.
pub(crate) fn write_document<W, I, K, E, V>(
    writer: &mut W,
    timestamp: u64,
    mut entries: I,
    temp_path: &Path,
) -> Result<u64, SnapshotError>
where
    W: Write,
    I: Iterator<Item = (K, E)>,
    K: AsRef<str> + Send,
    E: Borrow<CacheEntry<V>> + Send,
    V: Serialize,
{
    let write_error = |error| SnapshotError::io("write", temp_path, error);
    write!(
        writer,
        "{{\"version\":{VERSION},\"timestamp\":{timestamp},\"entries\":["
    )
    .map_err(write_error)?;
    let mut first: Vec<(K, E)> = Vec::with_capacity(FIRST_BATCH_ENTRIES);
    first.extend(entries.by_ref().take(FIRST_BATCH_ENTRIES));
    let written = if first.len() < FIRST_BATCH_ENTRIES {
        let mut buffer = Vec::new();
        serialize_batch(&first, true, &mut buffer)?;
        writer.write_all(&buffer).map_err(write_error)?;
        first.len() as u64
    } else {
        let workers = thread::available_parallelism()
            .map_or(1, NonZero::get)
            .min(MAX_WORKERS);
        write_in_parallel(writer, first, entries, workers, temp_path)?
    };
    writer.write_all(b"]}\n").map_err(write_error)?;
    Ok(written)
}

/// Appends the batch's entries to `buffer`, comma-separated (with a leading comma unless
/// the batch starts the array).
fn serialize_batch<K, E, V>(
    batch: &[(K, E)],
    starts_array: bool,
    buffer: &mut Vec<u8>,
) -> Result<(), SnapshotError>
where
    K: AsRef<str>,
    E: Borrow<CacheEntry<V>>,
    V: Serialize,
{
    for (index, (key, entry)) in batch.iter().enumerate() {
        let key = key.as_ref();
        let entry = entry.borrow();
        // Checked before writing so a NaN never reaches the file as `null`.
        if let Err(unfaithful) = check::check(&entry.value) {
            return Err(SnapshotError::Unrepresentable {
                key: key.to_owned(),
                reason: unfaithful.0,
            });
        }
        if index > 0 || !starts_array {
            buffer.push(b',');
        }
        // Writing to a `Vec` cannot fail, so an error is the value's own (a non-string
        // map key, or a `Serialize` implementation that refuses).
        serde_json::to_writer(&mut *buffer, &EntryRef { key, entry }).map_err(|error| {
            SnapshotError::Unrepresentable {
                key: key.to_owned(),
                reason: error.to_string(),
            }
        })?;
    }
    Ok(())
}

/// A batch on its way to a worker, with a spare buffer to serialize it into.
struct Job<K, E> {
    batch: Vec<(K, E)>,
    starts_array: bool,
    buffer: Vec<u8>,
}

/// A serialized batch on its way back; the emptied batch comes back for reuse.
struct Done<K, E> {
    batch: Vec<(K, E)>,
    buffer: Vec<u8>,
    entries: usize,
    outcome: Result<(), SnapshotError>,
}

/// One worker's channels. Batches go to the workers in turn, so reading the lanes in
/// turn returns them in order.
struct Lane<K, E> {
    jobs: Sender<Job<K, E>>,
    done: Receiver<Done<K, E>>,
}

fn write_in_parallel<W, I, K, E, V>(
    writer: &mut W,
    first: Vec<(K, E)>,
    mut entries: I,
    workers: usize,
    temp_path: &Path,
) -> Result<u64, SnapshotError>
where
    W: Write,
    I: Iterator<Item = (K, E)>,
    K: AsRef<str> + Send,
    E: Borrow<CacheEntry<V>> + Send,
    V: Serialize,
{
    thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(workers);
        let mut handles: Vec<ScopedJoinHandle<'_, ()>> = Vec::with_capacity(workers);
        for _ in 0..workers {
            let (jobs, job_queue) = channel::<Job<K, E>>();
            let (finished, done) = channel::<Done<K, E>>();
            let spawned = thread::Builder::new()
                .name("snapshot-serialize".into())
                .spawn_scoped(scope, move || {
                    for Job {
                        mut batch,
                        starts_array,
                        mut buffer,
                    } in job_queue
                    {
                        buffer.clear();
                        let outcome = serialize_batch(&batch, starts_array, &mut buffer);
                        let entries = batch.len();
                        batch.clear();
                        let done = Done {
                            batch,
                            buffer,
                            entries,
                            outcome,
                        };
                        // The writer stopped (an error): nothing more to do.
                        if finished.send(done).is_err() {
                            break;
                        }
                    }
                });
            // Without a thread this lane is skipped; with none at all, the calling
            // thread serializes (below).
            if let Ok(handle) = spawned {
                handles.push(handle);
                lanes.push(Lane { jobs, done });
            }
        }
        let mut pipeline = Pipeline {
            writer,
            lanes,
            sent: 0,
            received: 0,
            written: 0,
            bytes: 0,
            spare_batches: Vec::new(),
            spare_buffers: Vec::new(),
            temp_path,
        };
        let result = pipeline.run(first, &mut entries);
        let written = pipeline.written;
        // Closing the job queues ends the workers; a worker's panic is re-raised as is.
        drop(pipeline);
        for handle in handles {
            if let Err(panic) = handle.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result.map(|()| written)
    })
}

/// The calling thread's side: hands out batches, writes finished ones in order.
struct Pipeline<'a, W, K, E> {
    writer: &'a mut W,
    lanes: Vec<Lane<K, E>>,
    /// Batches handed out, and batches written: batch `n` went to lane `n % lanes`.
    sent: usize,
    received: usize,
    written: u64,
    bytes: u64,
    spare_batches: Vec<Vec<(K, E)>>,
    spare_buffers: Vec<Vec<u8>>,
    temp_path: &'a Path,
}

impl<W, K, E> Pipeline<'_, W, K, E>
where
    W: Write,
    K: AsRef<str>,
{
    fn run<V>(
        &mut self,
        first: Vec<(K, E)>,
        entries: &mut impl Iterator<Item = (K, E)>,
    ) -> Result<(), SnapshotError>
    where
        E: Borrow<CacheEntry<V>>,
        V: Serialize,
    {
        let mut batch = first;
        loop {
            if self.lanes.is_empty() {
                let mut buffer = self.spare_buffers.pop().unwrap_or_default();
                buffer.clear();
                serialize_batch(&batch, self.sent == 0, &mut buffer)?;
                self.sent += 1;
                self.write(buffer, batch.len())?;
                batch.clear();
            } else {
                if self.sent - self.received == IN_FLIGHT_PER_WORKER * self.lanes.len() {
                    self.receive()?;
                }
                let job = Job {
                    batch,
                    starts_array: self.sent == 0,
                    buffer: self.spare_buffers.pop().unwrap_or_default(),
                };
                let lane = &self.lanes[self.sent % self.lanes.len()];
                if lane.jobs.send(job).is_err() {
                    return Err(self.worker_gone());
                }
                self.sent += 1;
                batch = self.spare_batches.pop().unwrap_or_default();
            }
            batch.extend(entries.by_ref().take(self.batch_entries()));
            if batch.is_empty() {
                break;
            }
        }
        while self.received < self.sent {
            self.receive()?;
        }
        Ok(())
    }

    /// Entries for the next batch, from the average serialized size so far.
    fn batch_entries(&self) -> usize {
        let per_entry = (self.bytes / self.written.max(1)).max(1);
        usize::try_from(BATCH_TARGET_BYTES / per_entry)
            .unwrap_or(MAX_BATCH_ENTRIES)
            .clamp(1, MAX_BATCH_ENTRIES)
            // Before anything is written, keep the first batch's size.
            .min(if self.written == 0 {
                FIRST_BATCH_ENTRIES
            } else {
                MAX_BATCH_ENTRIES
            })
    }

    /// Waits for the oldest batch in flight and writes it.
    fn receive(&mut self) -> Result<(), SnapshotError> {
        let lane = &self.lanes[self.received % self.lanes.len()];
        let Ok(done) = lane.done.recv() else {
            return Err(self.worker_gone());
        };
        self.received += 1;
        done.outcome?;
        self.spare_batches.push(done.batch);
        self.write(done.buffer, done.entries)
    }

    fn write(&mut self, buffer: Vec<u8>, entries: usize) -> Result<(), SnapshotError> {
        self.writer
            .write_all(&buffer)
            .map_err(|error| SnapshotError::io("write", self.temp_path, error))?;
        self.written += entries as u64;
        self.bytes += buffer.len() as u64;
        self.spare_buffers.push(buffer);
        Ok(())
    }

    /// A worker ended early, which only a panic in a value's `Serialize` does; the
    /// caller re-raises that panic after joining the worker.
    fn worker_gone(&self) -> SnapshotError {
        SnapshotError::io(
            "serialize the entries for",
            self.temp_path,
            io::Error::other("a serializer thread stopped"),
        )
    }
}
