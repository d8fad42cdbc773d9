//! wattmesh-engine (work in progress).
pub mod error;
pub mod tokenizer;

#[cfg(test)]
mod dump {
    #[test]
    fn dump_meta() {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/test-data/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
        let mut f = std::fs::File::open(p).unwrap();
        let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
        let mut keys: Vec<_> = c.metadata.iter().collect();
        keys.sort_by_key(|k| k.0.clone());
        for (k, v) in keys {
            match v {
                candle_core::quantized::gguf_file::Value::Array(a) => println!("{k}: array[{}] first={:?}", a.len(), &a[..a.len().min(20)]),
                v => println!("{k}: {v:?}"),
            }
        }
        let t = super::tokenizer::GgufTokenizer::from_gguf(&c).unwrap();
        for s in ["Hello, world!", "12345", " leading space", "émoji 🚀", "<|im_start|>user\nhi<|im_end|>\n"] {
            println!("{s:?} -> {:?}", t.encode(s).unwrap());
        }
    }
}
