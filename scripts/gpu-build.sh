#!/usr/bin/env bash
# Builds rill's CUDA binaries on a machine with no GPU and no CUDA toolkit, ready to carry to a GPU machine.
#
#   scripts/gpu-build.sh            # rill + the decode bench, for compute capability 90 (H100 / H200)
#   CUDA_COMPUTE_CAP=80 scripts/gpu-build.sh
#
# The compiler, headers and libraries come from pip, pinned to CUDA 13.0 so that the PTX in the binary is not
# newer than a CUDA 13.0 driver can compile (`.venv-cuda/`, ~1.2 GB). cudarc links the driver library
# `libcuda.so.1`, which only a GPU machine has: the link uses a stub made here from cudarc's own list of driver
# functions, and the stub is never shipped (the driver's library is found at run time).
#
# Output, in gpu-dist/ (ignored by git; carry it to the GPU machine):
#   rill.xz, decode-bench.xz     stripped, xz-compressed binaries (x86-64-v3, so they run on any recent CPU;
#                                rill's kernels still pick AVX-512 at run time)
#   smollm2-skeleton.gguf.xz     the SmolLM2 GGUF's header and tensor table without the weights, which
#                                scripts/gguf-random.py fills with random weights there
#   BUILD                        commit, compute capability and compiler versions
# Then run scripts/gpu-check.sh on the GPU machine.
#
# Time on 2 cores: about 50 minutes for a first build (most of it candle's CUDA kernels), minutes after that.
# Needs: python3 (venv + pip), cargo, gcc, xz.
set -euo pipefail

# shellcheck source=scripts/_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$RILL_ROOT"
need python3 cargo gcc xz strip

CAP="${CUDA_COMPUTE_CAP:-90}"
VENV="$RILL_ROOT/.venv-cuda"
TARGET="$RILL_ROOT/target-cuda"
DIST="$RILL_ROOT/gpu-dist"
PKGS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88
      nvidia-nvvm==13.0.88 nvidia-cublas==13.0.0.19 nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.48)

# --- the toolkit, from pip -----------------------------------------------------------------------------------
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet "${PKGS[@]}"
CU="$("$VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
[[ -x "$CU/bin/nvcc" ]] || die "nvcc not found under $CU"

# --- a CUDA_HOME cudarc and candle's kernel build understand ---------------------------------------------------
HOME_DIR="$TARGET/cuda-home"
mkdir -p "$HOME_DIR/lib64"
ln -sfn "$CU/include" "$HOME_DIR/include"
ln -sfn "$CU/bin" "$HOME_DIR/bin"
ln -sfn "$CU/nvvm" "$HOME_DIR/nvvm"
for lib in cudart cublas cublasLt nvrtc curand; do
  real="$(ls "$CU/lib/lib$lib.so."* | grep -v builtins | grep -v '\.alt\.' | head -n1)"
  [[ -n "$real" ]] || die "lib$lib.so not found under $CU/lib"
  ln -sfn "$real" "$HOME_DIR/lib64/lib$lib.so"
done

# The driver stub: every cu* function cudarc's driver bindings declare, as an empty function, under the
# driver's soname. It satisfies the linker only.
CUDARC_SRC="$(cargo metadata --format-version 1 --features cuda 2>/dev/null \
  | python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"))' \
  | xargs dirname)"
grep -o 'pub unsafe fn cu[A-Za-z0-9_]*' "$CUDARC_SRC/src/driver/sys/mod.rs" | awk '{print "void " $4 "(void) {}"}' \
  | sort -u >"$HOME_DIR/libcuda-stub.c"
[[ -s "$HOME_DIR/libcuda-stub.c" ]] || die "no driver functions found in $CUDARC_SRC"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$HOME_DIR/lib64/libcuda.so" "$HOME_DIR/libcuda-stub.c"

# --- build -----------------------------------------------------------------------------------------------------
export PATH="$CU/bin:$PATH" NVCC="$CU/bin/nvcc" CUDA_HOME="$HOME_DIR" CUDA_PATH="$HOME_DIR" \
  CUDA_COMPUTE_CAP="$CAP" CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}" \
  CARGO_TARGET_DIR="$TARGET" RUSTFLAGS="-C target-cpu=x86-64-v3"
log "building rill (--features cuda, compute capability $CAP) into $TARGET"
cargo build --release --features cuda --bin rill
log "checking that the attention kernels compile (NVRTC needs no GPU; the driver stub is never called)"
mkdir -p "$HOME_DIR/stub"
ln -sfn ../lib64/libcuda.so "$HOME_DIR/stub/libcuda.so.1"
LD_LIBRARY_PATH="$CU/lib:$HOME_DIR/stub" cargo test --release --features cuda --lib model::gpu::cuda::tests
log "building the decode bench"
bench_exe="$(cargo bench --features cuda --bench decode --no-run --message-format=json-render-diagnostics \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "decode" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$bench_exe" ]] || die "the decode bench was not built"

# --- package ---------------------------------------------------------------------------------------------------
mkdir -p "$DIST"
rm -f "$DIST"/*.xz
strip -o "$DIST/rill" "$TARGET/release/rill"
strip -o "$DIST/decode-bench" "$bench_exe"
xz -9 -T2 -f "$DIST/rill" "$DIST/decode-bench"
SMOL="models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf"
[[ -f "$SMOL" ]] || scripts/fetch-models.sh smollm2
python3 scripts/gguf-random.py skeleton "$SMOL" "$DIST/smollm2-skeleton.gguf"
xz -9 -f "$DIST/smollm2-skeleton.gguf"
{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
  echo "compute capability $CAP"
  echo "nvcc $("$NVCC" --version | tail -n1)"
  echo "built $(date -u +%FT%TZ)"
} >"$DIST/BUILD"
log "done: $(du -sh "$DIST" | cut -f1) in $DIST"
ls -l "$DIST"
