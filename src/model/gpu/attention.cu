// rill's batched attention on a CUDA device, compiled at load with NVRTC (no headers: f16 conversions are
// inline PTX).
//
// One step's rows (every new token of every sequence: single decoding tokens and prompt chunks alike) are
// described by a table of 64-bit integers the host uploads once per step:
//   rows[2 * r]      the row's sequence, in the step's order
//   rows[2 * r + 1]  the row's absolute position
//   caps[s]          positions allocated in sequence s's buffers (the stride between two kv heads)
//   ptrs[2 * s]      this layer's key buffer of sequence s, [kv_heads, caps[s], head_dim] of T
//   ptrs[2 * s + 1]  its value buffer
// Two kernels per layer: `store` rotates each row's query and key heads and writes its keys and values at its
// position; `attend` then computes each row's heads over its sequence's positions up to its own.

typedef long long i64;
typedef unsigned short f16;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const f16* p) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(*p));
    return f;
}
__device__ __forceinline__ void save(float* p, float x) { *p = x; }
__device__ __forceinline__ void save(f16* p, float x) {
    f16 h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(x));
    *p = h;
}

// grid (rows, heads + kv_heads), block (head_dim / 2): thread i handles the pair (i, i + d/2) (neox) or
// (2i, 2i + 1); rotated when `cos` is not null, with the tables' row at the token's position.
// Query heads go to q_out ([rows, heads * head_dim]); key and value heads into the caches.
template <typename T>
__device__ void store(const float* q, int q_stride, const float* k, int k_stride, const float* v,
                      int v_stride, float* q_out, const i64* rows, const i64* caps, const i64* ptrs,
                      const float* cos, const float* sin, int heads, int kv_heads, int head_dim,
                      int neox) {
    const int row = blockIdx.x, h = blockIdx.y, i = threadIdx.x, half = head_dim / 2;
    const i64 seq = rows[2 * row], pos = rows[2 * row + 1];
    const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
    const bool is_q = h < heads;
    const int kh = h - heads;
    const float* src = is_q ? q + (i64)row * q_stride + h * head_dim : k + (i64)row * k_stride + kh * head_dim;
    float x0 = src[a], x1 = src[b];
    if (cos != 0) {
        const float c = cos[pos * half + i], s = sin[pos * half + i];
        const float y0 = x0 * c - x1 * s, y1 = x0 * s + x1 * c;
        x0 = y0;
        x1 = y1;
    }
    if (is_q) {
        float* dst = q_out + (i64)row * heads * head_dim + h * head_dim;
        dst[a] = x0;
        dst[b] = x1;
        return;
    }
    const i64 at = ((i64)kh * caps[seq] + pos) * head_dim;
    T* kc = (T*)ptrs[2 * seq] + at;
    T* vc = (T*)ptrs[2 * seq + 1] + at;
    save(kc + a, x0);
    save(kc + b, x1);
    const float* vs = v + (i64)row * v_stride + kh * head_dim;
    save(vc + a, vs[a]);
    save(vc + b, vs[b]);
}

#define WARPS 4
#define MAX_LANE_DIMS 8  // head_dim up to 256

