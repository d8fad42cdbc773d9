//! The spool's record format: how one usage event, one ack or one checkpoint is framed in a
//! segment file, and how a frame is read back. Pure: bytes in, bytes out; the files are
//! [`super::segment`]'s.
//!
//! A frame is a 13-byte header and a payload, little-endian:
//!
//! ```text
//! magic u32 ("WMU1") | payload length u32 | CRC-32 of kind + payload u32 | kind u8 | payload
//! ```
//!
//! Segments are preallocated, so the bytes after the last frame are zeros: a zero header is
//! the clean end of a segment. Anything else that is not a whole frame with the right checksum
//! is a **torn** tail, the trace of a write that a crash cut short. It was never acknowledged
//! (the fsync that would have made it so had not returned), so reading stops there and drops it.
//!
//! Payloads:
//! - **event**: seq u64 | started_at_ms i64 | spend flag u8 (0: none, 1: then the amount as
//!   `rust_decimal`'s 16-byte serialization, the tenant's length u16 and its UTF-8 bytes) | the
//!   [`UsageEvent`] as JSON. Recovery reads only the binary part; the JSON is for the shipper.
//! - **ack**: through_seq u64: every event with a seq up to it reached the control plane.
//! - **checkpoint**: JSON of [`Checkpoint`], the first frame of every segment.

use std::collections::HashMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use wattmesh_proto::usage::UsageEvent;

/// "WMU1" read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"WMU1");
/// magic, length, checksum, kind.
pub const HEADER: usize = 4 + 4 + 4 + 1;
/// Longest payload a reader accepts; anything claiming more is a torn header. Events are well
/// under a kilobyte; a checkpoint holds one line per tenant.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Checkpoint = 1,
    Event = 2,
    Ack = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Checkpoint),
            2 => Some(Kind::Event),
            3 => Some(Kind::Ack),
            _ => None,
        }
    }
}

/// The state a segment starts from: what a reader needs when every earlier segment is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The seq the segment's first event gets.
    pub next_seq: u64,
    /// Every event up to this seq was shipped.
    pub acked_through: u64,
    /// What this gateway spent per tenant before the segment, since the spool was made.
    pub spent: HashMap<String, Decimal>,
}

/// An event frame's binary part, all recovery reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead<'a> {
    pub seq: u64,
    pub started_at_ms: i64,
    pub spend: Option<(&'a str, Decimal)>,
    /// The event as JSON.
    pub json: &'a [u8],
}

/// One frame read from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole, intact frame of `size` bytes (header included).
    Record {
        kind: Kind,
        payload: &'a [u8],
        size: usize,
    },
    /// Zeros: nothing was written here.
    End,
    /// The buffer ends inside a frame whose header is intact: read more to see it whole.
    /// (Past a segment's last valid byte this is a torn tail instead; the caller knows which.)
    Short { size: usize },
    /// Not a frame: a write cut short by a crash, or damage.
    Torn(&'static str),
    /// An intact frame of a kind this gateway does not know: written by a newer one.
    Unknown(u8),
}

