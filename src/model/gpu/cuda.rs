//! The CUDA side of [`super`]: NVRTC compilation, the step table, and the two launches of a layer.

use std::collections::HashMap;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaStream, DevicePtr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Result, Shape, Storage, Tensor,
};

use super::super::attention::Scoring;
use super::super::rope::Rope;
use super::super::SeqStep;

const SOURCE: &str = include_str!("attention.cu");

/// Threads of an `attend` block: 4 warps (`WARPS` in the source).
const ATTEND_THREADS: u32 = 128;
/// The widest head the kernels take (`MAX_LANE_DIMS * 32` in the source).
const MAX_HEAD_DIM: usize = 256;

/// The kernels, one per cache type, and the device they run on.
#[derive(Clone)]
pub(super) struct Kernels {
    device: Device,
    stream: Arc<CudaStream>,
    /// Decode steps' graphs, by batch size and whether the caches hold f16.
    graphs: Arc<Mutex<HashMap<(usize, bool), Graph>>>,
    store_f32: CudaFunction,
    store_f16: CudaFunction,
    attend_f32: CudaFunction,
    attend_f16: CudaFunction,
}

/// Compiles the kernels' source with NVRTC (which needs no GPU: the driver only loads the result).
fn compile() -> std::result::Result<Ptx, String> {
    // No fused multiply-adds: rotations round as the host's do.
    let opts = CompileOptions {
        fmad: Some(false),
        name: Some("rill_attention.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts).map_err(|e| format!("NVRTC: {e}"))
}

impl Kernels {
    /// Compiles the source for `dev` and loads it.
    pub(super) fn load(dev: &Device) -> std::result::Result<Self, String> {
        let Device::Cuda(d) = dev else {
            return Err("not a CUDA device".into());
        };
        let ptx = compile()?;
        let stream = d.cuda_stream();
        let module = stream
            .context()
            .load_module(ptx)
            .map_err(|e| format!("loading the kernels: {e}"))?;
        let f = |name: &str| {
            module
                .load_function(name)
                .map_err(|e| format!("kernel {name}: {e}"))
        };
        Ok(Self {
            store_f32: f("store_f32")?,
            store_f16: f("store_f16")?,
            attend_f32: f("attend_f32")?,
            attend_f16: f("attend_f16")?,
            stream,
            device: dev.clone(),
            graphs: Arc::default(),
        })
    }

    pub(super) fn begin(
        &self,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Option<Step>> {
        let Some(plan) = self.plan(batch, spans, kv_heads, head_dim)? else {
            return Ok(None);
        };
        let len = plan.table.len();
        let table = Tensor::from_vec(plan.table.clone(), len, &self.device)?;
        self.step(plan, table).map(Some)
    }

    /// Reserves each sequence's room for its rows and lays out the step's table (see `attention.cu`); `None`,
    /// reserving nothing, when the kernels cannot serve these caches.
    fn plan(
        &self,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Option<Plan>> {
        let Some(first) = batch.first() else {
            return Ok(None);
        };
        let dtype = first.cache.dtype();
        let unsuited = head_dim > MAX_HEAD_DIM
            || head_dim % 2 != 0
            || !matches!(dtype, DType::F32 | DType::F16)
            || batch.iter().any(|s| s.cache.dtype() != dtype);
        if unsuited {
            return Ok(None);
        }
        let mut rows: Vec<i64> = Vec::new();
        let mut caps: Vec<i64> = Vec::with_capacity(batch.len());
        let mut bufs: Vec<Vec<(Tensor, Tensor)>> = Vec::with_capacity(batch.len());
        let mut max_pos = 0;
        for (s, (seq, &(_, len))) in batch.iter_mut().zip(spans).enumerate() {
            let pos = seq.cache.len();
            for r in 0..len {
                rows.extend([s as i64, (pos + r) as i64]);
            }
            max_pos = max_pos.max(pos + len);
            let layers = seq.cache.reserve(len, kv_heads, head_dim, &self.device)?;
            caps.push(layers[0].0.dim(1)? as i64);
            bufs.push(layers);
        }
        let n_layers = bufs[0].len();
        let mut ptrs = Vec::with_capacity(n_layers * batch.len() * 2);
        for layer in 0..n_layers {
            for seq in &bufs {
                let (k, v) = &seq[layer];
                ptrs.extend([
                    address(k, &self.stream)? as i64,
                    address(v, &self.stream)? as i64,
                ]);
            }
        }
        let (n_rows, n_seqs) = (rows.len() / 2, batch.len());
        let mut table = rows;
        table.extend(caps);
        table.extend(ptrs);
        Ok(Some(Plan {
            table,
            n_rows,
            n_seqs,
            max_pos,
            f16: dtype == DType::F16,
            kv_heads,
            head_dim,
            buffers: bufs,
        }))
    }

    /// The step of `plan` whose table is `table` (on the device, holding `plan.table`).
    fn step(&self, plan: Plan, table: Tensor) -> Result<Step> {
        let base = address(&table, &self.stream)?;
        let (n_rows, n_seqs) = (plan.n_rows, plan.n_seqs);
        Ok(Step {
            kernels: self.clone(),
            table,
            rows_at: base,
            caps_at: base + 8 * (2 * n_rows) as u64,
            ptrs_at: base + 8 * (2 * n_rows + n_seqs) as u64,
            n_rows,
            n_seqs,
            max_pos: plan.max_pos,
            f16: plan.f16,
            kv_heads: plan.kv_heads,
            head_dim: plan.head_dim,
            _buffers: plan.buffers,
        })
    }

    pub(super) fn replay(
        &self,
        batch: &mut [SeqStep<'_>],
        spans: &[(usize, usize)],
        kv_heads: usize,
        head_dim: usize,
        inputs: &[&[u32]],
        forward: &mut super::DeviceForward<'_>,
    ) -> Result<Option<Tensor>> {
        let decode = batch.iter().all(|s| s.tokens.len() == 1 && !s.all_logits);
        if !decode || batch.is_empty() || std::env::var("RILL_GPU_GRAPHS").as_deref() != Ok("1") {
            return Ok(None);
        }
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let f16 = batch[0].cache.dtype() == DType::F16;
        let graph = graphs.entry((batch.len(), f16)).or_default();
        if graph.failed {
            return Ok(None);
        }
        let Some(plan) = self.plan(batch, spans, kv_heads, head_dim)? else {
            return Ok(None);
        };
        // The graph's buffers: the same addresses every step, refreshed in place. A buffer that had to be made
        // anew (not expected: its size is the batch's) invalidates the graph that read the old one.
        let (table, mut moved) = fixed(&mut graph.table, &plan.table, DType::I64, &self.device)?;
        let mut fixed_inputs = Vec::with_capacity(inputs.len());
        for (k, values) in inputs.iter().enumerate() {
            if graph.inputs.len() <= k {
                graph.inputs.push(None);
            }
            let (t, new) = fixed(&mut graph.inputs[k], values, DType::U32, &self.device)?;
            fixed_inputs.push(t);
            moved |= new;
        }
        if moved && graph.graph.is_some() {
            graph.logits = None;
            graph.graph = None;
            graph.warm = false;
        }
        let step = super::Step {
            inner: self.step(plan, table)?,
        };
        if let (Some(g), Some(logits)) = (&graph.graph, &graph.logits) {
            g.0.launch().map_err(launch_error)?;
            return Ok(Some(logits.clone()));
        }
        // candle uploads small host arrays (shapes and strides) for some kernels. A graph would copy them from
        // host memory that is gone by the time it replays, so both the first run and the capture keep them in
        // candle's cache of uploads: the first run fills it, the capture reads it (and fails if it misses).
        let Device::Cuda(cuda) = &self.device else {
            bail!("gpu attention: the kernels' device is not a CUDA device");
        };
        let _uploads = cuda.enable_cuda_graph_htod_cache();
        if !graph.warm {
            // First step of this size: run it as it is, which loads every kernel, sizes every workspace and
            // fills the upload cache.
            graph.warm = true;
            return forward(batch, &fixed_inputs, &step).map(Some);
        }
        use candle_core::cuda_backend::cudarc::driver::sys;
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(launch_error)?;
        let captured = catch_unwind(AssertUnwindSafe(|| forward(batch, &fixed_inputs, &step)));
        // A capture the driver invalidated makes the frees of the tensors dropped since fail, and cudarc keeps
        // that error for the next call, which would return it before ending the capture: take it first.
        let recorded = self.stream.context().check_err();
        let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        let ended = self.stream.end_capture(flags);
        let captured = match captured {
            Ok(c) => c,
            Err(panic) => {
                graph.failed = true;
                self.leave_capture();
                resume_unwind(panic)
            }
        };
        match (captured, recorded, ended) {
            (Ok(logits), Ok(()), Ok(Some(g))) => {
                g.launch().map_err(launch_error)?;
                graph.graph = Some(Captured(g));
                graph.logits = Some(logits.clone());
                Ok(Some(logits))
            }
            (captured, recorded, ended) => {
                let why = match (&captured, recorded, ended) {
                    (Err(e), _, _) => e.to_string(),
                    (_, Err(e), _) | (_, _, Err(e)) => e.to_string(),
                    _ => "no graph".to_string(),
                };
                tracing::warn!(
                    batch = batch.len(),
                    "CUDA graph capture failed, running steps of this size as before: {why}"
                );
                graph.failed = true;
                // Tensors made during the capture are freed now, outside it; then the stream runs as before.
                drop(captured);
                self.leave_capture();
                forward(batch, &fixed_inputs, &step).map(Some)
            }
        }
    }

    /// Ends a capture the stream may still be in (an error ended the attempt before the capture was ended) and
    /// clears the errors cudarc kept meanwhile, so that the steps after a failed capture run on a stream that
    /// is not capturing, with no stale error to fail them.
    fn leave_capture(&self) {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let flags = sys::CUgraphInstantiate_flags(0);
        for _ in 0..3 {
            let _ = self.stream.context().check_err();
            match self.stream.capture_status() {
                Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE) => break,
                _ => drop(self.stream.end_capture(flags)),
            }
        }
        let _ = self.stream.context().check_err();
    }
}

/// What [`Kernels::plan`] lays out: the table's values and what a [`Step`] needs besides its address.
struct Plan {
    table: Vec<i64>,
    n_rows: usize,
    n_seqs: usize,
    max_pos: usize,
    f16: bool,
    kv_heads: usize,
    head_dim: usize,
    buffers: Vec<Vec<(Tensor, Tensor)>>,
}

/// `slot`'s tensor overwritten with `values` in place, so that its address stays what a captured graph reads;
/// made first (and then `true`) when the slot is empty or of another size.
fn fixed<T: candle_core::WithDType>(
    slot: &mut Option<Tensor>,
    values: &[T],
    dtype: DType,
    dev: &Device,
) -> Result<(Tensor, bool)> {
    let fresh = Tensor::from_slice(values, values.len(), dev)?;
    match slot {
        Some(t) if t.dims1()? == values.len() && t.dtype() == dtype => {
            t.slice_set(&fresh, 0, 0)?;
            Ok((t.clone(), false))
        }
        _ => {
            let t = Tensor::zeros(values.len(), dtype, dev)?;
            t.slice_set(&fresh, 0, 0)?;
            *slot = Some(t.clone());
            Ok((t, true))
        }
    }
}

/// One batch size's graph and the buffers it reads and writes.
#[derive(Default)]
struct Graph {
    /// The logits the graph writes (dropped before the graph: freeing a graph's allocation outside it).
    logits: Option<Tensor>,
    graph: Option<Captured>,
    table: Option<Tensor>,
    inputs: Vec<Option<Tensor>>,
    /// A first step of this size ran (uncaptured).
    warm: bool,
    /// Its capture failed: steps of this size run uncaptured.
    failed: bool,
}

/// A captured graph.
struct Captured(candle_core::cuda_backend::cudarc::driver::CudaGraph);

// SAFETY: a graph is used by one thread at a time: the generation thread, through the mutex of `Kernels`.
unsafe impl Send for Captured {}

/// One step: the table on the device, the addresses of its three parts, and every cache buffer it names, kept
/// alive for as long as the step's kernels may run.
pub(super) struct Step {
    kernels: Kernels,
    table: Tensor,
    rows_at: u64,
    caps_at: u64,
    ptrs_at: u64,
    n_rows: usize,
    n_seqs: usize,
    /// One past the highest position of the step (the rotary tables must reach it).
    max_pos: usize,
    f16: bool,
    kv_heads: usize,
    head_dim: usize,
    _buffers: Vec<Vec<(Tensor, Tensor)>>,
}

impl Step {
    pub(super) fn attend(
        &self,
        layer: usize,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        rope: Option<&Rope>,
        scoring: &Scoring,
    ) -> Result<Tensor> {
        let (hd, nkv) = (self.head_dim, self.kv_heads);
        let heads = q.dim(1)? / hd;
        if heads % nkv != 0 || k.dim(1)? != nkv * hd || v.dim(1)? != nkv * hd {
            bail!("gpu attention: {heads} heads and {nkv} kv heads of {hd}");
        }
        let stream = &self.kernels.stream;
        let (qa, qs) = rows_of(q, self.n_rows, stream)?;
        let (ka, ks) = rows_of(k, self.n_rows, stream)?;
        let (va, vs) = rows_of(v, self.n_rows, stream)?;
        let (cos, sin, neox) = match rope {
            Some(r) => {
                let (cos, sin) = r.device_tables().ok_or_else(|| {
                    candle_core::Error::Msg("gpu attention: rotary tables on the host".into())
                })?;
                if cos.dim(0)? < self.max_pos || cos.dim(1)? * 2 != hd {
                    bail!(
                        "gpu attention: rotary tables of {:?} for position {}",
                        cos.shape(),
                        self.max_pos
                    );
                }
                (
                    address(cos, stream)?,
                    address(sin, stream)?,
                    r.neox() as i32,
                )
            }
            None => (0, 0, 0),
        };
        let ptrs = self.ptrs_at + 8 * (2 * self.n_seqs * layer) as u64;
        let (rows_at, caps_at) = (self.rows_at, self.caps_at);
        let (heads_i, nkv_i, hd_i) = (heads as i32, nkv as i32, hd as i32);
        let store = if self.f16 {
            &self.kernels.store_f16
        } else {
            &self.kernels.store_f32
        };
        let attend = if self.f16 {
            &self.kernels.attend_f16
        } else {
            &self.kernels.attend_f32
        };
        let width = (self.n_rows, heads * hd);
        let rotated = fill(&self.table, width, |out| {
            let cfg = LaunchConfig {
                grid_dim: (self.n_rows as u32, (heads + nkv) as u32, 1),
                block_dim: (hd as u32 / 2, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = stream.launch_builder(store);
            b.arg(&qa)
                .arg(&qs)
                .arg(&ka)
                .arg(&ks)
                .arg(&va)
                .arg(&vs)
                .arg(&out);
            b.arg(&rows_at).arg(&caps_at).arg(&ptrs).arg(&cos).arg(&sin);
            b.arg(&heads_i).arg(&nkv_i).arg(&hd_i).arg(&neox);
            // SAFETY: the arguments match `store_*`'s parameters in order and type; every address is of a
            // live buffer of this step (held by `self` or the callers' tensors), sized as the table says.
            unsafe { b.launch(cfg) }.map(|_| ()).map_err(launch_error)
        })?;
        let qr = address(&rotated, stream)?;
        let (scale, softcap, window) = (
            scoring.scale,
            scoring.softcap.unwrap_or(0.0),
            scoring.window.map_or(0, |w| w.min(i32::MAX as usize)) as i32,
        );
        fill(&self.table, width, |out| {
            let cfg = LaunchConfig {
                grid_dim: (self.n_rows as u32, heads as u32, 1),
                block_dim: (ATTEND_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = stream.launch_builder(attend);
            b.arg(&qr).arg(&out).arg(&rows_at).arg(&caps_at).arg(&ptrs);
            b.arg(&heads_i)
                .arg(&nkv_i)
                .arg(&hd_i)
                .arg(&scale)
                .arg(&softcap)
                .arg(&window);
            // SAFETY: as for `store` above; `rotated` (the queries) lives until this returns.
            unsafe { b.launch(cfg) }.map(|_| ()).map_err(launch_error)
        })
    }
}

fn launch_error(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("gpu attention launch: {e}"))
}

/// The address of `t`'s first element on its CUDA device (f32, f16 or i64).
fn address(t: &Tensor, stream: &CudaStream) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(s) = &*storage else {
        bail!("gpu attention: a tensor off the CUDA device");
    };
    let base = match t.dtype() {
        DType::F32 => s.as_cuda_slice::<f32>()?.device_ptr(stream).0,
        DType::F16 => s.as_cuda_slice::<half::f16>()?.device_ptr(stream).0,
        DType::I64 => s.as_cuda_slice::<i64>()?.device_ptr(stream).0,
        other => bail!("gpu attention: a {other:?} tensor"),
    };
    Ok(base + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
}

/// The address and row stride (in elements) of `t`, `[rows, width]` f32 with unit column stride.
fn rows_of(t: &Tensor, rows: usize, stream: &CudaStream) -> Result<(u64, i32)> {
    let stride = t.layout().stride().to_vec();
    if t.dtype() != DType::F32 || t.dims().len() != 2 || t.dim(0)? != rows || stride[1] != 1 {
        bail!(
            "gpu attention: rows of {:?} {:?} strides {stride:?}",
            t.dtype(),
            t.shape()
        );
    }
    Ok((address(t, stream)?, stride[0] as i32))
}

/// A new f32 tensor of `shape` on `anchor`'s device, written by `launch` (given its address) rather than
/// zeroed first.
fn fill(
    anchor: &Tensor,
    shape: (usize, usize),
    launch: impl Fn(u64) -> Result<()>,
) -> Result<Tensor> {
    anchor.apply_op1_no_bwd(&Fill {
        shape: shape.into(),
        launch,
    })
}

struct Fill<F> {
    shape: Shape,
    launch: F,
}

impl<F: Fn(u64) -> Result<()>> CustomOp1 for Fill<F> {
    fn name(&self) -> &'static str {
        "rill-gpu-attention"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("gpu attention on the CPU")
    }

    fn cuda_fwd(&self, s: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device().clone();
        // SAFETY: `launch` writes every element before anything reads the tensor (same stream).
        let out = unsafe { dev.alloc::<f32>(self.shape.elem_count())? };
        let addr = out.device_ptr(&dev.cuda_stream()).0;
        (self.launch)(addr)?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), self.shape.clone()))
    }
}

#[cfg(test)]
mod tests {
    /// The kernels compile, and define every function `Kernels::load` looks up: checked wherever the CUDA build
    /// is made (`scripts/gpu-build.sh` runs it), so a mistake in the source shows before a GPU is at hand.
    #[test]
    fn the_kernels_compile_without_a_gpu() {
        let ptx = super::compile().unwrap().to_src();
        for name in ["store_f32", "store_f16", "attend_f32", "attend_f16"] {
            assert!(ptx.contains(&format!(".entry {name}(")), "{name} missing");
        }
    }
}
