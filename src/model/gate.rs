//! The gated activation of a gated MLP, `act(g)·u` value by value: SiLU (`g·σ(g)`, with rill's own
//! exponential, eight values at a time where the CPU has AVX2) or GPT-style tanh GELU.
//!
//! Every CPU path that gates (the fork-join forward pass, the team step's gated sections and its fallback)
//! calls [`gate_in_place`], and the AVX2 loop gives the portable loop's bits, so a value never depends on
//! which path or which machine feature computed it.

use super::exp::exp;

/// The nonlinearity of a gated MLP: `act(gate) * up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): llama, qwen, phi3, mistral.
    Silu,
    /// GELU, tanh approximation (GeGLU): gemma.
    GeluTanh,
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, as PyTorch's `gelu(approximate="tanh")` writes it.
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
}

/// SiLU, `g / (1 + e^-g)`, with rill's exponential.
#[inline(always)]
pub(crate) fn silu(g: f32) -> f32 {
    g / (1.0 + exp(-g))
}

/// `g[i] = act(g[i]) · u[i]` for every `i` (`u` as long as `g`).
pub(crate) fn gate_in_place(g: &mut [f32], u: &[f32], act: Activation) {
    assert_eq!(g.len(), u.len(), "gate and up halves differ in length");
    match act {
        Activation::Silu => swiglu(g, u, simd()),
        Activation::GeluTanh => g
            .iter_mut()
            .zip(u)
            .for_each(|(g, u)| *g = gelu_tanh(*g) * u),
    }
}

/// Whether the AVX2 loop can run here.
fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `g[i] = silu(g[i]) · u[i]`; `simd` (AVX2 checked by the caller) picks the vector loop, same bits.
fn swiglu(g: &mut [f32], u: &[f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: the caller checked AVX2; the lengths are equal (checked by `gate_in_place` and the tests).
        return unsafe { x86::swiglu(g, u) };
    }
    let _ = simd;
    g.iter_mut().zip(u).for_each(|(g, u)| *g = silu(*g) * u);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::silu;
    use crate::model::exp::x86::exp8;
    use std::arch::x86_64::*;

    /// [`super::swiglu`] eight values at a time, operation for operation as [`silu`].
    ///
    /// # Safety
    /// The CPU must have AVX2, and `u` must be at least as long as `g`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn swiglu(g: &mut [f32], u: &[f32]) {
        let whole = g.len() - g.len() % 8;
        let (gp, up) = (g.as_mut_ptr(), u.as_ptr());
        let (one, sign) = (_mm256_set1_ps(1.0), _mm256_set1_ps(-0.0));
        for i in (0..whole).step_by(8) {
            let x = _mm256_loadu_ps(gp.add(i));
            let e = exp8(_mm256_xor_ps(x, sign));
            let s = _mm256_div_ps(x, _mm256_add_ps(one, e));
            _mm256_storeu_ps(gp.add(i), _mm256_mul_ps(s, _mm256_loadu_ps(up.add(i))));
        }
        for (g, u) in g[whole..].iter_mut().zip(&u[whole..]) {
            *g = silu(*g) * u;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, spread: f32) -> Vec<f32> {
        crate::model::exp::test_values(n, spread, 12_345)
    }

    #[test]
    fn silu_matches_the_definition() {
        for g in values(10_000, 30.0)
            .into_iter()
            .chain([0.0, -0.0, 1e-20, 87.5, -87.5])
        {
            let want = g as f64 / (1.0 + (-(g as f64)).exp());
            let got = silu(g) as f64;
            assert!(
                (got - want).abs() <= 4e-7 * want.abs().max(1e-30),
                "silu({g}) = {got}, want {want}"
            );
        }
        // Far out: the identity above, (nearly) zero below.
        assert_eq!(silu(200.0), 200.0);
        assert!(silu(-200.0).abs() < 1e-35);
    }

    #[test]
    fn the_avx2_loop_gives_the_portable_bits() {
        if !simd() {
            return;
        }
        for len in [0, 1, 7, 8, 9, 100, 1536] {
            for spread in [1.0, 20.0, 120.0] {
                let (g, u) = (values(len, spread), values(len + 3, 2.0)[3..].to_vec());
                let (mut a, mut b) = (g.clone(), g);
                swiglu(&mut a, &u, false);
                swiglu(&mut b, &u, true);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "len {len}, spread {spread}");
            }
        }
    }

    #[test]
    fn gelu_gates_value_by_value() {
        let (mut g, u) = (vec![1.0f32, -2.0, 0.5], vec![2.0f32, 1.0, -1.0]);
        gate_in_place(&mut g, &u, Activation::GeluTanh);
        let want: Vec<f32> = [1.0f32, -2.0, 0.5]
            .iter()
            .zip(&u)
            .map(|(x, u)| gelu_tanh(*x) * u)
            .collect();
        assert_eq!(g, want);
    }
}
