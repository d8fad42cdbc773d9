//! Metering: every forwarded request ends as exactly one usage event in the spool, made
//! durable before the answer's last byte leaves the gateway.
//!
//! - [`BodyWatch`] reads the relayed body as it passes: the usage object at the end of a JSON
//!   answer, or, in an SSE stream, the usage chunk the gateway asked the replica for (and
//!   strips again, with the `"usage":null` of every other chunk, when the client did not ask).
//! - [`Meter`] carries what the event needs from admission on (ids, tenant, key, model,
//!   replica, timings, the rate-limit and credit holds) and [`Meter::finish`] settles the holds
//!   with the real usage and writes the event.
//!
//! Cut streams (the client went away, the replica failed) carry no usage chunk: they are billed
//! the content chunks the client was sent (one token each, as engines stream) and the prompt
//! tokens the replica told in its answer's `x-wattmesh-prompt-tokens` header (the prompt was
//! read whatever happened next); a replica that does not tell (not ours) is billed no prompt —
//! what the gateway can prove was served.

use std::time::Instant;

use axum::body::Bytes;
use rust_decimal::Decimal;
use wattmesh_domain::pricing::TokenPrice;
use wattmesh_proto::openai::Usage;
use wattmesh_proto::usage::{Outcome, UsageEvent};

use crate::credit::Reservation;
use crate::limits::Admitted;
use crate::spool::Spool;

/// Bytes of a JSON answer's end kept to find the usage in: the usage object comes last.
const TAIL_BYTES: usize = 8 * 1024;
/// Longest SSE event the watcher holds whole; a longer one is passed through unparsed.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Reads (and for streams, edits) a relayed body, and holds back its end until the usage
/// event is durable: a JSON answer's last piece, a stream's `data: [DONE]` (content events pass
/// at once, so streaming stays live).
#[derive(Debug)]
pub enum BodyWatch {
    Json {
        tail: Vec<u8>,
        held: Option<Bytes>,
    },
    Sse {
        /// Remove the usage chunk and `"usage":null`s (the client did not ask for usage).
        strip: bool,
        /// Bytes of an event not complete yet.
        pending: Vec<u8>,
        usage: Option<Usage>,
        /// Chunks with content (`"choices":[{`) passed to the client.
        content_chunks: u64,
        /// The end of the stream (`data: [DONE]` and anything after), held for [`Self::finish`].
        end: Vec<u8>,
    },
}

impl BodyWatch {
    pub fn json() -> Self {
        BodyWatch::Json {
            tail: Vec::new(),
            held: None,
        }
    }

    pub fn sse(strip: bool) -> Self {
        BodyWatch::Sse {
            strip,
            pending: Vec::new(),
            usage: None,
            content_chunks: 0,
            end: Vec::new(),
        }
    }

    /// Takes the next bytes from the replica; returns what to send the client now.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        match self {
            BodyWatch::Json { tail, held } => {
                keep_tail(tail, &chunk);
                held.replace(chunk).unwrap_or_default()
            }
            BodyWatch::Sse {
                strip,
                pending,
                usage,
                content_chunks,
                end,
            } => {
                if !end.is_empty() {
                    end.extend_from_slice(&chunk);
                    return Bytes::new();
                }
                pending.extend_from_slice(&chunk);
                let mut out = Vec::with_capacity(chunk.len());
                while let Some(at) = find(pending, b"\n\n") {
                    let event: Vec<u8> = pending.drain(..at + 2).collect();
                    if event.starts_with(b"data: [DONE]") {
                        end.extend_from_slice(&event);
                        end.append(pending);
                        break;
                    }
                    let keep = watch_event(&event, usage, content_chunks);
                    match (*strip, keep) {
                        (false, _) => out.extend_from_slice(&event),
                        (true, true) => out.extend_from_slice(&strip_usage_null(&event)),
                        (true, false) => {}
                    }
                }
                if pending.len() > MAX_EVENT_BYTES {
                    // Not SSE as we know it: pass it on rather than hold it.
                    out.append(pending);
                }
                Bytes::from(out)
            }
        }
    }

    /// The body ended: what is still held for the client.
    pub fn finish(&mut self) -> Bytes {
        match self {
            BodyWatch::Json { held, .. } => held.take().unwrap_or_default(),
            BodyWatch::Sse { pending, end, .. } => {
                let mut rest = std::mem::take(pending);
                rest.append(end);
                Bytes::from(rest)
            }
        }
    }

    /// The exact usage, when the body carried it.
    pub fn usage(&self) -> Option<Usage> {
        match self {
            BodyWatch::Json { tail, .. } => last_usage(tail),
            BodyWatch::Sse { usage, .. } => *usage,
        }
    }

    /// Content chunks streamed so far (0 for JSON answers).
    pub fn content_chunks(&self) -> u64 {
        match self {
            BodyWatch::Json { .. } => 0,
            BodyWatch::Sse { content_chunks, .. } => *content_chunks,
        }
    }
}

