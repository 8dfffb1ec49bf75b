//! Fitting the KV budget to a GPU: caches live beside the weights in the device's memory, so the budget the
//! flags ask for is lowered to what is free once the model is loaded, keeping room for a step's activations.
//! Requests whose worst case can then never fit are refused before they are queued, as on the CPU.

use super::EngineConfig;

/// Device memory kept free for activations, workspaces and the allocator: a sixteenth of the device, at least
/// 1 GiB.
pub(crate) fn reserve(total: usize) -> usize {
    (total / 16).max(1 << 30)
}

/// Lowers `config`'s KV budget and prefix cache so that together they fit in `free` bytes less the reserve.
/// The prefix cache gives way first (to at most an eighth of what fits). Returns a line for the log when
/// anything was lowered.
pub(crate) fn fit(config: &mut EngineConfig, free: usize, total: usize) -> Option<String> {
    let room = free.saturating_sub(reserve(total));
    let (kv, prefix) = (config.kv_budget_bytes, config.prefix_cache_bytes);
    if kv.saturating_add(prefix) <= room {
        return None;
    }
    config.prefix_cache_bytes = prefix.min(room / 8);
    config.kv_budget_bytes = kv.min(room - config.prefix_cache_bytes);
    Some(format!(
        "GPU memory: {} MiB free of {} MiB after loading; KV budget lowered from {} to {} MiB \
         (--kv-budget-mb), prefix cache from {} to {} MiB (--prefix-cache-mb)",
        free >> 20,
        total >> 20,
        kv >> 20,
        config.kv_budget_bytes >> 20,
        prefix >> 20,
        config.prefix_cache_bytes >> 20
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: usize = 1 << 30;

    fn config(kv: usize, prefix: usize) -> EngineConfig {
        EngineConfig {
            kv_budget_bytes: kv,
            prefix_cache_bytes: prefix,
            ..EngineConfig::default()
        }
    }

    #[test]
    fn a_budget_that_fits_is_kept() {
        let mut c = config(4 * GIB, GIB / 2);
        assert_eq!(fit(&mut c, 100 * GIB, 141 * GIB), None);
        assert_eq!(
            (c.kv_budget_bytes, c.prefix_cache_bytes),
            (4 * GIB, GIB / 2)
        );
    }

    #[test]
    fn a_small_gpu_lowers_the_prefix_cache_first_then_the_kv_budget() {
        // 8 GiB card, 3 GiB free after the weights: 2 GiB of room past the 1 GiB reserve.
        let mut c = config(4 * GIB, GIB / 2);
        let line = fit(&mut c, 3 * GIB, 8 * GIB).expect("lowered");
        assert_eq!(c.prefix_cache_bytes, GIB / 4);
        assert_eq!(c.kv_budget_bytes, 2 * GIB - GIB / 4);
        assert!(line.contains("lowered from 4096 to 1792 MiB"), "{line}");
        // Only the prefix cache over the line: the KV budget stays.
        let mut c = config(GIB, 4 * GIB);
        fit(&mut c, 3 * GIB, 8 * GIB).expect("lowered");
        assert_eq!((c.kv_budget_bytes, c.prefix_cache_bytes), (GIB, GIB / 4));
    }

    #[test]
    fn no_room_at_all_leaves_no_budget() {
        let mut c = config(4 * GIB, GIB / 2);
        fit(&mut c, GIB / 2, 8 * GIB).expect("lowered");
        assert_eq!((c.kv_budget_bytes, c.prefix_cache_bytes), (0, 0));
    }
}
