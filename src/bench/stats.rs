//! Percentiles and per-level summaries of the request records.
//!
//! Percentiles use linear interpolation between closest ranks (NumPy's default, Hyndman and Fan's type 7): for
//! `n` sorted values `x[0..n]` and a fraction `p` in `[0, 1]`, the position is `h = (n - 1) · p` and the
//! percentile is `x[⌊h⌋] + (h − ⌊h⌋) · (x[⌊h⌋ + 1] − x[⌊h⌋])`. So p0 is the minimum, p100 the maximum, p50 of an
//! even count the mean of the middle two, and one value is every percentile of itself.

use serde::Serialize;

use super::client::RequestRecord;

/// The `p`-th fraction (0 to 1) of `values` by linear interpolation between closest ranks; `None` when empty.
/// Non-finite values are ignored.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let h = (v.len() - 1) as f64 * p.clamp(0.0, 1.0);
    let lo = h.floor() as usize;
    let hi = (lo + 1).min(v.len() - 1);
    Some(v[lo] + (h - lo as f64) * (v[hi] - v[lo]))
}

/// Count, mean, extremes and the 50th and 95th percentiles of one measurement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Dist {
    pub n: usize,
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

impl Dist {
    pub fn of(values: &[f64]) -> Self {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len();
        Self {
            n,
            mean: (n > 0).then(|| v.iter().sum::<f64>() / n as f64),
            min: percentile(&v, 0.0),
            p50: percentile(&v, 0.5),
            p95: percentile(&v, 0.95),
            max: percentile(&v, 1.0),
        }
    }
}

/// One concurrency level, summarised over its measured (non-warm-up) requests.
#[derive(Debug, Clone, Serialize)]
pub struct LevelSummary {
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    pub failed: usize,
    /// Successful requests that generated fewer tokens than `max_tokens` (the model ended early).
    pub short: usize,
    /// From the first request sent to the last one finished.
    pub wall_s: f64,
    /// Completion tokens of successful requests.
    pub completion_tokens: u64,
    /// `completion_tokens / wall_s`.
    pub aggregate_tok_s: f64,
    /// Send → first non-empty content delta, successful requests.
    pub ttft_ms: Dist,
    /// Per request: `(completion_tokens − 1) / (last delta − first delta)`.
    pub decode_tok_s: Dist,
    /// Send → end of stream, successful requests.
    pub e2e_ms: Dist,
    /// Gaps between consecutive content deltas, all successful requests together.
    pub gap_ms: Dist,
}

impl LevelSummary {
    pub fn of(concurrency: usize, wall_s: f64, max_tokens: u64, records: &[RequestRecord]) -> Self {
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
        let completion_tokens: u64 = ok.iter().map(|r| r.completion_tokens).sum();
        let collect = |f: &dyn Fn(&RequestRecord) -> Option<f64>| -> Vec<f64> {
            ok.iter().filter_map(|r| f(r)).collect()
        };
        let gaps: Vec<f64> = ok.iter().flat_map(|r| r.gaps_ms.iter().copied()).collect();
        Self {
            concurrency,
            requests: records.len(),
            ok: ok.len(),
            failed: records.len() - ok.len(),
            short: ok
                .iter()
                .filter(|r| r.completion_tokens < max_tokens)
                .count(),
            wall_s,
            completion_tokens,
            aggregate_tok_s: if wall_s > 0.0 {
                completion_tokens as f64 / wall_s
            } else {
                0.0
            },
            ttft_ms: Dist::of(&collect(&|r| r.ttft_ms)),
            decode_tok_s: Dist::of(&collect(&|r| r.decode_tok_s)),
            e2e_ms: Dist::of(&collect(&|r| Some(r.e2e_ms))),
            gap_ms: Dist::of(&gaps),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn percentiles_interpolate_between_closest_ranks() {
        let v = [4.0, 1.0, 3.0, 2.0]; // unsorted on purpose
        assert!(close(percentile(&v, 0.0), 1.0));
        assert!(close(percentile(&v, 0.5), 2.5));
        assert!(close(percentile(&v, 0.95), 3.85)); // h = 2.85: 3 + 0.85 · (4 − 3)
        assert!(close(percentile(&v, 1.0), 4.0));
        assert!(close(percentile(&[10.0, 20.0, 30.0], 0.5), 20.0));
        assert!(close(percentile(&[10.0, 20.0, 30.0], 0.25), 15.0));
        assert!(close(percentile(&[7.0], 0.95), 7.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert!(close(percentile(&[f64::NAN, 5.0], 0.5), 5.0), "NaN ignored");
        assert!(close(percentile(&v, 2.0), 4.0), "p clamped");
    }

    #[test]
    fn percentiles_agree_with_numpy_on_a_longer_sample() {
        // numpy.percentile([...], [50, 95]) with the default method ("linear").
        let v: Vec<f64> = (1..=20).map(|i| (i * i) as f64).collect();
        assert!(close(percentile(&v, 0.5), 110.5));
        assert!(close(percentile(&v, 0.95), 362.95));
    }

    #[test]
    fn dist_of_values() {
        let d = Dist::of(&[3.0, 1.0, 2.0]);
        assert_eq!(d.n, 3);
        assert!(close(d.mean, 2.0) && close(d.min, 1.0) && close(d.max, 3.0) && close(d.p50, 2.0));
        assert!(d.p50 <= d.p95);
        assert_eq!(Dist::of(&[]), Dist::default());
    }
}
