//! The spool's writer thread: the one owner of the segment being written. It takes the pending
//! buffer as a group, writes it, syncs it, publishes the new durable end, and keeps a spare
//! segment ready so that rolling over does not wait for a file to be made.
//!
//! A thread, not a Tokio task: `fdatasync` blocks, and a task would either block a runtime
//! worker or hop through `spawn_blocking` for every group.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use rust_decimal::Decimal;
use tokio::sync::Notify;

use super::record::{self, Checkpoint};
use super::{
    FAILED, LOCK_FILE, NO_EVENT, Pending, RUNNING, STOPPED, SegmentInfo, Shared, SpoolError,
    SpoolOptions, lock, recover, segment,
};

/// The writer, ready to run on its thread.
pub(super) struct Writer {
    shared: Arc<Shared>,
    current: Current,
    spare: Option<Spare>,
    segment_bytes: u64,
    /// The buffer handed back to the appenders at each swap, so neither side reallocates.
    recycled: Vec<u8>,
    /// Held while the spool is open: one gateway per spool.
    _lock: File,
}

/// The segment being written.
struct Current {
    file: File,
    number: u64,
    capacity: u64,
    /// Where the next record goes.
    offset: u64,
}

/// A segment made ahead of time, empty.
struct Spare {
    file: File,
    path: PathBuf,
    number: u64,
    capacity: u64,
}

/// One group: what the writer took from [`Pending`].
struct Group {
    buf: Vec<u8>,
    end: u64,
    last_seq: u64,
    events: u64,
    first_started_at_ms: Option<i64>,
    spends: Vec<(String, Decimal)>,
    ack_through: u64,
    closing: bool,
}

pub(super) struct Opened {
    pub shared: Arc<Shared>,
    pub writer: Writer,
}

/// Opens the spool directory: locks it, recovers it and starts a fresh segment to write in.
/// Blocking; run off the runtime.
pub(super) fn open(dir: &Path, options: SpoolOptions) -> Result<Opened, SpoolError> {
    let open_err = |source| SpoolError::Open {
        path: dir.to_path_buf(),
        source,
    };
    if dir.is_file() {
        return Err(open_err(io::Error::other(
            "it is a file, not a directory (an older gateway's SQLite spool? Ship it with that \
             gateway until its wattmesh_gateway_spool_depth is 0, then remove it)",
        )));
    }
    match std::fs::create_dir(dir) {
        Ok(()) => segment::sync_dir(dir.parent().unwrap_or(Path::new("."))).map_err(open_err)?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(open_err(e)),
    }
    let lock_file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))
        .map_err(open_err)?;
    rustix::fs::flock(
        &lock_file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            SpoolError::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            open_err(e.into())
        }
    })?;

    let recovered = recover::recover(dir)?;
    if recovered.depth > 0 {
        tracing::info!(path = %dir.display(), events = recovered.depth, "usage spool holds unshipped events");
    }

    // Writing always goes on in a new segment: a torn tail in the last one stays behind
    // the point where its reader stops, and is never followed by new records.
    let number = recovered.segments.last().map_or(1, |s| s.number + 1);
    let checkpoint = Checkpoint {
        next_seq: recovered.next_seq,
        acked_through: recovered.acked,
        spent: recovered.spent.clone(),
    };
    let mut first = Vec::new();
    record::encode_checkpoint(&mut first, &checkpoint)
        .map_err(|e| open_err(io::Error::other(e)))?;
    let capacity = options.segment_bytes.max(first.len() as u64);
    let (file, path) = segment::create(dir, number, capacity).map_err(open_err)?;
    file.write_all_at(&first, 0).map_err(open_err)?;
    file.sync_data().map_err(open_err)?;

    let mut segments = recovered.segments;
    segments.push(SegmentInfo {
        number,
        path,
        first_seq: recovered.next_seq,
        last_seq: None,
        end: first.len() as u64,
    });
    let last_seq = recovered.next_seq - 1;
    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        pending: Mutex::new(Pending {
            next_seq: recovered.next_seq,
            ..Pending::default()
        }),
        wake: Condvar::new(),
        durable_end: AtomicU64::new(0),
        durable_seq: AtomicU64::new(last_seq),
        acked: AtomicU64::new(recovered.acked.min(last_seq)),
        state: AtomicU8::new(RUNNING),
        durable: Notify::new(),
        appended: Notify::new(),
        commits: AtomicU64::new(0),
        oldest_started_at_ms: AtomicI64::new(recovered.oldest_started_at_ms.unwrap_or(NO_EVENT)),
        segments: Mutex::new(segments),
        cursor: Mutex::new(None),
        spent: Mutex::new(recovered.spent),
    });
    let mut writer = Writer {
        shared: shared.clone(),
        current: Current {
            file,
            number,
            capacity,
            offset: first.len() as u64,
        },
        spare: None,
        segment_bytes: options.segment_bytes,
        recycled: Vec::new(),
        _lock: lock_file,
    };
    writer.delete_shipped();
    Ok(Opened { shared, writer })
}

