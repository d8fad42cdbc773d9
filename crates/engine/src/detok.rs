//! Incremental detokenization with stop strings: turns a stream of token bytes into text
//! pieces that are safe to send.
//!
//! Two things must never reach a client mid-stream: half a UTF-8 character (a byte-level BPE
//! token can end inside one, e.g. an emoji spread over two tokens) and the start of a stop
//! string that may yet complete (the stop string itself is never returned). So bytes wait
//! until they form whole characters, and text waits while its tail could begin a stop string.
//! A stop string that starts at position p of the output is, at every step before it
//! completes, a suffix of the text not yet emitted; that invariant is why searching only the
//! held text suffices.

/// What [`TextStream::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep generating; send this text (possibly empty).
    Continue(String),
    /// A stop string was found: send this text (everything before it) and stop.
    Stop(String),
}

/// The detokenizer state of one generation.
#[derive(Debug, Default)]
pub struct TextStream {
    stops: Vec<String>,
    /// Bytes of an incomplete UTF-8 character at the end of the output.
    partial: Vec<u8>,
    /// Whole characters not yet emitted because they may start a stop string.
    held: String,
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|s| !s.is_empty()).collect();
        Self {
            stops,
            ..Self::default()
        }
    }

    /// Adds the bytes of one generated token.
    pub fn push(&mut self, bytes: &[u8]) -> Step {
        self.partial.extend_from_slice(bytes);
        self.drain_complete_chars();
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_owned();
            self.held.clear();
            self.partial.clear();
            return Step::Stop(text);
        }
        let keep = self.stop_prefix_len();
        let emit_to = self.held.len() - keep;
        let text = self.held[..emit_to].to_owned();
        self.held.drain(..emit_to);
        Step::Continue(text)
    }

    /// The generation ended without a stop string: everything left, lossily for a trailing
    /// incomplete character.
    pub fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&String::from_utf8_lossy(&self.partial));
        self.partial.clear();
        text
    }

    /// Moves the complete characters of `partial` to `held`; invalid bytes become U+FFFD.
    fn drain_complete_chars(&mut self) {
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.partial.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `from_utf8` just validated this prefix.
                    self.held
                        .push_str(&String::from_utf8_lossy(&self.partial[..valid]));
                    match e.error_len() {
                        // Incomplete character at the end: wait for more bytes.
                        None => {
                            self.partial.drain(..valid);
                            return;
                        }
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.partial.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// The length of the longest suffix of `held` that is a proper prefix of a stop string.
    fn stop_prefix_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            // Only char boundaries of `held` can start a suffix.
            for (start, _) in self.held.char_indices() {
                let tail = &self.held[start..];
                if tail.len() <= best {
                    break;
                }
                if stop.starts_with(tail) {
                    best = tail.len();
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds pieces, returns (the concatenated emitted text per step, final outcome).
    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, Option<String>) {
        let mut s = TextStream::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for p in pieces {
            match s.push(p) {
                Step::Continue(t) => out.push(t),
                Step::Stop(t) => {
                    out.push(t);
                    return (out, None);
                }
            }
        }
        (out, Some(s.finish()))
    }

    #[test]
    fn cases() {
        let rocket = "🚀".as_bytes();
        // (stops, pieces, emitted per step, finish text or None when a stop string hit)
        type Case<'a> = (&'a [&'a str], Vec<&'a [u8]>, Vec<&'a str>, Option<&'a str>);
        let table: Vec<Case> = vec![
            (&[], vec![b"Hel", b"lo"], vec!["Hel", "lo"], Some("")),
            // An emoji split over two tokens is held until complete.
            (
                &[],
                vec![&rocket[..2], &rocket[2..]],
                vec!["", "🚀"],
                Some(""),
            ),
            // A trailing incomplete char at the end is replaced, not dropped silently.
            (
                &[],
                vec![b"a", &rocket[..2]],
                vec!["a", ""],
                Some("\u{FFFD}"),
            ),
            // Invalid bytes become U+FFFD in place.
            (&[], vec![b"a\xffb"], vec!["a\u{FFFD}b"], Some("")),
            // Stop string inside one token: text before it, then stop.
            (&["\n\n"], vec![b"one\n\ntwo"], vec!["one"], None),
            // Stop string across tokens: the possible prefix is held back.
            (
                &["END"],
                vec![b"ab E", b"N", b"D more"],
                vec!["ab ", "", ""],
                None,
            ),
            // A false start is released once it cannot be a stop any more.
            (&["END"], vec![b"ab E", b"x"], vec!["ab ", "Ex"], Some("")),
            // Length finish flushes a held prefix.
            (&["END"], vec![b"ab EN"], vec!["ab "], Some("EN")),
            // The earliest of several stop strings wins.
            (&["c", "b"], vec![b"abc"], vec!["a"], None),
        ];
        for (stops, pieces, emitted, finish) in table {
            let (out, fin) = run(stops, &pieces);
            assert_eq!(out, emitted, "stops {stops:?} pieces {pieces:?}");
            assert_eq!(fin.as_deref(), finish, "stops {stops:?} pieces {pieces:?}");
        }
    }
}
