//! Time of one Q4_1 matrix product (SmolLM2's 1536×576 feed-forward shape) for 1 to 256
//! activation rows, on `T` threads (default 2). The weights fit in L2, so this measures the
//! kernel, not memory; a last line streams a lone row through 64 copies (35 MB) from memory,
//! as decoding does. A measurement, not a test.
//!
//! `T=1 cargo run --release -p wattmesh-engine --example matvec_speed`

use std::sync::Arc;
use std::time::Instant;

use wattmesh_engine::kernels::matmul::matmul;
use wattmesh_engine::kernels::{QMatrix, SpinPool, WeightFormat, Workspace};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::var("T").map_or(Ok(2), |v| v.parse())?;
    let (rows, cols) = (1536, 576);
    // Any bytes make valid Q4_1 blocks; 0x37 keeps the f16 scales finite.
    let w = QMatrix::new(
        WeightFormat::Q4_1,
        rows,
        cols,
        vec![0x37; rows * cols / 32 * 20],
    )?;
    let mut ws = Workspace::new(Arc::new(SpinPool::new(threads, "matvec")?));
    for n in [1usize, 2, 4, 8, 16, 64, 256] {
        let x: Vec<f32> = (0..n * cols).map(|i| (i % 13) as f32 - 6.0).collect();
        let mut out = vec![0f32; n * rows];
        let reps = 200;
        for _ in 0..20 {
            matmul(&w, &x, &mut out, &mut ws);
        }
        let started = Instant::now();
        for _ in 0..reps {
            matmul(&w, &x, &mut out, &mut ws);
        }
        let us = started.elapsed().as_secs_f64() * 1e6 / reps as f64;
        println!(
            "T={threads} n={n:4}: {us:8.1} µs per product, {:6.1} µs per row",
            us / n as f64
        );
    }
    // Decoding reads every weight once per token, from memory, not from L2.
    let copies: Vec<QMatrix> = (0..64u8)
        .map(|i| {
            QMatrix::new(
                WeightFormat::Q4_1,
                rows,
                cols,
                vec![0x30 + i % 8; rows * cols / 32 * 20],
            )
        })
        .collect::<Result<_, _>>()?;
    let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 - 6.0).collect();
    let mut out = vec![0f32; rows];
    let started = Instant::now();
    let reps = 20;
    for _ in 0..reps {
        for w in &copies {
            matmul(w, &x, &mut out, &mut ws);
        }
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / (reps * copies.len()) as f64;
    let bytes = (rows * cols / 32 * 20) as f64;
    println!(
        "T={threads} n=   1 from memory: {us:8.1} µs per product, {:.1} GB/s",
        bytes / us / 1e3
    );
    Ok(())
}
