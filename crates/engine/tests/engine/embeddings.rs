//! The embedding model with real weights: similarity, unit norm, base64 and usage.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::{EMBED, EMBED_NAME, post};

async fn embed(input: Value, format: &str) -> Value {
    let (status, body) = post(
        &EMBED,
        "/v1/embeddings",
        json!({"model": EMBED_NAME, "input": input, "encoding_format": format}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn paraphrases_are_close_and_unrelated_texts_are_not() {
    let body = embed(
        json!([
            "The cat sits on the mat.",
            "A cat is sitting on a mat.",
            "Quarterly revenue rose by eight percent."
        ]),
        "float",
    )
    .await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], EMBED_NAME);
    let vecs: Vec<Vec<f32>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| floats(&d["embedding"]))
        .collect();
    for (i, v) in vecs.iter().enumerate() {
        assert_eq!(body["data"][i]["index"], i);
        assert_eq!(body["data"][i]["object"], "embedding");
        assert_eq!(v.len(), 384);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    let para = cosine(&vecs[0], &vecs[1]);
    let unrelated = cosine(&vecs[0], &vecs[2]);
    assert!(para > 0.6, "paraphrase cosine {para}");
    assert!(unrelated < 0.3, "unrelated cosine {unrelated}");

    // Batching pads; an input alone gives the same vector as in a batch.
    let alone = embed(json!("The cat sits on the mat."), "float").await;
    let alone = floats(&alone["data"][0]["embedding"]);
    assert!(cosine(&alone, &vecs[0]) > 0.9999);
}

#[tokio::test]
async fn base64_decodes_to_the_same_floats_and_usage_counts_special_tokens() {
    let text = "Hello world";
    let float = embed(json!(text), "float").await;
    let b64 = embed(json!([text]), "base64").await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats(&float["data"][0]["embedding"]));
    // [CLS] hello world [SEP]
    assert_eq!(
        float["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4})
    );
}
