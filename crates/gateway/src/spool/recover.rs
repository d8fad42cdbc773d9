//! Recovery: what a spool directory holds when a gateway starts, after a clean stop or a crash.
//!
//! Segments are read oldest first, each up to its clean end or its first torn record (logged;
//! the records before it are kept). Each segment's checkpoint restores the spend totals, the
//! ack mark and the next seq as they were when it was started, so a spool whose shipped
//! segments were deleted still knows them; the events and acks after it bring them up to date.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use rust_decimal::Decimal;

use super::record::{self, Checkpoint, Kind};
use super::segment::{self, Stop};
use super::{SegmentInfo, SpoolError};

/// What the spool holds.
#[derive(Debug)]
pub(super) struct Recovered {
    /// Segments on disk, oldest first, each with its readable end.
    pub segments: Vec<SegmentInfo>,
    /// The seq the next event gets (1 for a new spool).
    pub next_seq: u64,
    pub acked: u64,
    pub spent: HashMap<String, Decimal>,
    /// Events not acked.
    pub depth: u64,
    pub oldest_started_at_ms: Option<i64>,
}

pub(super) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let read_err = SpoolError::Read;
    let mut out = Recovered {
        segments: Vec::new(),
        next_seq: 1,
        acked: 0,
        spent: HashMap::new(),
        depth: 0,
        oldest_started_at_ms: None,
    };
    for (number, path) in segment::list(dir).map_err(read_err)? {
        let file = File::open(&path).map_err(read_err)?;
        let len = file.metadata().map_err(read_err)?.len();
        let mut info = SegmentInfo {
            number,
            path,
            first_seq: out.next_seq,
            last_seq: None,
            end: 0,
        };
        let mut bad: Option<SpoolError> = None;
        let shown = info.path.display().to_string();
        let corrupt = |offset: u64, reason: String| SpoolError::Corrupt {
            what: format!("at byte {offset} of {shown}"),
            reason,
        };
        let (end, stop) = segment::walk(&file, 0, len, |offset, kind, payload| {
            match kind {
                Kind::Checkpoint => match serde_json::from_slice::<Checkpoint>(payload) {
                    Ok(checkpoint) => {
                        // The totals as they were; what earlier segments still on disk added
                        // is already in them.
                        out.spent = checkpoint.spent;
                        out.acked = out.acked.max(checkpoint.acked_through);
                        out.next_seq = out.next_seq.max(checkpoint.next_seq);
                        info.first_seq = checkpoint.next_seq;
                    }
                    Err(e) => bad = Some(corrupt(offset, e.to_string())),
                },
                Kind::Event => match record::event_head(payload) {
                    Some(head) => {
                        out.next_seq = out.next_seq.max(head.seq + 1);
                        info.last_seq = Some(head.seq);
                        if let Some((tenant, amount)) = head.spend {
                            let total = out.spent.entry(tenant.to_owned()).or_default();
                            *total = total.saturating_add(amount);
                        }
                    }
                    None => bad = Some(corrupt(offset, "malformed event record".into())),
                },
                Kind::Ack => match record::ack_through(payload) {
                    Some(through) => out.acked = out.acked.max(through),
                    None => bad = Some(corrupt(offset, "malformed ack record".into())),
                },
            }
            bad.is_none()
        })
        .map_err(read_err)?;
        if let Some(e) = bad {
            return Err(e);
        }
        match stop {
            Stop::End | Stop::Visitor => {}
            Stop::Torn(why) => tracing::warn!(
                path = %info.path.display(),
                at = end,
                why,
                "usage spool segment ends in a torn record (a write cut short by a crash, never \
                 acknowledged); recovering the records before it"
            ),
            Stop::Unknown(kind) => {
                return Err(corrupt(
                    end,
                    format!("record kind {kind} is unknown: written by a newer gateway?"),
                ));
            }
        }
        info.end = end;
        out.segments.push(info);
    }
    let last_seq = out.next_seq - 1;
    out.depth = last_seq.saturating_sub(out.acked);
    if out.depth > 0 {
        out.oldest_started_at_ms = first_unacked_started_at(&out.segments, out.acked)?;
    }
    Ok(out)
}

/// The start time of the first event after `acked`.
fn first_unacked_started_at(
    segments: &[SegmentInfo],
    acked: u64,
) -> Result<Option<i64>, SpoolError> {
    for info in segments
        .iter()
        .filter(|s| s.last_seq.is_some_and(|l| l > acked))
    {
        let file = File::open(&info.path).map_err(SpoolError::Read)?;
        let mut found = None;
        segment::walk(&file, 0, info.end, |_, kind, payload| {
            if kind == Kind::Event
                && let Some(head) = record::event_head(payload)
                && head.seq > acked
            {
                found = Some(head.started_at_ms);
                return false;
            }
            true
        })
        .map_err(SpoolError::Read)?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}
