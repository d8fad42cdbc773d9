//! The metering seam: every forwarded request ends in one call to [`record`], with who called,
//! which replica served, and the token usage the engine reported, when the answer carried one.
//!
//! The usage is read from the tail of the relayed body (the last `"usage": {...}` object: the
//! final SSE chunk when the client asked for `stream_options.include_usage`, or the usage of a
//! plain JSON answer), so relaying stays a stream and costs only a bounded copy. The spool and
//! shipper that turn these records into billed usage events are a later issue; they attach
//! in [`record`].

use wattmesh_proto::openai::Usage;

use crate::auth::Caller;

/// Bytes of the body's end kept to find the usage in: the usage object comes last, or in the
/// last chunk before `[DONE]`.
const TAIL_BYTES: usize = 8 * 1024;

/// One forwarded request, as metering sees it when its body has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub caller: Caller,
    pub model: String,
    pub replica: String,
    pub status: u16,
    /// The engine's exact counts, when the answer carried them.
    pub usage: Option<Usage>,
    /// False when the body was cut short (the client went away, or the replica failed).
    pub complete: bool,
}

/// Where served requests go. For now a debug log line; the usage spool attaches here.
pub fn record(served: &Served) {
    tracing::debug!(
        key = %served.caller.key_id,
        tenant = %served.caller.tenant,
        model = %served.model,
        replica = %served.replica,
        status = served.status,
        complete = served.complete,
        prompt_tokens = served.usage.map(|u| u.prompt_tokens),
        completion_tokens = served.usage.map(|u| u.completion_tokens),
        "served"
    );
}

/// Watches a relayed body go by and calls [`record`] once when it ends or is dropped.
#[derive(Debug)]
pub struct UsageTap {
    tail: Vec<u8>,
    pending: Option<Served>,
}

impl UsageTap {
    pub fn new(served: Served) -> Self {
        Self {
            tail: Vec::new(),
            pending: Some(served),
        }
    }

    /// Keeps the last few KiB of the body (successful answers only).
    pub fn observe(&mut self, chunk: &[u8]) {
        if !self
            .pending
            .as_ref()
            .is_some_and(|s| (200..300).contains(&s.status))
        {
            return;
        }
        if chunk.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - TAIL_BYTES..]);
        } else {
            let overflow = (self.tail.len() + chunk.len()).saturating_sub(TAIL_BYTES);
            self.tail.drain(..overflow);
            self.tail.extend_from_slice(chunk);
        }
    }

    /// Records the request; `complete` says whether the body reached its end.
    pub fn finish(&mut self, complete: bool) {
        if let Some(mut served) = self.pending.take() {
            served.usage = last_usage(&self.tail);
            served.complete = complete;
            record(&served);
        }
    }
}

impl Drop for UsageTap {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The last `"usage": {...}` object in `tail` that parses as [`Usage`].
pub fn last_usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = find_last(&tail[..end], KEY) {
        let rest = &tail[at + KEY.len()..];
        let rest = trim_start(rest);
        if let Some(rest) = rest.strip_prefix(b":") {
            let mut values = serde_json::Deserializer::from_slice(trim_start(rest)).into_iter();
            if let Some(Ok(usage)) = values.next() {
                return Some(usage);
            }
        }
        end = at;
    }
    None
}

fn find_last(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|w| w == needle)
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &bytes[skip..]
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
            (
                "stream with include_usage",
                "data: {\"choices\":[{}],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12}}\n\ndata: [DONE]\n\n",
                Some(Usage::new(9, 3)),
            ),
            (
                "stream without usage",
                "data: {\"choices\":[{}]}\n\ndata: [DONE]\n\n",
                None,
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

    #[test]
    fn tail_keeps_the_last_bytes_across_chunks() {
        let served = Served {
            caller: Caller {
                key_id: "k".into(),
                tenant: "t".into(),
            },
            model: "m".into(),
            replica: "r".into(),
            status: 200,
            usage: None,
            complete: false,
        };
        let mut tap = UsageTap::new(served);
        tap.observe(&vec![b'x'; TAIL_BYTES * 2]);
        tap.observe(br#"{"usage":{"prompt_tokens":1,"#);
        tap.observe(br#""completion_tokens":1,"total_tokens":2}}"#);
        assert_eq!(tap.tail.len(), TAIL_BYTES);
        assert_eq!(last_usage(&tap.tail), Some(Usage::new(1, 1)));
    }
}
