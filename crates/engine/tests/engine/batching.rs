//! Continuous batching with the real model over a real socket: concurrent streams give
//! exactly their solo answers while sharing steps, chunked prefill changes nothing, the KV
//! budget holds (preemption recomputes, a full queue answers 503 with Retry-After), a
//! client that leaves frees its slot, and a higher class goes first.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wattmesh_domain::ModelKind;
use wattmesh_engine::llama::KvCache;
use wattmesh_engine::{EngineOptions, Replica};

use crate::common::{CHAT_NAME, model_dir};
use crate::socket::Server;

/// SmolLM2: 30 layers, 3 KV heads × 64.
const KV_BYTES_PER_TOKEN: usize = 30 * 192 * 2 * 2;

fn replica(tune: impl FnOnce(&mut EngineOptions)) -> Replica {
    let mut options = EngineOptions::default();
    tune(&mut options);
    assert_eq!(KvCache::bytes_per_token(30, 192), KV_BYTES_PER_TOKEN);
    Replica::load_with(CHAT_NAME, ModelKind::Chat, &model_dir(CHAT_NAME), &options).unwrap()
}

const PROMPTS: [&str; 6] = [
    "The three primary colors are",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The capital of France is",
    "List of planets: Mercury, Venus,",
    "1, 2, 3, 4, 5,",
];

fn greedy(prompt: &str, max_tokens: u32) -> Value {
    json!({"model": CHAT_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})
}

