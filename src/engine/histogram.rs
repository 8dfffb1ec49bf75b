//! A fixed-bucket histogram the generation thread records into and any thread reads (for `/metrics`).

use std::sync::Mutex;

/// Counts of observations at or below each bound, plus their sum, as Prometheus histograms expose them.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<Counts>,
}

/// A snapshot: `buckets[i]` counts observations `<= bounds[i]` (cumulative); `count` includes all of them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            state: Mutex::new(Counts {
                buckets: vec![0; bounds.len()],
                ..Counts::default()
            }),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (b, bound) in s.buckets.iter_mut().zip(self.bounds) {
            if v <= *bound {
                *b += 1;
            }
        }
        s.count += 1;
        s.sum += v;
    }

    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    pub fn snapshot(&self) -> Counts {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 4.0]);
        for v in [1.0, 2.0, 8.0] {
            h.observe(v);
        }
        assert_eq!(
            h.snapshot(),
            Counts {
                buckets: vec![1, 2],
                count: 3,
                sum: 11.0
            }
        );
    }
}
