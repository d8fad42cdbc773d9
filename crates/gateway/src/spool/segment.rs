//! The spool's segment files: naming, making one (preallocated, its existence made durable), and
//! reading frames back in order.
//!
//! Why preallocate: an `fdatasync` after an append that grows a file must also flush the
//! file's new size and blocks (a journal commit on ext4); within space already allocated it
//! flushes the data alone. On this project's VM that is 0.24 ms at p99 against 3 ms for
//! SQLite's growing WAL. The space is reserved with `fallocate` where the filesystem has it and
//! written with zeros where it does not; either way unwritten bytes read as zeros, which is how
//! a reader finds a segment's end.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::record::{self, Frame};

/// Bytes reserved for a new segment unless its first write needs more.
pub const DEFAULT_BYTES: u64 = 16 << 20;
/// Bytes read per `pread` while scanning.
const WINDOW: usize = 256 << 10;

const PREFIX: &str = "segment-";
const SUFFIX: &str = ".log";

/// The file name of segment `number`: zero-padded so names sort as numbers do.
pub fn file_name(number: u64) -> String {
    format!("{PREFIX}{number:016}{SUFFIX}")
}

/// The number in a segment's file name; `None` for any other file.
pub fn number_of(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, by number.
pub fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(number) = entry.file_name().to_str().and_then(number_of) {
            found.push((number, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(number, _)| *number);
    Ok(found)
}

/// Makes segment `number` in `dir` with `bytes` reserved, and makes its existence durable
/// (the file's allocation and the directory entry), so that later appends need only
/// `fdatasync`.
pub fn create(dir: &Path, number: u64, bytes: u64) -> io::Result<(File, PathBuf)> {
    let path = dir.join(file_name(number));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    reserve(&file, bytes)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((file, path))
}

fn reserve(file: &File, bytes: u64) -> io::Result<()> {
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, bytes) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < bytes {
                let n = (bytes - at).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes changes to `dir`'s entries (a new or removed file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Where a walk over frames stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The visitor asked to stop; the offset is the frame it did not take.
    Visitor,
    /// The segment's clean end (zeros, or the limit given).
    End,
    /// A torn frame: the last write before a crash. Nothing from here on counts.
    Torn(&'static str),
    /// An intact frame of a kind this gateway does not know.
    Unknown(u8),
}

/// Calls `visit(offset, kind, payload)` for each frame of `file` from `from` up to `limit`
/// (exclusive; the file's length for a segment being recovered, the durable end for one being
/// written). `visit` returns false to stop before the frame it was shown. Returns where the
/// walk ended and why.
pub fn walk(
    file: &File,
    from: u64,
    limit: u64,
    mut visit: impl FnMut(u64, record::Kind, &[u8]) -> bool,
) -> io::Result<(u64, Stop)> {
    let mut buf = vec![0u8; WINDOW];
    let mut at = from;
    loop {
        if at >= limit {
            return Ok((at, Stop::End));
        }
        let want = usize::try_from(limit - at)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = read_at_most(file, &mut buf[..want], at)?;
        let window = &buf[..got];
        let mut used = 0;
        // Whether the bytes after `window` may hold more of the segment.
        let more = got == want && at + (got as u64) < limit;
        loop {
            let rest = &window[used..];
            let here = at + used as u64;
            match record::decode(rest) {
                Frame::Record {
                    kind,
                    payload,
                    size,
                } => {
                    if !visit(here, kind, payload) {
                        return Ok((here, Stop::Visitor));
                    }
                    used += size;
                }
                // Fewer bytes than a header left in a full window: read on from here.
                Frame::End | Frame::Torn("cut header") if rest.len() < record::HEADER && more => {
                    break;
                }
                Frame::End => return Ok((here, Stop::End)),
                Frame::Short { size } => {
                    if !more || here + size as u64 > limit {
                        return Ok((here, Stop::Torn("cut record")));
                    }
                    if size > buf.len() {
                        buf.resize(size, 0);
                    }
                    break;
                }
                Frame::Torn(why) => return Ok((here, Stop::Torn(why))),
                Frame::Unknown(kind) => return Ok((here, Stop::Unknown(kind))),
            }
        }
        at += used as u64;
    }
}

/// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{Kind, encode_ack};

    #[test]
    fn names_sort_as_numbers() {
        assert_eq!(file_name(7), "segment-0000000000000007.log");
        assert_eq!(number_of(&file_name(123_456)), Some(123_456));
        for other in [
            "LOCK",
            "segment-7.log",
            "segment-000000000000000x.log",
            "x.log",
            "",
        ] {
            assert_eq!(number_of(other), None, "{other}");
        }
    }

    /// Frames that straddle the read window, a frame larger than the window, and every end.
    #[test]
    fn walks_frames_across_windows_and_stops_where_it_must() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = create(dir.path(), 1, 4 * WINDOW as u64).unwrap();
        let mut bytes = Vec::new();
        let mut count = 0u64;
        while bytes.len() < WINDOW + 100 {
            encode_ack(&mut bytes, count);
            count += 1;
        }
        let big = vec![7u8; WINDOW + 10];
        record::encode(&mut bytes, Kind::Checkpoint, &[&big]);
        encode_ack(&mut bytes, count);
        count += 1;
        file.write_all_at(&bytes, 0).unwrap();
        let end = bytes.len() as u64;

        let mut seen = Vec::new();
        let walked = walk(&file, 0, 4 * WINDOW as u64, |_, kind, payload| {
            if kind == Kind::Ack {
                seen.push(record::ack_through(payload).unwrap());
            } else {
                assert_eq!(payload.len(), big.len());
            }
            true
        })
        .unwrap();
        assert_eq!(walked, (end, Stop::End));
        assert_eq!(seen, (0..count).collect::<Vec<_>>());

        // Up to a limit (the durable end of a segment being written).
        let mut n = 0;
        let walked = walk(&file, 0, 21 * 3, |_, _, _| {
            n += 1;
            true
        })
        .unwrap();
        assert_eq!((walked, n), ((21 * 3, Stop::End), 3));

        // A visitor that stops, and a walk resumed from where it stopped.
        let mut n = 0;
        let (at, stop) = walk(&file, 0, end, |_, _, _| {
            n += 1;
            n <= 5
        })
        .unwrap();
        assert_eq!(stop, Stop::Visitor);
        let mut first = None;
        walk(&file, at, end, |_, _, payload| {
            first = record::ack_through(payload);
            false
        })
        .unwrap();
        assert_eq!(first, Some(5));

        // A torn tail: the last frame's checksum no longer matches.
        file.write_all_at(&[0xff], end - 1).unwrap();
        let (at, stop) = walk(&file, 0, 4 * WINDOW as u64, |_, _, _| true).unwrap();
        assert_eq!(stop, Stop::Torn("checksum mismatch"));
        assert_eq!(
            at,
            end - 21,
            "stops at the torn frame, keeping the ones before it"
        );

        // A file cut inside a frame.
        file.set_len(end - 5).unwrap();
        let (_, stop) = walk(&file, 0, u64::MAX, |_, _, _| true).unwrap();
        assert_eq!(stop, Stop::Torn("cut record"));
    }
}