__device__ __forceinline__ float warp_max(float x) {
    for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float warp_sum(float x) {
    for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// grid (rows, heads), block (32 * WARPS). Each warp takes tiles of 32 positions in turn: a lane scores one
// position against the query, the warp keeps a running maximum and sum (online softmax), and each lane
// accumulates the values of the dimensions lane, lane + 32, ... Warps merge through shared memory at the end.
// Positions seen: from `pos + 1 - window` (window > 0) to `pos`; scores are scaled, then soft-capped when
// softcap > 0.
template <typename T>
__device__ void attend(const float* q, float* out, const i64* rows, const i64* caps, const i64* ptrs,
                       int heads, int kv_heads, int head_dim, float scale, float softcap, int window) {
    __shared__ float qs[32 * MAX_LANE_DIMS];
    __shared__ float wm[WARPS], wl[WARPS];
    __shared__ float wacc[WARPS][32 * MAX_LANE_DIMS];
    const int row = blockIdx.x, h = blockIdx.y, lane = threadIdx.x % 32, w = threadIdx.x / 32;
    const i64 seq = rows[2 * row], pos = rows[2 * row + 1];
    const int kh = h / (heads / kv_heads);
    const i64 first = window > 0 && pos + 1 > window ? pos + 1 - window : 0;
    const T* kb = (const T*)ptrs[2 * seq] + (i64)kh * caps[seq] * head_dim;
    const T* vb = (const T*)ptrs[2 * seq + 1] + (i64)kh * caps[seq] * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[((i64)row * heads + h) * head_dim + d];
    __syncthreads();

    float m = NEG_INF, l = 0.f, acc[MAX_LANE_DIMS];
    for (int j = 0; j < MAX_LANE_DIMS; j++) acc[j] = 0.f;
    for (i64 t0 = first + (i64)w * 32; t0 <= pos; t0 += 32 * WARPS) {
        const i64 p = t0 + lane;
        float s = NEG_INF;
        if (p <= pos) {
            const T* kr = kb + p * head_dim;
            float dot = 0.f;
            for (int d = 0; d < head_dim; d++) dot += qs[d] * load(kr + d);
            s = dot * scale;
            if (softcap > 0.f) s = tanhf(s / softcap) * softcap;
        }
        const float m_new = fmaxf(m, warp_max(s));
        const float corr = m == NEG_INF ? 0.f : expf(m - m_new);
        const float e = p <= pos ? expf(s - m_new) : 0.f;
        l = l * corr + warp_sum(e);
        for (int j = 0; j < MAX_LANE_DIMS; j++) acc[j] *= corr;
        const int n = pos - t0 + 1 < 32 ? (int)(pos - t0 + 1) : 32;
        for (int jj = 0; jj < n; jj++) {
            const float ej = __shfl_sync(0xffffffffu, e, jj);
            const T* vr = vb + (t0 + jj) * head_dim;
            for (int j = 0; j < MAX_LANE_DIMS; j++) {
                const int d = lane + 32 * j;
                if (d < head_dim) acc[j] += ej * load(vr + d);
            }
        }
        m = m_new;
    }
    if (lane == 0) {
        wm[w] = m;
        wl[w] = l;
    }
    for (int j = 0; j < MAX_LANE_DIMS; j++) {
        const int d = lane + 32 * j;
        if (d < head_dim) wacc[w][d] = acc[j];
    }
    __syncthreads();
    float mx = NEG_INF;
    for (int x = 0; x < WARPS; x++) mx = fmaxf(mx, wm[x]);
    float total = 0.f, f[WARPS];
    for (int x = 0; x < WARPS; x++) {
        f[x] = wm[x] == NEG_INF ? 0.f : expf(wm[x] - mx);
        total += wl[x] * f[x];
    }
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float y = 0.f;
        for (int x = 0; x < WARPS; x++) y += wacc[x][d] * f[x];
        out[((i64)row * heads + h) * head_dim + d] = y / total;
    }
}

#define STORE(NAME, T)                                                                                        \
    extern "C" __global__ void NAME(const float* q, int q_stride, const float* k, int k_stride,              \
                                    const float* v, int v_stride, float* q_out, const i64* rows,              \
                                    const i64* caps, const i64* ptrs, const float* cos, const float* sin,     \
                                    int heads, int kv_heads, int head_dim, int neox) {                        \
        store<T>(q, q_stride, k, k_stride, v, v_stride, q_out, rows, caps, ptrs, cos, sin, heads, kv_heads,   \
                 head_dim, neox);                                                                             \
    }
STORE(store_f32, float)
STORE(store_f16, f16)

#define ATTEND(NAME, T)                                                                                       \
    extern "C" __global__ void NAME(const float* q, float* out, const i64* rows, const i64* caps,             \
                                    const i64* ptrs, int heads, int kv_heads, int head_dim, float scale,      \
                                    float softcap, int window) {                                              \
        attend<T>(q, out, rows, caps, ptrs, heads, kv_heads, head_dim, scale, softcap, window);               \
    }
ATTEND(attend_f32, float)
ATTEND(attend_f16, f16)