/// Looks at one whole SSE event: records a usage chunk's usage and counts content chunks.
/// Returns whether the event goes to a client that did not ask for usage.
fn watch_event(event: &[u8], usage: &mut Option<Usage>, content_chunks: &mut u64) -> bool {
    if find(event, b"\"choices\":[{").is_some() {
        *content_chunks += 1;
        return true;
    }
    if find(event, b"\"usage\":{").is_none() && find(event, b"\"usage\": {").is_none() {
        return true;
    }
    let Some(data) = event.strip_prefix(b"data:").map(|d| d.trim_ascii()) else {
        return true;
    };
    #[derive(serde::Deserialize)]
    struct UsageChunk {
        #[serde(default)]
        choices: Vec<serde_json::Value>,
        usage: Option<Usage>,
    }
    match serde_json::from_slice::<UsageChunk>(data) {
        Ok(UsageChunk {
            choices,
            usage: Some(u),
        }) if choices.is_empty() => {
            *usage = Some(u);
            false
        }
        _ => true,
    }
}

/// An event without the `"usage":null` that asking for usage added to every chunk.
fn strip_usage_null(event: &[u8]) -> Vec<u8> {
    for pattern in [&b",\"usage\":null"[..], &b", \"usage\": null"[..]] {
        if let Some(at) = find(event, pattern) {
            let mut out = Vec::with_capacity(event.len());
            out.extend_from_slice(&event[..at]);
            out.extend_from_slice(&event[at + pattern.len()..]);
            return out;
        }
    }
    event.to_vec()
}

fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    if chunk.len() >= TAIL_BYTES {
        tail.clear();
        tail.extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
    } else {
        let overflow = (tail.len() + chunk.len()).saturating_sub(TAIL_BYTES);
        tail.drain(..overflow);
        tail.extend_from_slice(chunk);
    }
}

/// Everything a request's usage event needs, gathered from admission on.
#[derive(Debug)]
pub struct Meter {
    pub event: UsageEvent,
    pub started: Instant,
    pub first_byte: Option<Instant>,
    /// A stream's prompt tokens as its replica told them before the first chunk; billed when
    /// the stream is cut before its usage chunk.
    pub streamed_prompt_tokens: Option<u64>,
    pub price: TokenPrice,
    pub spool: Spool,
    pub metrics: std::sync::Arc<crate::metrics::GatewayMetrics>,
    pub limits: Option<Admitted>,
    pub credit: Option<Reservation>,
}

impl Meter {
    /// Settles the holds with the real usage, counts the request in the metrics, and returns
    /// the finished event with its cost and the spool it goes to.
    fn close(
        mut self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        content_chunks: u64,
    ) -> (UsageEvent, Option<(String, Decimal)>, Spool) {
        let (prompt, completion) = match usage {
            Some(u) => (u64::from(u.prompt_tokens), u64::from(u.completion_tokens)),
            None => (self.streamed_prompt_tokens.unwrap_or(0), content_chunks),
        };
        let now = Instant::now();
        let mut event = self.event;
        event.prompt_tokens = prompt;
        event.completion_tokens = completion;
        event.ttft_ms = self
            .first_byte
            .map(|t| t.duration_since(self.started).as_millis() as u64);
        event.duration_ms = now.duration_since(self.started).as_millis() as u64;
        event.status = status;
        event.outcome = outcome;
        let cost = self.price.cost(prompt, completion);
        // The answer's body outlives the request's span: the id is named here.
        tracing::debug!(
            request_id = %event.request_id,
            tenant = %event.tenant,
            key = %event.key_id,
            model = %event.model,
            replica = %event.replica,
            status = event.status,
            outcome = event.outcome.as_str(),
            prompt_tokens = prompt,
            completion_tokens = completion,
            %cost,
            "served"
        );
        let now_ms = crate::now_ms();
        if let Some(limits) = self.limits.take() {
            limits.finish(prompt + completion, now_ms);
        }
        let spend = self.credit.take().map(|r| {
            let tenant = r.tenant().to_owned();
            r.settle(cost);
            (tenant, cost)
        });
        self.metrics.finished(&event);
        (event, spend, self.spool)
    }