impl Writer {
    /// Runs until closed or failed.
    pub(super) fn run(mut self) {
        loop {
            let group = self.take();
            if !group.buf.is_empty() {
                if let Err(e) = self.write(&group) {
                    self.fail(e, &group);
                    return;
                }
                self.publish(&group);
            }
            self.recycled = group.buf;
            self.recycled.clear();
            if group.closing {
                self.shared.state.store(STOPPED, Ordering::Release);
                self.shared.durable.notify_waiters();
                return;
            }
            if group.ack_through > 0 {
                self.delete_shipped();
            }
            if self.spare.is_none() {
                self.make_spare();
            }
        }
    }

    /// Waits for records (or a close) and takes them all.
    fn take(&mut self) -> Group {
        let shared = self.shared.clone();
        let mut pending = lock(&shared.pending);
        while pending.buf.is_empty() && !pending.closing {
            pending.writer_idle = true;
            pending = shared
                .wake
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        pending.writer_idle = false;
        let buf = std::mem::replace(&mut pending.buf, std::mem::take(&mut self.recycled));
        Group {
            buf,
            end: pending.end,
            last_seq: pending.next_seq - 1,
            events: std::mem::take(&mut pending.events),
            first_started_at_ms: pending.first_started_at_ms.take(),
            spends: std::mem::take(&mut pending.spends),
            ack_through: std::mem::take(&mut pending.ack_through),
            closing: pending.closing,
        }
    }

    /// Writes the group and syncs it, in the current segment or, when it does not fit, in the
    /// next one after a checkpoint.
    fn write(&mut self, group: &Group) -> io::Result<()> {
        let len = group.buf.len() as u64;
        if self.current.offset + len <= self.current.capacity {
            self.current
                .file
                .write_all_at(&group.buf, self.current.offset)?;
            self.current.file.sync_data()?;
            self.current.offset += len;
            return Ok(());
        }
        self.roll(group)
    }

    /// Starts the next segment with a checkpoint and the group, in one write and one sync.
    fn roll(&mut self, group: &Group) -> io::Result<()> {
        let shared = &self.shared;
        let checkpoint = Checkpoint {
            next_seq: shared.durable_seq.load(Ordering::Acquire) + 1,
            acked_through: shared.acked.load(Ordering::Acquire),
            spent: lock(&shared.spent).clone(),
        };
        let mut bytes = Vec::with_capacity(group.buf.len() + 4096);
        record::encode_checkpoint(&mut bytes, &checkpoint).map_err(io::Error::other)?;
        let checkpoint_len = bytes.len() as u64;
        bytes.extend_from_slice(&group.buf);
        let needed = bytes.len() as u64;

        let number = self.current.number + 1;
        let spare = match self.spare.take() {
            Some(spare) if spare.capacity >= needed => spare,
            too_small => {
                if let Some(spare) = too_small {
                    std::fs::remove_file(&spare.path)?;
                }
                let capacity = self.segment_bytes.max(needed);
                let (file, path) = segment::create(&shared.dir, number, capacity)?;
                Spare {
                    file,
                    path,
                    number,
                    capacity,
                }
            }
        };
        spare.file.write_all_at(&bytes, 0)?;
        spare.file.sync_data()?;
        lock(&shared.segments).push(SegmentInfo {
            number: spare.number,
            path: spare.path,
            first_seq: checkpoint.next_seq,
            last_seq: None,
            end: checkpoint_len,
        });
        self.current = Current {
            file: spare.file,
            number: spare.number,
            capacity: spare.capacity,
            offset: needed,
        };
        Ok(())
    }

    /// Makes a durable group visible: to readers, to the waiters, to the metrics.
    fn publish(&mut self, group: &Group) {
        let shared = &self.shared;
        {
            let mut segments = lock(&shared.segments);
            if let Some(current) = segments.last_mut() {
                current.end = self.current.offset;
                if group.events > 0 {
                    current.last_seq = Some(group.last_seq);
                }
            }
        }
        if !group.spends.is_empty() {
            let mut spent = lock(&shared.spent);
            for (tenant, amount) in &group.spends {
                let total = spent.entry(tenant.clone()).or_default();
                // Saturating: a total near 8e28 is nonsense, but the event must still be kept.
                *total = total.saturating_add(*amount);
            }
        }
        let was_empty =
            shared.acked.load(Ordering::Acquire) >= shared.durable_seq.load(Ordering::Acquire);
        if group.events > 0 {
            if was_empty && let Some(ms) = group.first_started_at_ms {
                shared.oldest_started_at_ms.store(ms, Ordering::Relaxed);
            }
            shared.durable_seq.store(group.last_seq, Ordering::Release);
        }
        if group.ack_through > 0 {
            shared.acked.fetch_max(group.ack_through, Ordering::AcqRel);
        }
        shared.durable_end.store(group.end, Ordering::Release);
        shared.commits.fetch_add(1, Ordering::Relaxed);
        shared.durable.notify_waiters();
        if group.events > 0 {
            shared.appended.notify_one();
        }
    }

    /// A write or sync failed: nothing more is written (see the module docs).
    fn fail(&mut self, e: io::Error, group: &Group) {
        tracing::error!(
            error = %e,
            events = group.events,
            dir = %self.shared.dir.display(),
            "usage spool write failed; the gateway refuses billable answers until it is restarted"
        );
        let e = Arc::new(e);
        lock(&self.shared.pending).failure = Some(e);
        self.shared.state.store(FAILED, Ordering::Release);
        self.shared.durable.notify_waiters();
    }

    /// Deletes every segment but the current one whose events are all acked.
    fn delete_shipped(&mut self) {
        let acked = self.shared.acked.load(Ordering::Acquire);
        let shipped: Vec<SegmentInfo> = {
            let mut segments = lock(&self.shared.segments);
            let keep_from = segments
                .iter()
                .position(|s| {
                    s.number == self.current.number || s.last_seq.is_some_and(|l| l > acked)
                })
                .unwrap_or(segments.len());
            segments.drain(..keep_from).collect()
        };
        for segment in &shipped {
            if let Err(e) = std::fs::remove_file(&segment.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                // Harmless but for the space: a later open sees its events acked.
                tracing::warn!(path = %segment.path.display(), error = %e, "cannot delete a shipped usage spool segment");
            }
        }
    }

    /// Makes the next segment ahead of time. A failure is only logged: the roll tries again.
    fn make_spare(&mut self) {
        let number = self.current.number + 1;
        match segment::create(&self.shared.dir, number, self.segment_bytes) {
            Ok((file, path)) => {
                self.spare = Some(Spare {
                    file,
                    path,
                    number,
                    capacity: self.segment_bytes,
                });
            }
            Err(e) => tracing::warn!(
                dir = %self.shared.dir.display(),
                error = %e,
                "cannot make the next usage spool segment ahead of time; retrying when it is needed"
            ),
        }
    }
}
