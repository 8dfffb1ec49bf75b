//! Prefix cache: the KV caches of finished requests, kept so that a new prompt sharing their beginning (the
//! same system prompt, the next turn of a conversation, a retried request) prefills only what is new.
//!
//! Entries are whole token sequences (prompt plus generated tokens fed to the model) with their caches. A new
//! prompt takes a copy of the first positions of the entry it shares the longest prefix with, so one entry can
//! serve many requests at once. Memory is bounded; the least recently used entries go first.

use crate::model::SeqCache;

/// Entries are kept with room rounded up to this many positions.
const TRIM_STEP: usize = 128;

/// One finished sequence's tokens and the cache holding exactly those positions.
struct Entry {
    tokens: Vec<u32>,
    cache: SeqCache,
    bytes: usize,
    last_used: u64,
}

/// A reuse found for a prompt: a fresh cache holding its first `reused` positions.
pub struct Hit {
    pub cache: SeqCache,
    pub reused: usize,
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    capacity_bytes: usize,
    bytes_per_position: usize,
    used_bytes: usize,
    clock: u64,
}

impl PrefixCache {
    /// A cache holding at most `capacity_bytes` of KV memory (0 disables it); `bytes_per_position` is the
    /// model's KV cost of one position.
    pub fn new(capacity_bytes: usize, bytes_per_position: usize) -> Self {
        Self {
            entries: Vec::new(),
            capacity_bytes,
            bytes_per_position,
            used_bytes: 0,
            clock: 0,
        }
    }

    /// The longest stored prefix of `prompt`, copied into a new cache with room for `positions` (the
    /// request's prompt plus maximum new tokens, so it never grows past what its reservation counts). At
    /// least one prompt token is always left to compute, since its logits give the first generated token.
    pub fn lookup(&mut self, prompt: &[u32], positions: usize) -> Option<Hit> {
        let limit = prompt.len().saturating_sub(1);
        let (best, n) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(_, n)| n)?;
        if n == 0 {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        match entry.cache.prefix_copy(n, positions) {
            Ok(cache) => Some(Hit { cache, reused: n }),
            Err(e) => {
                tracing::warn!(error = %e, "prefix cache copy failed; prefilling the whole prompt");
                None
            }
        }
    }

    /// Keeps `cache`, which holds exactly the positions of `tokens`. Entries it extends are dropped; if an
    /// entry already extends it, nothing is added. A cache with much more room than it uses (a request that
    /// ended well before its token limit) is kept as a trimmed copy.
    pub fn insert(&mut self, tokens: Vec<u32>, cache: SeqCache) {
        debug_assert_eq!(tokens.len(), cache.len());
        let tight = tokens.len().next_multiple_of(TRIM_STEP).max(TRIM_STEP);
        let cache = if cache.allocated_positions() > tight {
            match cache.prefix_copy(tokens.len(), tight) {
                Ok(trimmed) => trimmed,
                Err(e) => {
                    tracing::warn!(error = %e, "prefix cache trim failed; not keeping the cache");
                    return;
                }
            }
        } else {
            cache
        };
        let bytes = cache.allocated_positions() * self.bytes_per_position;
        if tokens.is_empty() || bytes > self.capacity_bytes {
            return;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(&tokens))
        {
            e.last_used = self.clock;
            return;
        }
        let mut freed = 0;
        self.entries.retain(|e| {
            let subsumed = tokens.starts_with(&e.tokens);
            freed += if subsumed { e.bytes } else { 0 };
            !subsumed
        });
        self.used_bytes -= freed;
        while self.used_bytes + bytes > self.capacity_bytes {
            let oldest = (0..self.entries.len())
                .min_by_key(|&i| self.entries[i].last_used)
                .expect("entries hold the used bytes");
            self.used_bytes -= self.entries.swap_remove(oldest).bytes;
        }
        self.used_bytes += bytes;
        self.entries.push(Entry {
            tokens,
            cache,
            bytes,
            last_used: self.clock,
        });
    }

    /// KV bytes the entries hold.
    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A one-layer cache whose keys and values are the token ids themselves.
    fn cache_of(tokens: &[u32]) -> SeqCache {
        let mut c = SeqCache::new(1);
        let ids: Vec<f32> = tokens.iter().map(|&t| t as f32).collect();
        let t = Tensor::from_vec(ids, (1, tokens.len(), 1), &Device::Cpu).unwrap();
        c.append(0, &t, &t).unwrap();
        c.advance(tokens.len());
        c
    }

    fn ids_in(c: &SeqCache) -> Vec<u32> {
        c.layer(0)
            .map(|(k, _)| k.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .unwrap_or_default()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    }

    #[test]
    fn the_longest_shared_prefix_is_copied_leaving_one_token() {
        let mut p = PrefixCache::new(1 << 20, 8);
        p.insert(vec![1, 2, 3, 4], cache_of(&[1, 2, 3, 4]));
        p.insert(vec![1, 2, 9], cache_of(&[1, 2, 9]));
        let hit = p.lookup(&[1, 2, 3, 7, 8], 16).unwrap();
        assert_eq!((hit.reused, ids_in(&hit.cache)), (3, vec![1, 2, 3]));
        assert_eq!(hit.cache.len(), 3);
        // Room for the whole request: 300 positions round up to 384.
        assert_eq!(
            p.lookup(&[1, 2, 3, 7], 300)
                .unwrap()
                .cache
                .allocated_positions(),
            384
        );
        // The whole prompt is stored: its last token is still computed.
        let hit = p.lookup(&[1, 2, 3, 4], 16).unwrap();
        assert_eq!(hit.reused, 3);
        assert!(p.lookup(&[5, 1, 2], 16).is_none());
        assert!(p.lookup(&[1], 16).is_none());
    }

    #[test]
    fn roomy_caches_are_trimmed_when_kept() {
        let mut p = PrefixCache::new(1 << 20, 8);
        let roomy = cache_of(&[1, 2, 3]).prefix_copy(3, 1000).unwrap();
        assert_eq!(roomy.allocated_positions(), 1024);
        p.insert(vec![1, 2, 3], roomy);
        assert_eq!(p.used_bytes(), 128 * 8);
        let hit = p.lookup(&[1, 2, 3, 4], 16).unwrap();
        assert_eq!(ids_in(&hit.cache), vec![1, 2, 3]);
    }

    #[test]
    fn extensions_replace_their_prefixes_and_memory_is_bounded() {
        // 128 positions are allocated per entry at 8 bytes each: 1024 bytes; room for two.
        let mut p = PrefixCache::new(2048, 8);
        p.insert(vec![1, 2], cache_of(&[1, 2]));
        p.insert(vec![1, 2, 3], cache_of(&[1, 2, 3]));
        assert_eq!(p.entries.len(), 1, "the extension replaces its prefix");
        p.insert(vec![1, 2], cache_of(&[1, 2]));
        assert_eq!(p.entries.len(), 1, "a prefix of an entry adds nothing");
        p.insert(vec![4, 5], cache_of(&[4, 5]));
        p.lookup(&[1, 2, 3, 3], 16); // [1, 2, 3] is now the most recently used
        p.insert(vec![6, 7], cache_of(&[6, 7]));
        assert_eq!(p.used_bytes(), 2048);
        assert!(
            p.lookup(&[4, 5, 0], 16).is_none(),
            "the least recently used went"
        );
        assert_eq!(p.lookup(&[1, 2, 3, 0], 16).unwrap().reused, 3);
        let mut off = PrefixCache::new(0, 8);
        off.insert(vec![1, 2], cache_of(&[1, 2]));
        assert!(off.lookup(&[1, 2, 3], 16).is_none());
    }
}