/// Appends a frame of `kind` whose payload is the concatenation of `parts`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind as u8]);
    for part in parts {
        crc.update(part);
    }
    out.reserve(HEADER + len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    // A payload over 4 GiB cannot be framed; callers never get near (events are small).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(kind as u8);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Appends an event frame; `json` is the event already encoded.
pub fn encode_event(
    out: &mut Vec<u8>,
    seq: u64,
    started_at_ms: i64,
    spend: Option<(&str, Decimal)>,
    json: &[u8],
) {
    let mut head = [0u8; 17];
    head[..8].copy_from_slice(&seq.to_le_bytes());
    head[8..16].copy_from_slice(&started_at_ms.to_le_bytes());
    match spend {
        None => encode(out, Kind::Event, &[&head, json]),
        Some((tenant, amount)) => {
            head[16] = 1;
            // Tenant names are short (the store bounds them); a longer one is cut at a
            // character boundary rather than failing a billed request.
            let mut end = tenant.len().min(usize::from(u16::MAX));
            while !tenant.is_char_boundary(end) {
                end -= 1;
            }
            let tenant = &tenant.as_bytes()[..end];
            let tenant_len = u16::try_from(tenant.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes();
            encode(
                out,
                Kind::Event,
                &[&head, &amount.serialize(), &tenant_len, tenant, json],
            );
        }
    }
}

/// Appends an ack frame.
pub fn encode_ack(out: &mut Vec<u8>, through_seq: u64) {
    encode(out, Kind::Ack, &[&through_seq.to_le_bytes()]);
}

/// Appends a checkpoint frame.
pub fn encode_checkpoint(out: &mut Vec<u8>, checkpoint: &Checkpoint) -> serde_json::Result<()> {
    let json = serde_json::to_vec(checkpoint)?;
    encode(out, Kind::Checkpoint, &[&json]);
    Ok(())
}

/// Reads the frame at the front of `buf`.
pub fn decode(buf: &[u8]) -> Frame<'_> {
    let Some(header) = buf.get(..HEADER) else {
        return if buf.iter().all(|&b| b == 0) {
            Frame::End
        } else {
            Frame::Torn("cut header")
        };
    };
    if header.iter().all(|&b| b == 0) {
        return Frame::End;
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(0) != MAGIC {
        return Frame::Torn("bad magic");
    }
    let len = word(4) as usize;
    if len > MAX_PAYLOAD {
        return Frame::Torn("impossible length");
    }
    let size = HEADER + len;
    let Some(payload) = buf.get(HEADER..size) else {
        return Frame::Short { size };
    };
    let kind_byte = header[12];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&[kind_byte]);
    crc.update(payload);
    if crc.finalize() != word(8) {
        return Frame::Torn("checksum mismatch");
    }
    match Kind::from_byte(kind_byte) {
        Some(kind) => Frame::Record {
            kind,
            payload,
            size,
        },
        None => Frame::Unknown(kind_byte),
    }
}

/// An event payload's parts. `None`: the payload is shorter than its own fields say (an intact
/// checksum over a malformed payload: a bug, not a crash).
pub fn event_head(payload: &[u8]) -> Option<EventHead<'_>> {
    let seq = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let started_at_ms = i64::from_le_bytes(payload.get(8..16)?.try_into().ok()?);
    match *payload.get(16)? {
        0 => Some(EventHead {
            seq,
            started_at_ms,
            spend: None,
            json: payload.get(17..)?,
        }),
        1 => {
            let amount = Decimal::deserialize(payload.get(17..33)?.try_into().ok()?);
            let tenant_len = usize::from(u16::from_le_bytes(payload.get(33..35)?.try_into().ok()?));
            let tenant = std::str::from_utf8(payload.get(35..35 + tenant_len)?).ok()?;
            Some(EventHead {
                seq,
                started_at_ms,
                spend: Some((tenant, amount)),
                json: payload.get(35 + tenant_len..)?,
            })
        }
        _ => None,
    }
}

/// An ack payload's seq.
pub fn ack_through(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.try_into().ok()?))
}

