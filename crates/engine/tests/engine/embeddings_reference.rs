//! The embedding model against reference vectors from an independent implementation
//! (`bench/reference/minilm_reference.py`: a float64 numpy BERT and a pure-Python WordPiece,
//! each text encoded alone): every text, in one padded batch and alone, within cosine 0.999
//! of its reference, and billed the reference's token count.

use serde_json::{Value, json};

use crate::common::{EMBED, EMBED_NAME, post};

/// Written by `bench/reference/minilm_reference.py`; regenerate it when the model changes.
const REFERENCE: &str = include_str!("../data/minilm_reference.json");
/// The catalog the test models are pulled (and sha256-checked) from.
const CATALOG: &str = include_str!("../../../agent/catalog.toml");

const MIN_COSINE: f64 = 0.999;

struct Case {
    text: String,
    tokens: u64,
    embedding: Vec<f64>,
}

fn reference() -> Vec<Case> {
    let doc: Value = serde_json::from_str(REFERENCE).unwrap();
    assert_eq!(doc["model"], EMBED_NAME);
    let sha = doc["safetensors_sha256"].as_str().unwrap();
    assert!(
        CATALOG.contains(sha),
        "the reference vectors were computed from model.safetensors {sha}, which \
         crates/agent/catalog.toml no longer names: rerun bench/reference/minilm_reference.py"
    );
    let dims = doc["dimensions"].as_u64().unwrap() as usize;
    let cases: Vec<Case> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_owned(),
            tokens: c["tokens"].as_u64().unwrap(),
            embedding: floats(&c["embedding"]),
        })
        .collect();
    assert!(cases.len() >= 10, "{} reference cases", cases.len());
    for c in &cases {
        assert_eq!(c.embedding.len(), dims, "{:?}", c.text);
    }
    cases
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Cosine similarity, not assuming unit length.
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

/// One /v1/embeddings request; returns the vectors in input order and the billed tokens.
async fn embed(input: Value) -> (Vec<Vec<f64>>, u64) {
    let (status, body) = post(
        &EMBED,
        "/v1/embeddings",
        json!({"model": EMBED_NAME, "input": input}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    let vecs = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i);
            floats(&d["embedding"])
        })
        .collect();
    assert_eq!(body["usage"]["completion_tokens"], 0, "{}", body["usage"]);
    assert_eq!(
        body["usage"]["total_tokens"], body["usage"]["prompt_tokens"],
        "{}",
        body["usage"]
    );
    (vecs, body["usage"]["prompt_tokens"].as_u64().unwrap())
}

#[tokio::test]
async fn embeddings_match_an_independent_reference_batched_and_alone() {
    let cases = reference();
    let mut worst = (f64::INFINITY, String::new());
    let mut check = |how: &str, case: &Case, got: &[f64]| {
        let cos = cosine(got, &case.embedding);
        assert!(
            cos >= MIN_COSINE,
            "{how}: cosine {cos} < {MIN_COSINE} with the reference for {:?}",
            case.text
        );
        if cos < worst.0 {
            worst = (cos, format!("{how} {:?}", case.text));
        }
    };

    // All texts in one request: one batch, padded to the longest of them.
    let texts: Vec<&str> = cases.iter().map(|c| c.text.as_str()).collect();
    let (vecs, tokens) = embed(json!(texts)).await;
    assert_eq!(vecs.len(), cases.len());
    assert_eq!(tokens, cases.iter().map(|c| c.tokens).sum::<u64>());
    for (case, got) in cases.iter().zip(&vecs) {
        check("batched", case, got);
    }

    // Each text alone: no padding at all.
    for case in &cases {
        let (vecs, tokens) = embed(json!(case.text)).await;
        assert_eq!(tokens, case.tokens, "usage of {:?}", case.text);
        check("alone", case, &vecs[0]);
    }

    eprintln!(
        "min cosine with the reference: {:.9} (1 - cos = {:.1e}; {})",
        worst.0,
        1.0 - worst.0,
        worst.1
    );
}
