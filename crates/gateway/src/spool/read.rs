//! Reading unshipped events back, oldest first, for the shipper.
//!
//! The shipper reads a batch, ships it, acks it, and reads the next: each read starts where the
//! last one stopped (a [`Cursor`]), so shipping a long backlog reads every segment once rather
//! than from its start per batch. A read after a failed shipment (the batch was not acked)
//! finds the cursor past unacked events and starts over from the oldest segment with any.
//!
//! Only durable bytes are read (each segment's published end), so a read never sees a record
//! the writer is still writing.

use std::fs::File;
use std::io;

use wattmesh_proto::usage::UsageEvent;

use super::record::{self, Kind};
use super::segment;
use super::{Shared, SpoolError, lock};

/// Where a read stopped: every event before `offset` in segment `number` has a seq of at most
/// `after_seq`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cursor {
    number: u64,
    offset: u64,
    after_seq: u64,
}

/// Up to `limit` events with seqs after the ack mark, in seq order; moves the cursor.
pub(super) fn oldest(shared: &Shared, limit: usize) -> Result<Vec<(u64, UsageEvent)>, SpoolError> {
    let mut out = Vec::new();
    let cursor = scan(shared, |seq, head| {
        if out.len() >= limit {
            return Ok(false);
        }
        let event = record::event_json(head).map_err(|e| SpoolError::Corrupt {
            what: format!("event seq {seq}"),
            reason: e.to_string(),
        })?;
        out.push((seq, event));
        Ok(true)
    })?;
    if let Some(cursor) = cursor {
        *lock(&shared.cursor) = Some(cursor);
    }
    Ok(out)
}

/// The start time of the first unacked event; leaves the cursor alone.
pub(super) fn peek_started_at(shared: &Shared) -> Result<Option<i64>, SpoolError> {
    let mut found = None;
    scan(shared, |_, head| {
        found = Some(head.started_at_ms);
        Ok(false)
    })?;
    Ok(found)
}

/// Shows `take` each unacked event in seq order until it returns false; returns the cursor
/// after the last event it took (`None` if there was nothing to read).
fn scan(
    shared: &Shared,
    mut take: impl FnMut(u64, &record::EventHead<'_>) -> Result<bool, SpoolError>,
) -> Result<Option<Cursor>, SpoolError> {
    let acked = shared.acked.load(std::sync::atomic::Ordering::Acquire);
    let segments = lock(&shared.segments).clone();
    let cursor = (*lock(&shared.cursor))
        .filter(|c| c.after_seq <= acked && segments.iter().any(|s| s.number == c.number));
    let start = match cursor {
        Some(c) => c,
        None => {
            let Some(first) = segments
                .iter()
                .find(|s| s.last_seq.is_some_and(|last| last > acked))
            else {
                return Ok(None);
            };
            Cursor {
                number: first.number,
                offset: 0,
                after_seq: acked,
            }
        }
    };
    let mut at = start;
    let mut failure: Option<SpoolError> = None;
    for info in segments.iter().filter(|s| s.number >= start.number) {
        let file = match File::open(&info.path) {
            Ok(file) => file,
            // Deleted since the list was copied: all of its events were acked.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SpoolError::Read(e)),
        };
        let from = if info.number == start.number {
            start.offset
        } else {
            0
        };
        let mut stopped = false;
        let (end, _) = segment::walk(&file, from, info.end, |_, kind, payload| {
            if kind != Kind::Event {
                return true;
            }
            let Some(head) = record::event_head(payload) else {
                failure = Some(SpoolError::Corrupt {
                    what: format!("in {}", info.path.display()),
                    reason: "malformed event record".into(),
                });
                return false;
            };
            if head.seq <= acked {
                at.after_seq = at.after_seq.max(head.seq);
                return true;
            }
            match take(head.seq, &head) {
                Ok(true) => {
                    at.after_seq = head.seq;
                    true
                }
                Ok(false) => {
                    stopped = true;
                    false
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            }
        })
        .map_err(SpoolError::Read)?;
        if let Some(e) = failure {
            return Err(e);
        }
        at.number = info.number;
        at.offset = end;
        if stopped {
            break;
        }
    }
    Ok(Some(at))
}