/// Runs every body at once; returns the (status, JSON) answers in order.
async fn all_at_once(server: &Server, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let calls = bodies.into_iter().map(|body| {
        let http = server.http.clone();
        let url = format!("{}/v1/completions", server.base);
        async move {
            let resp = http.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    });
    futures::future::join_all(calls).await
}

fn text(answer: &Value) -> &str {
    answer["choices"][0]["text"].as_str().unwrap()
}

#[tokio::test]
async fn concurrent_streams_get_their_solo_answers_and_share_steps() {
    let server = Server::start(replica(|o| o.max_running = 8)).await;
    let mut solo = Vec::new();
    for p in PROMPTS {
        let (status, answer) = all_at_once(&server, vec![greedy(p, 24)]).await.remove(0);
        assert_eq!(status, 200, "{answer}");
        solo.push(answer);
    }
    let batched = all_at_once(&server, PROMPTS.iter().map(|p| greedy(p, 24)).collect()).await;
    for ((status, together), alone) in batched.iter().zip(&solo) {
        assert_eq!(*status, 200, "{together}");
        assert_eq!(text(together), text(alone));
        assert_eq!(together["usage"], alone["usage"]);
    }
    // Some step ran more than one sequence: the batch was shared.
    let single = server
        .metric("wattmesh:batch_sequences_bucket{model_name=\"smollm2-135m-instruct\",le=\"1\"}")
        .await;
    let steps = server.metric("wattmesh:batch_sequences_count").await;
    assert!(single < steps, "{single} of {steps} steps ran one sequence");
    server.stop().await;
}

#[tokio::test]
async fn chunked_prefill_gives_the_same_answer_as_one_pass() {
    let long = "In a distant galaxy, explorers found a planet covered in forests. ".repeat(6);
    let whole = Server::start(replica(|o| o.step_tokens = 512)).await;
    let chunked = Server::start(replica(|o| o.step_tokens = 7)).await;
    let a = all_at_once(&whole, vec![greedy(&long, 16)]).await.remove(0);
    let b = all_at_once(&chunked, vec![greedy(&long, 16)])
        .await
        .remove(0);
    assert_eq!((a.0, b.0), (200, 200));
    assert!(a.1["usage"]["prompt_tokens"].as_u64().unwrap() > 60);
    assert_eq!(text(&a.1), text(&b.1));
    // The 7-token steps really chunked the prompt: more steps than generated tokens.
    assert!(chunked.metric("wattmesh:batch_sequences_count").await > 16.0 + 8.0);
    whole.stop().await;
    chunked.stop().await;
}

#[tokio::test]
async fn a_kv_budget_smaller_than_the_batch_preempts_and_recomputes_exactly() {
    // 64 tokens of cache: two 20-token prompts generating 24 tokens each cannot both fit.
    let tight = Server::start(replica(|o| o.kv_cache_bytes = 64 * KV_BYTES_PER_TOKEN)).await;
    let roomy = Server::start(replica(|_| {})).await;
    let bodies = || vec![greedy(PROMPTS[1], 24), greedy(PROMPTS[4], 24)];
    let want = all_at_once(&roomy, bodies()).await;
    let got = all_at_once(&tight, bodies()).await;
    for ((s1, a), (s2, b)) in got.iter().zip(&want) {
        assert_eq!((*s1, *s2), (200, 200), "{a} {b}");
        assert_eq!(text(a), text(b));
    }
    assert!(tight.metric("vllm:num_preemptions_total").await >= 1.0);
    assert_eq!(tight.metric("vllm:kv_cache_usage_perc").await, 0.0);
    tight.stop().await;
    roomy.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_loses_nothing() {
    // Room for one running request (a 40-token prompt needs 3 of 4 blocks) and 2 waiting.
    let server = Server::start(replica(|o| {
        o.kv_cache_bytes = 64 * KV_BYTES_PER_TOKEN;
        o.max_waiting = 2;
    }))
    .await;
    let prompt = "Write a long story about a dragon who learns to paint the sky. ".repeat(3);
    let calls = (0..6).map(|_| {
        let http = server.http.clone();
        let url = format!("{}/v1/completions", server.base);
        let body = greedy(&prompt, 8);
        async move { http.post(url).json(&body).send().await.unwrap() }
    });
    let answers = futures::future::join_all(calls).await;
    let (mut ok, mut refused) = (Vec::new(), 0);
    for resp in answers {
        match resp.status().as_u16() {
            200 => ok.push(resp.json::<Value>().await.unwrap()),
            503 => {
                let retry: u64 = resp.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!((1..=60).contains(&retry));
                let body: Value = resp.json().await.unwrap();
                assert_eq!(body["error"]["type"], "server_error", "{body}");
                refused += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused >= 2, "only {refused} of 6 refused with room for 3");
    assert!(ok.len() >= 2);
    for answer in &ok {
        assert_eq!(
            text(answer),
            text(&ok[0]),
            "every accepted request completes in full"
        );
        assert_eq!(answer["usage"]["completion_tokens"], 8);
    }
    assert_eq!(
        server.metric("wattmesh:requests_rejected_total").await,
        refused as f64
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_frees_its_slot_at_once() {
    let server = Server::start(replica(|o| o.max_running = 1)).await;
    let body = json!({"model": CHAT_NAME, "prompt": PROMPTS[1], "max_tokens": 1500,
        "temperature": 0, "stream": true});
    let resp = server
        .http
        .post(format!("{}/v1/completions", server.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut chunks = resp.bytes_stream();
    use futures::StreamExt as _;
    chunks.next().await.unwrap().unwrap();
    // The gauges are published after the step that sent the chunk.
    while server.metric("vllm:num_requests_running").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(server.metric("vllm:kv_cache_usage_perc").await > 0.0);
    drop(chunks);
    // With one slot, a request sent after the disconnect runs only if the slot was freed;
    // 1500 tokens would take far longer than this whole test.
    let started = Instant::now();
    let (status, answer) = all_at_once(&server, vec![greedy(PROMPTS[0], 4)])
        .await
        .remove(0);
    assert_eq!(status, 200, "{answer}");
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(server.metric("vllm:num_requests_running").await, 0.0);
    assert_eq!(server.metric("vllm:kv_cache_usage_perc").await, 0.0);
    server.stop().await;
}

#[tokio::test]
async fn a_higher_class_waiting_behind_a_running_request_goes_first() {
    let server = Server::start(replica(|o| o.max_running = 1)).await;
    let send = |body: Value, class: &'static str| {
        let http = server.http.clone();
        let url = format!("{}/v1/completions", server.base);
        async move {
            let resp = http
                .post(url)
                .header("x-wattmesh-priority", class)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            Instant::now()
        }
    };
    let first = tokio::spawn(send(greedy(PROMPTS[1], 64), "normal"));
    // Wait until the first one runs, so the other two queue behind it.
    while server.metric("vllm:num_requests_running").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let low = tokio::spawn(send(greedy(PROMPTS[2], 8), "low"));
    while server.metric("vllm:num_requests_waiting").await < 1.0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let high = tokio::spawn(send(greedy(PROMPTS[3], 8), "high"));
    let (first, low, high) = (
        first.await.unwrap(),
        low.await.unwrap(),
        high.await.unwrap(),
    );
    assert!(
        first < high && high < low,
        "the high class must run before the low one"
    );
    // An unknown class is the client's error.
    let resp = server
        .http
        .post(format!("{}/v1/completions", server.base))
        .header("x-wattmesh-priority", "urgent")
        .json(&greedy("x", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    server.stop().await;
}