    /// Writes the event and waits until it is durable.
    pub async fn finish(
        self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        content_chunks: u64,
    ) -> Result<(), crate::spool::SpoolError> {
        let (event, spend, spool) = self.close(outcome, status, usage, content_chunks);
        spool.append(event, spend).await.map(|_| ())
    }

    /// Writes the event without waiting (the client is gone; nobody waits for the answer).
    pub fn finish_detached(
        self,
        outcome: Outcome,
        status: u16,
        usage: Option<Usage>,
        content_chunks: u64,
    ) {
        let (event, spend, spool) = self.close(outcome, status, usage, content_chunks);
        spool.append_detached(event, spend);
    }
}

/// The last `"usage": {...}` object in `tail` that parses as [`Usage`].
pub fn last_usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = find_last(&tail[..end], KEY) {
        let rest = &tail[at + KEY.len()..];
        let rest = rest.trim_ascii_start();
        if let Some(rest) = rest.strip_prefix(b":") {
            let mut values =
                serde_json::Deserializer::from_slice(rest.trim_ascii_start()).into_iter();
            if let Some(Ok(usage)) = values.next() {
                return Some(usage);
            }
        }
        end = at;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_usage_at_the_end_of_an_answer() {
        let cases: &[(&str, &str, Option<Usage>)] = &[
            (
                "plain JSON",
                r#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
                Some(Usage::new(5, 2)),
            ),
            (
                "embeddings have no completion tokens",
                r#"{"data":[],"usage": {"prompt_tokens":4,"total_tokens":4}}"#,
                Some(Usage::new(4, 0)),
            ),
            ("only nulls", "data: {\"usage\":null}\n\n", None),
            (
                "cut in the middle",
                r#"{"usage":{"prompt_tokens":5,"comp"#,
                None,
            ),
            ("empty", "", None),
        ];
        for (name, body, want) in cases {
            assert_eq!(last_usage(body.as_bytes()), *want, "{name}");
        }
    }

    const STREAM: &str = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    /// Feeds `body` in chunks of `size` bytes; returns what the client got.
    fn relay(watch: &mut BodyWatch, body: &str, size: usize) -> String {
        let mut out = Vec::new();
        for chunk in body.as_bytes().chunks(size) {
            out.extend_from_slice(&watch.push(Bytes::copy_from_slice(chunk)));
        }
        out.extend_from_slice(&watch.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_stream_the_client_asked_usage_for_passes_unchanged() {
        for size in [1, 7, 64, 4096] {
            let mut w = BodyWatch::sse(false);
            assert_eq!(relay(&mut w, STREAM, size), STREAM, "chunks of {size}");
            assert_eq!(w.usage(), Some(Usage::new(9, 2)));
            assert_eq!(w.content_chunks(), 3);
        }
    }

    #[test]
    fn a_stream_the_client_did_not_ask_usage_for_loses_it_but_is_metered() {
        let want = "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
data: [DONE]\n\n";
        for size in [1, 7, 64, 4096] {
            let mut w = BodyWatch::sse(true);
            assert_eq!(relay(&mut w, STREAM, size), want, "chunks of {size}");
            assert_eq!(w.usage(), Some(Usage::new(9, 2)));
        }
    }

    #[test]
    fn a_cut_stream_counts_its_content_chunks() {
        let cut = &STREAM[..STREAM.find("finish_reason").unwrap()];
        let mut w = BodyWatch::sse(true);
        relay(&mut w, cut, 10);
        assert_eq!(w.usage(), None);
        assert_eq!(w.content_chunks(), 2);
    }

    #[test]
    fn json_tail_keeps_the_last_bytes_across_chunks() {
        let mut w = BodyWatch::json();
        w.push(Bytes::from(vec![b'x'; TAIL_BYTES * 2]));
        w.push(Bytes::from_static(br#"{"usage":{"prompt_tokens":1,"#));
        w.push(Bytes::from_static(
            br#""completion_tokens":1,"total_tokens":2}}"#,
        ));
        assert_eq!(w.usage(), Some(Usage::new(1, 1)));
    }

    #[test]
    fn the_end_is_held_until_finish_and_content_is_not() {
        let mut w = BodyWatch::sse(false);
        let first = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        assert_eq!(w.push(Bytes::from(first)), first.as_bytes());
        assert!(w.push(Bytes::from("data: [DONE]\n\n")).is_empty());
        assert_eq!(w.finish(), "data: [DONE]\n\n".as_bytes());
        let mut j = BodyWatch::json();
        assert!(j.push(Bytes::from("{\"a\":")).is_empty());
        assert_eq!(j.push(Bytes::from("1}")), "{\"a\":".as_bytes());
        assert_eq!(j.finish(), "1}".as_bytes());
    }
}