/// An event's JSON, as the shipper sends it.
pub fn event_json(head: &EventHead<'_>) -> serde_json::Result<UsageEvent> {
    serde_json::from_slice(head.json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_event(spend: Option<(&str, Decimal)>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_event(&mut out, 42, -7, spend, br#"{"id":"e"}"#);
        out
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = one_event(Some(("acme", Decimal::new(12345, 6))));
        encode_ack(&mut buf, 41);
        let checkpoint = Checkpoint {
            next_seq: 43,
            acked_through: 41,
            spent: [("acme".to_string(), Decimal::new(5, 1))].into(),
        };
        encode_checkpoint(&mut buf, &checkpoint).unwrap();
        buf.extend_from_slice(&[0; 64]); // the preallocated rest of a segment

        let Frame::Record {
            kind: Kind::Event,
            payload,
            size,
        } = decode(&buf)
        else {
            panic!("an event first: {:?}", decode(&buf));
        };
        let head = event_head(payload).unwrap();
        assert_eq!(
            head,
            EventHead {
                seq: 42,
                started_at_ms: -7,
                spend: Some(("acme", Decimal::new(12345, 6))),
                json: br#"{"id":"e"}"#,
            }
        );
        let rest = &buf[size..];
        let Frame::Record {
            kind: Kind::Ack,
            payload,
            size,
        } = decode(rest)
        else {
            panic!("then an ack");
        };
        assert_eq!(ack_through(payload), Some(41));
        let rest = &rest[size..];
        let Frame::Record {
            kind: Kind::Checkpoint,
            payload,
            size,
        } = decode(rest)
        else {
            panic!("then a checkpoint");
        };
        assert_eq!(
            serde_json::from_slice::<Checkpoint>(payload).unwrap(),
            checkpoint
        );
        assert_eq!(decode(&rest[size..]), Frame::End);

        let no_spend = one_event(None);
        let Frame::Record { payload, .. } = decode(&no_spend) else {
            panic!("an event");
        };
        assert_eq!(event_head(payload).unwrap().spend, None);
    }

    /// Every way a crash or damage can leave the front of a buffer.
    #[test]
    fn broken_frames() {
        let good = one_event(Some(("acme", Decimal::ONE)));
        let flip = |at: usize| {
            let mut b = good.clone();
            b[at] ^= 0x40;
            b
        };
        let mut unknown = Vec::new();
        encode(&mut unknown, Kind::Ack, &[&[0u8; 8]]);
        unknown[12] = 9;
        let crc = {
            let mut h = crc32fast::Hasher::new();
            h.update(&[9]);
            h.update(&[0u8; 8]);
            h.finalize()
        };
        unknown[8..12].copy_from_slice(&crc.to_le_bytes());
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());

        let cases: &[(&str, Vec<u8>, Frame<'_>)] = &[
            ("nothing", Vec::new(), Frame::End),
            ("zeros", vec![0; 40], Frame::End),
            ("a few zeros", vec![0; 5], Frame::End),
            ("cut header", good[..7].to_vec(), Frame::Torn("cut header")),
            ("bad magic", flip(0), Frame::Torn("bad magic")),
            (
                "length from nowhere",
                huge,
                Frame::Torn("impossible length"),
            ),
            (
                "cut payload",
                good[..good.len() - 3].to_vec(),
                Frame::Short { size: good.len() },
            ),
            (
                "flipped payload bit",
                flip(HEADER + 3),
                Frame::Torn("checksum mismatch"),
            ),
            (
                "flipped checksum",
                flip(9),
                Frame::Torn("checksum mismatch"),
            ),
            ("flipped kind", flip(12), Frame::Torn("checksum mismatch")),
            ("unknown kind", unknown, Frame::Unknown(9)),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(bytes), *want, "{name}");
        }
    }

    #[test]
    fn malformed_event_payloads_are_refused_not_panicked_on() {
        let cases: &[(&str, &[u8])] = &[
            ("empty", &[]),
            ("seq only", &[1, 0, 0, 0, 0, 0, 0, 0]),
            ("no flag", &[0; 16]),
            ("bad flag", &[[0u8; 16].as_slice(), &[7]].concat()),
            ("spend cut", &[[0u8; 16].as_slice(), &[1, 0, 0]].concat()),
            (
                "tenant longer than the payload",
                &[[0u8; 16].as_slice(), &[1], &[0; 16], &[200, 0], b"ab"].concat(),
            ),
            (
                "tenant not UTF-8",
                &[[0u8; 16].as_slice(), &[1], &[0; 16], &[2, 0], &[0xff, 0xfe]].concat(),
            ),
        ];
        for (name, payload) in cases {
            assert_eq!(event_head(payload), None, "{name}");
        }
        assert_eq!(ack_through(&[1, 2, 3]), None);
    }
}
