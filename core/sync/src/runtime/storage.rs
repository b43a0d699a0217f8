//! The storage thread: runs every engine task's storage ops and the outside writers' in
//! batches with one flush each (group commit), and reports each op to the task it came
//! from only once the flush that covers it succeeded.

use super::*;
use crate::store::RangeUpdate;

/// See [`Host::storage_writer`].
pub(super) struct HostStorage {
    pub(super) jobs: Arc<Mutex<Option<std_mpsc::Sender<Job>>>>,
    pub(super) storage: Arc<dyn Storage>,
}

impl Storage for HostStorage {
    fn load(&self, key: &[String]) -> Result<Option<Vec<u8>>, StoreError> {
        self.storage.load(key)
    }
    fn load_range(&self, prefix: &[String]) -> Result<Vec<(StorageKey, Vec<u8>)>, StoreError> {
        self.storage.load_range(prefix)
    }
    fn put(&self, key: &[String], data: &[u8]) -> Result<(), StoreError> {
        self.write_batch(&[(key.to_vec(), Some(data.to_vec()))])
    }
    fn delete(&self, key: &[String]) -> Result<(), StoreError> {
        self.write_batch(&[(key.to_vec(), None)])
    }
    fn flush(&self) -> Result<(), StoreError> {
        // Every write here is flushed before it returns.
        Ok(())
    }
    fn load_range_except(
        &self,
        prefix: &[String],
        known: &[StorageKey],
    ) -> Result<RangeUpdate, StoreError> {
        self.storage.load_range_except(prefix, known)
    }
    fn is_shared(&self) -> bool {
        self.storage.is_shared()
    }
    fn lock_shared(&self, name: &str) -> Result<Option<SharedLock>, StoreError> {
        self.storage.lock_shared(name)
    }
    fn write_batch(&self, writes: &[(StorageKey, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let (done, answer) = std_mpsc::channel();
        let job = Job::External(ExternalWrite {
            writes: writes.to_vec(),
            done,
        });
        let sent = match &*self.jobs.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::Closed);
        }
        answer.recv().unwrap_or(Err(StoreError::Closed))
    }
}

/// Runs storage ops in batches with one flush per batch, and keeps the durability rules:
/// a write is reported done only after a flush succeeded, and after a failed flush no read
/// is answered until a flush succeeds again, so a reload never reveals a write that is not
/// durable (sled, for one, keeps a write it could not flush readable in memory).
pub(super) struct StorageWorker {
    pub(super) storage: Arc<dyn Storage>,
    /// A flush failed and none has succeeded since: the store may hold writes that are not
    /// durable, and reads would reveal them.
    pub(super) unflushed: bool,
    /// The negative control of the durability tests: report writes before flushing them.
    pub(super) ack_before_flush: bool,
}

/// One op of a batch and its result.
struct Done {
    /// The engine task it is for.
    task_of: usize,
    task: TaskId,
    write: bool,
    /// A read that ran after a write of the same batch (it may see that write).
    after_write: bool,
    result: Result<StorageOutcome, StoreError>,
}

/// An external write's result, reported after the batch's flush.
struct External {
    done: std_mpsc::Sender<Result<(), StoreError>>,
    result: Result<(), StoreError>,
}

/// The error every write of a batch whose flush failed gets: the flush's own kind, so a full
/// disk still reads as one.
fn flush_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Io(io) => StoreError::Io(std::io::Error::new(io.kind(), "flush failed")),
        StoreError::Corrupt { detail } => StoreError::Corrupt {
            detail: detail.clone(),
        },
        StoreError::Closed => StoreError::Closed,
        StoreError::TooNew { found, supported } => StoreError::TooNew {
            found: *found,
            supported: *supported,
        },
        StoreError::BadBackup { detail } => StoreError::BadBackup {
            detail: detail.clone(),
        },
    }
}

impl StorageWorker {
    /// Before a read: if an earlier flush failed, retry it; the read may run only once
    /// everything the store holds is durable.
    fn ready_to_read(&mut self) -> Result<(), StoreError> {
        if self.unflushed {
            self.storage.flush().map_err(|e| flush_error(&e))?;
            tracing::info!("flush succeeded again after a failure; reads resume");
            self.unflushed = false;
        }
        Ok(())
    }

    fn run_batch(&mut self, batch: Vec<Job>) -> (Vec<Done>, Vec<External>, usize) {
        let mut done = Vec::with_capacity(batch.len());
        let mut externals = Vec::new();
        let mut writes = 0;
        for job in batch {
            let (task_of, task, op) = match job {
                Job::Engine(task_of, task, op) => (task_of, task, op),
                // The thread runs these between batches and never puts one in a batch.
                Job::Exclusive(f) => {
                    f();
                    continue;
                }
                Job::External(ExternalWrite { writes: w, done }) => {
                    writes += w.len();
                    let result = w.iter().try_for_each(|(key, value)| match value {
                        Some(v) => self.storage.put(key, v),
                        None => self.storage.delete(key),
                    });
                    externals.push(External { done, result });
                    continue;
                }
            };
            let write = op.is_write();
            let result = if write {
                writes += 1;
                self.storage.apply(&op)
            } else {
                self.ready_to_read().and_then(|()| self.storage.apply(&op))
            };
            done.push(Done {
                task_of,
                task,
                write,
                after_write: !write && writes > 0,
                result,
            });
        }
        (done, externals, writes)
    }

    fn flush(&mut self, done: &mut [Done], externals: &mut [External], writes: usize) {
        if writes == 0 {
            return;
        }
        if let Err(e) = self.storage.flush() {
            for x in externals.iter_mut() {
                if x.result.is_ok() {
                    x.result = Err(flush_error(&e));
                }
            }
            tracing::error!(error = %e, writes, disk_full = e.is_disk_full(), "flush failed");
            self.unflushed = true;
            // Nothing written in this batch is durable, and a read after one of its writes
            // may have seen it.
            for d in done.iter_mut() {
                if d.result.is_ok() && (d.write || d.after_write) {
                    d.result = Err(flush_error(&e));
                }
            }
        } else {
            self.unflushed = false;
        }
    }
}

pub(super) fn storage_thread(
    mut worker: StorageWorker,
    ops: std_mpsc::Receiver<Job>,
    results: Vec<mpsc::UnboundedSender<(TaskId, Result<StorageOutcome, StoreError>)>>,
    batches: mpsc::UnboundedSender<(usize, usize, Duration)>,
    max_batch: usize,
) {
    // A result for a task that has ended is dropped; the thread ends once every task has.
    let report = |d: Done| {
        let _ = results[d.task_of].send((d.task, d.result));
        !results.iter().all(|r| r.is_closed())
    };
    // An exclusive job met while a batch was gathered: it runs after that batch's flush.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match ops.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        if let Job::Exclusive(f) = first {
            f();
            continue;
        }
        let started = Instant::now();
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match ops.try_recv() {
                Ok(job @ Job::Exclusive(_)) => {
                    held = Some(job);
                    break;
                }
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (mut done, mut externals, writes) = worker.run_batch(batch);
        let n = done.len() + externals.len();
        if worker.ack_before_flush {
            // The negative control: results leave before the flush, as a broken host would.
            for d in done {
                if !report(d) {
                    return;
                }
            }
            worker.flush(&mut [], &mut externals, writes);
        } else {
            worker.flush(&mut done, &mut externals, writes);
            for d in done {
                if !report(d) {
                    return;
                }
            }
        }
        for x in externals {
            let _ = x.done.send(x.result);
        }
        let _ = batches.send((n, writes, started.elapsed()));
    }
}
