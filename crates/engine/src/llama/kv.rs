//! The paged KV cache: one pool of fixed-size blocks per replica, sized by a memory budget,
//! handed out to sequences as they grow.
//!
//! Keys and values are stored as f16 (llama.cpp's default cache type), in blocks of
//! [`BLOCK_TOKENS`] tokens: a sequence holds a table of block numbers, so memory is taken as
//! a stream grows rather than reserved for its whole context up front, and a finished or
//! cancelled stream gives its blocks back at once. The pool starts zeroed and untouched, so
//! the resident memory grows with the blocks actually written.

use half::f16;

/// Tokens per block.
pub const BLOCK_TOKENS: usize = 16;

/// The blocks of one sequence and how many positions it has written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeqCache {
    pub blocks: Vec<u32>,
    pub len: usize,
}

/// The block pool of one replica.
#[derive(Debug)]
pub struct KvCache {
    layers: usize,
    kv_dim: usize,
    blocks: usize,
    /// Per layer, `blocks × BLOCK_TOKENS × kv_dim` f16 bit patterns.
    keys: Vec<Vec<u16>>,
    values: Vec<Vec<u16>>,
    free: Vec<u32>,
}

impl KvCache {
    /// Bytes one token occupies across all layers.
    pub fn bytes_per_token(layers: usize, kv_dim: usize) -> usize {
        layers * kv_dim * 2 * std::mem::size_of::<u16>()
    }

    /// A pool of as many blocks as `budget_bytes` holds (at least one).
    pub fn new(layers: usize, kv_dim: usize, budget_bytes: usize) -> Self {
        let per_block = Self::bytes_per_token(layers, kv_dim) * BLOCK_TOKENS;
        let blocks = (budget_bytes / per_block.max(1)).max(1);
        let plane = blocks * BLOCK_TOKENS * kv_dim;
        Self {
            layers,
            kv_dim,
            blocks,
            // vec![0; n] asks the allocator for zeroed pages: untouched blocks cost no RSS.
            keys: (0..layers).map(|_| vec![0u16; plane]).collect(),
            values: (0..layers).map(|_| vec![0u16; plane]).collect(),
            free: (0..blocks as u32).rev().collect(),
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.blocks
    }

    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// The fraction of blocks in use, 0..=1 (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        1.0 - self.free.len() as f64 / self.blocks as f64
    }

    /// The most tokens the whole pool holds.
    pub fn capacity_tokens(&self) -> usize {
        self.blocks * BLOCK_TOKENS
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(tokens: usize) -> usize {
        tokens.div_ceil(BLOCK_TOKENS)
    }

    /// Extends `seq` to hold `tokens` positions; all or nothing.
    pub fn grow(&mut self, seq: &mut SeqCache, tokens: usize) -> bool {
        let need = Self::blocks_for(tokens).saturating_sub(seq.blocks.len());
        if need > self.free.len() {
            return false;
        }
        let at = self.free.len() - need;
        seq.blocks.extend(self.free.drain(at..));
        true
    }

    /// Returns every block of `seq` to the pool.
    pub fn release(&mut self, seq: &mut SeqCache) {
        self.free.append(&mut seq.blocks);
        seq.len = 0;
    }

    /// Where position `pos` of a sequence with block table `table` starts in a plane.
    fn offset(&self, table: &[u32], pos: usize) -> usize {
        (table[pos / BLOCK_TOKENS] as usize * BLOCK_TOKENS + pos % BLOCK_TOKENS) * self.kv_dim
    }

    /// Stores one token's key and value (`kv_dim` each) at `pos` in `layer`.
    pub fn write(&mut self, layer: usize, table: &[u32], pos: usize, key: &[f32], value: &[f32]) {
        let at = self.offset(table, pos);
        let d = self.kv_dim;
        for (dst, src) in self.keys[layer][at..at + d].iter_mut().zip(key) {
            *dst = f16::from_f32(*src).to_bits();
        }
        for (dst, src) in self.values[layer][at..at + d].iter_mut().zip(value) {
            *dst = f16::from_f32(*src).to_bits();
        }
    }

    /// The keys and values of block `i` of `table` in `layer`: `BLOCK_TOKENS × kv_dim` each.
    pub fn block(&self, layer: usize, table: &[u32], i: usize) -> (&[u16], &[u16]) {
        let at = table[i] as usize * BLOCK_TOKENS * self.kv_dim;
        let len = BLOCK_TOKENS * self.kv_dim;
        (
            &self.keys[layer][at..at + len],
            &self.values[layer][at..at + len],
        )
    }

    pub fn layers(&self) -> usize {
        self.layers
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_sets_the_block_count() {
        let per_token = KvCache::bytes_per_token(2, 8); // 64 bytes
        let cache = KvCache::new(2, 8, per_token * BLOCK_TOKENS * 3 + 10);
        assert_eq!(cache.total_blocks(), 3);
        assert_eq!(cache.capacity_tokens(), 3 * BLOCK_TOKENS);
    }

    #[test]
    fn growth_is_all_or_nothing_and_release_gives_back() {
        let mut cache = KvCache::new(1, 4, KvCache::bytes_per_token(1, 4) * BLOCK_TOKENS * 4);
        let (mut a, mut b) = (SeqCache::default(), SeqCache::default());
        assert!(cache.grow(&mut a, 1));
        assert!(cache.grow(&mut a, BLOCK_TOKENS)); // still one block
        assert_eq!(a.blocks.len(), 1);
        assert!(cache.grow(&mut a, 2 * BLOCK_TOKENS + 1));
        assert_eq!(cache.free_blocks(), 1);
        assert!(!cache.grow(&mut b, 2 * BLOCK_TOKENS), "needs 2, 1 free");
        assert!(b.blocks.is_empty(), "a failed growth takes nothing");
        cache.release(&mut a);
        assert_eq!(cache.free_blocks(), 4);
        assert!(cache.grow(&mut b, 4 * BLOCK_TOKENS));
        assert!((cache.usage() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn written_positions_read_back_through_the_table() {
        let mut cache = KvCache::new(2, 4, KvCache::bytes_per_token(2, 4) * BLOCK_TOKENS * 4);
        let mut seq = SeqCache::default();
        assert!(cache.grow(&mut seq, BLOCK_TOKENS + 2));
        cache.write(
            1,
            &seq.blocks,
            BLOCK_TOKENS + 1,
            &[1.0, 2.0, 3.0, 4.0],
            &[-1.0; 4],
        );
        let (k, v) = cache.block(1, &seq.blocks, 1);
        let k: Vec<f32> = k[4..8]
            .iter()
            .map(|b| f16::from_bits(*b).to_f32())
            .collect();
        assert_eq!(k, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(f16::from_bits(v[4]).to_f32(), -1.0);
    }
}
