#!/usr/bin/env bash
# The GPU check: run on a GPU machine (no network, no Rust; python3 with numpy, torch and transformers) from the
# repository root, with gpu-dist/ (from scripts/gpu-build.sh) and models/gpt2-tokenizer/ carried beside it (both
# are ignored by git: name them in the device tool's `carry`; together about 22 MB).
#
#   scripts/gpu-check.sh              # everything below; one log: $OUT/gpu-check.log
#   GPU_CHECK_ONLY=parity,bench scripts/gpu-check.sh
#
# Steps, in the order they run (each bounded by `timeout`; a failing step is logged and the others still run;
# the log is written as it goes, so a run cut off by the device's time limit still returns what it finished,
# and the order puts the issue's table before the wider checks):
#   facts     nvidia-smi, CPU, library paths, ldd of the binaries
#   fixtures  GPT-2 124M-shaped checkpoint, every architecture's tiny checkpoint (HF f32 + GGUF), and a
#             SmolLM2-135M-shaped Q4_1 GGUF with random weights (from gpu-dist/smollm2-skeleton.gguf.xz)
#   parity    CPU against the GPU (scripts/gpu_parity.py): greedy ids, identical required for f32 checkpoints
#             (sequential and concurrent, i.e. batched, answers), and teacher-forced agreement. First the benched
#             paths: GPT-2 124M and SmolLM2, each also with CUDA graphs (`RILL_GPU_GRAPHS=1`)
#   bench     `rill bench` at 1/8/64 clients against `rill serve --device cuda`; the same with CUDA graphs
#             (`RILL_GPU_GRAPHS=1`, opt-in), with candle's per-sequence attention (`RILL_GPU_ATTENTION=0`, only when
#             GPU_CHECK_CANDLE_ATTENTION is set) and, for SmolLM2, with its weights kept quantized
#             (`RILL_GPU_WEIGHTS=quant`), and GPT-2 with bf16 weights (`--dtype bf16`), each followed by the
#             server's time per step (/metrics); HF transformers `generate` on the same checkpoint
#   ttft      first-request TTFT of a fresh server with the kernel cache off, against warm requests (prompts of
#             their own: no prefix-cache hits)
#   parity    (second part) every architecture's f32 folder, llama-wide in Q4_0, Q4_1, Q8_0, Q4_K_M and Q6_K
#             (every mix and each family's Q8_0 too with GPU_CHECK_ALL_WEIGHTS=1), and an f16 KV cache
#             (`--kv-dtype f16`, on both sides)
#   decode    `cargo bench`'s decode bench (CPU and GPU side by side)
#   http      (only when named) the two HTTP benches of `bench` at the defaults
# Every check on the device also requires that the server ran rill's own GPU paths: its log must show the
# batched attention kernels loaded, and no failed CUDA graph capture where graphs were on (a silent fallback to
# candle's path would pass every comparison while checking nothing new).
# The summary lines start with PARITY, TTFT, BENCH, STEPS and HF; FAILED lines name the steps that failed.
#
# Knobs: GPU_CHECK_DEVICE (cuda; `cpu` rehearses the script on a machine without a GPU), GPU_CHECK_PARITY (a
# regular expression: only the parity checks whose names match), GPU_CHECK_ALL_WEIGHTS, GPU_CHECK_BIN (a
# folder with `rill` and `decode-bench` instead of gpu-dist/), GPU_CHECK_ONLY (comma-separated steps),
# GPU_CHECK_TOKENS (tokens per stream for `rill bench` and transformers, 128).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-check-out}"
mkdir -p "$OUT"
LOG="$OUT/gpu-check.log"
exec > >(tee "$LOG") 2>&1
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
ONLY="${GPU_CHECK_ONLY:-facts,fixtures,parity,ttft,bench,decode}"
TOKENS="${GPU_CHECK_TOKENS:-128}"
WORK="$(mktemp -d -t rill-gpu-check.XXXXXX)"
PIDS=()
FAILED=()
T0=$SECONDS

say() { printf '[gpu-check %4ss] %s\n' "$((SECONDS - T0))" "$*"; }
wants() { [[ ",$ONLY," == *",$1,"* ]]; }
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  # Only the servers: a bare `wait` would also wait for the `tee` of the log, which waits for this script.
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
# step NAME SECONDS CMD...: runs CMD under a time limit, its output lines prefixed with $PREFIX when set; a
# failure is logged and remembered.
step() {
  local name="$1" limit="$2"
  shift 2
  say "--- $name"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | sed "s/^/${PREFIX:-}/"
  local rc=${PIPESTATUS[0]}
  [[ $rc -eq 0 ]] || { say "FAILED $name (exit $rc)"; FAILED+=("$name"); }
  return $rc
}

# --- binaries and libraries ----------------------------------------------------------------------------------
BIN="${GPU_CHECK_BIN:-}"
if [[ -z "$BIN" ]]; then
  BIN="$WORK/bin"
  mkdir -p "$BIN"
  for b in rill decode-bench; do
    # python's lzma rather than xz, which a GPU machine may lack
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "gpu-dist/$b.xz" "$BIN/$b" || { say "gpu-dist/$b.xz missing: run scripts/gpu-build.sh first"; exit 1; }
    chmod +x "$BIN/$b"
  done
fi
RILL="$BIN/rill"
# The CUDA runtime libraries the binaries link (libcudart.so.13, libcublas.so.13, libcurand.so.10, libnvrtc.so.13)
# come with the torch there: every folder of python's nvidia packages that holds one.
LIBS="$(python3 - <<'EOF'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
want = ("libcudart.so.13", "libcublas.so.13", "libcurand.so.10", "libnvrtc.so.13", "libcublasLt.so.13")
dirs = []
for r in roots:
    for w in want:
        for f in glob.glob(os.path.join(r, "nvidia", "**", w), recursive=True):
            d = os.path.dirname(f)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
EOF
)"
export LD_LIBRARY_PATH="${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# serve NAME MODEL DEVICE [FLAGS...]: starts `rill serve` on 127.0.0.1, waits for /health 200, sets URL.
serve() {
  local name="$1" model="$2" device="$3"
  shift 3
  local log="$OUT/serve-$name-$device.log"
  RILL_LOG=info "$RILL" serve --model "$model" --device "$device" --host 127.0.0.1 --port 0 "$@" >"$log" 2>&1 &
  PIDS+=($!)
  SERVER_PID=$!
  URL="$(python3 - "$log" "$SERVER_PID" <<'EOF'
import os, re, sys, time, urllib.request
log, pid = sys.argv[1], int(sys.argv[2])
for _ in range(1800):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("exited early")
    m = re.search(r"^rill listening on (http:\S+)$", open(log).read(), re.M)
    if m:
        try:
            if urllib.request.urlopen(m.group(1) + "/health", timeout=2).status == 200:
                print(m.group(1)); sys.exit(0)
        except Exception:
            pass
    time.sleep(0.1)
sys.exit("not ready in 180 s")
EOF
)" || { say "rill serve $name on $device did not start:"; tail -n 20 "$log"; return 1; }
}
stop() { kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
# paths_ran NAME: the device server just used ran rill's own GPU paths, not a silent fallback to candle's (which
# would pass every comparison while checking nothing new): its log must say the batched attention kernels
# loaded (unless RILL_GPU_ATTENTION=0 asked for candle's), and with RILL_GPU_GRAPHS=1 no capture may have failed.
paths_ran() {
  [[ "$DEVICE" == cpu ]] && return 0
  local log="$OUT/serve-${1#parity-}-$DEVICE.log"
  [[ "$1" == http-* ]] && log="$OUT/serve-bench-${1#http-}-$DEVICE.log"
  if [[ "${RILL_GPU_ATTENTION:-1}" != 0 ]] && ! grep -q "kernels compiled and loaded" "$log"; then
    say "FAILED $1: the batched attention kernels did not load:"; grep -m3 "unavailable" "$log"
    FAILED+=("$1-kernels")
  fi
  if [[ "${RILL_GPU_GRAPHS:-}" == 1 ]] && grep -q "CUDA graph capture failed" "$log"; then
    say "FAILED $1: a CUDA graph capture failed:"; grep -m3 "capture failed" "$log"
    FAILED+=("$1-graphs")
  fi
}

# --- facts -----------------------------------------------------------------------------------------------------
if wants facts; then
  say "--- facts"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' || true
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  cat gpu-dist/BUILD 2>/dev/null || true
  ldd "$RILL" | grep -E "cuda|cublas|curand|nvrtc|not found" || true
fi

# --- fixtures --------------------------------------------------------------------------------------------------
if wants fixtures; then
  step fixtures-gpt2 120 python3 scripts/make-fixtures.py --bench-model
  step fixtures-arch 240 python3 scripts/make-arch-fixtures.py --quantize "$RILL"
  if [[ ! -f models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf ]]; then
    step fixtures-smollm2 60 python3 scripts/gguf-random.py fill gpu-dist/smollm2-skeleton.gguf.xz \
      models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
  fi
fi

# --- parity ----------------------------------------------------------------------------------------------------
# parity NAME MODEL EXACT [FLAGS...]: the same model on the CPU and on the device, compared; EXACT is --exact
# (greedy ids must be identical) or -.
parity() {
  local name="$1" model="$2" exact="$3"
  shift 3
  [[ -e "$model" ]] || { say "parity-$name: skipped, $model is missing"; return; }
  [[ -z "${GPU_CHECK_PARITY:-}" || "$name" =~ ${GPU_CHECK_PARITY:-} ]] || return 0
  serve "$name" "$model" cpu "$@" || { FAILED+=("parity-$name"); return; }
  local ref="$URL" ref_pid="$SERVER_PID"
  serve "$name" "$model" "$DEVICE" "$@" || { FAILED+=("parity-$name"); kill "$ref_pid"; return; }
  local flags=()
  [[ "$exact" == --exact ]] && flags=(--exact)
  step "parity-$name" 120 python3 scripts/gpu_parity.py --name "$name" --ref "$ref" --test "$URL" "${flags[@]}"
  paths_ran "parity-$name"
  stop
  kill "$ref_pid" 2>/dev/null; wait "$ref_pid" 2>/dev/null
}
# The parity checks in two parts: the paths the bench's figures stand on (GPT-2 and SmolLM2, with and without
# CUDA graphs) before the bench, every other architecture and weight type after it, so that a run cut short by
# its time limit still has the table.
parity_core() {
  say "--- parity: CPU against $DEVICE (the benched paths)"
  parity gpt2-124m models/gpt2-124m-shape --exact
  parity smollm2-q4_1 models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf -
  # CUDA graphs, whose first run failed on batched steps (the concurrent answers are batched steps).
  export RILL_GPU_GRAPHS=1
  parity gpt2-124m-graphs models/gpt2-124m-shape --exact
  parity smollm2-q4_1-graphs models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf -
  unset RILL_GPU_GRAPHS
}
parity_rest() {
  say "--- parity: CPU against $DEVICE (every architecture, weight type and the f16 KV cache)"
  parity tiny-gpt2 models/tiny-gpt2 --exact
  for dir in models/arch/*/; do
    fam="$(basename "$dir")"
    [[ -f "$dir/config.json" ]] || continue
    extra=()
    [[ "$fam" == phi3-long ]] && extra=(--ctx-size 256)
    parity "$fam" "$dir" --exact "${extra[@]}"
    [[ -n "${GPU_CHECK_ALL_WEIGHTS:-}" && -f "models/arch/$fam-q8_0.gguf" ]] &&
      parity "$fam-q8_0" "models/arch/$fam-q8_0.gguf" - "${extra[@]}"
  done
  # The weight types the models rill serves come in, on one model (every mix with GPU_CHECK_ALL_WEIGHTS).
  for f in models/arch/llama-wide-*.gguf; do
    mix="$(basename "$f" .gguf)"
    mix="${mix#llama-wide-}"
    [[ -n "${GPU_CHECK_ALL_WEIGHTS:-}" || " q4_0 q4_1 q8_0 q4_k_m q6_k " == *" $mix "* ]] || continue
    parity "llama-wide-$mix" "$f" -
  done
  parity gpt2-124m-kv-f16 models/gpt2-124m-shape - --kv-dtype f16
  parity smollm2-q4_1-kv-f16 models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf - --kv-dtype f16
}
wants parity && parity_core

# --- ttft ------------------------------------------------------------------------------------------------------
# First request of a fresh process (the kernel cache off, so every kernel compiles as on a new machine) against
# warm ones; the load time includes the warm-up. Every request's prompt starts with another word, so no warm
# request finds its prompt in the prefix cache (a hit would skip the prefill the first request paid for), and the
# client makes one request of its own first, so its own first-use costs are not counted. Client-side times, then
# the server's own (submission to first token, from its log).
ttft() {
  local name="$1" model="$2" t0=$SECONDS
  [[ -e "$model" ]] || { say "ttft-$name: skipped, $model is missing"; return; }
  CUDA_CACHE_DISABLE=1 serve "ttft-$name" "$model" "$DEVICE" || { FAILED+=("ttft-$name"); return; }
  local ready=$((SECONDS - t0))
  python3 - "$URL" "$name" "$ready" "$OUT/serve-ttft-$name-$DEVICE.log" <<'EOF'
import json, re, statistics, sys, time, urllib.request
url, name, ready, log = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def first_token(word):
    body = {"prompt": word + " quick brown fox jumps over the lazy dog", "max_tokens": 8, "temperature": 0,
            "stream": True}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as r:
        for line in r:
            if line.startswith(b"data: ") and b'"text"' in line:
                t = time.perf_counter() - t0
                for _ in r:
                    pass
                return t
urllib.request.urlopen(url + "/v1/models", timeout=10).read()
first = first_token("The")
warm = statistics.median(first_token(w) for w in ("A", "One", "This", "Her", "Every"))
time.sleep(0.2)
served = [float(v) for v in re.findall(r"ttft_ms=([0-9.]+)", open(log).read())]
print(f"TTFT {name}: ready after {ready} s; first request {first * 1e3:.1f} ms, warm {warm * 1e3:.1f} ms "
      f"({first / warm:.2f}x); in the server {served[0]:.1f} ms against {statistics.median(served[1:]):.1f} ms "
      f"({served[0] / statistics.median(served[1:]):.2f}x)")
EOF
  [[ $? -eq 0 ]] || FAILED+=("ttft-$name")
  stop
}

# --- bench -----------------------------------------------------------------------------------------------------
# http NAME MODEL [FLAGS...]: `rill bench` at 1, 8 and 64 clients against `rill serve --device $DEVICE FLAGS`.
http() {
  local name="$1" model="$2"
  shift 2
  serve "bench-$name" "$model" "$DEVICE" --max-running 64 --queue-size 256 "$@" ||
    { FAILED+=("http-$name"); return; }
  PREFIX="BENCH $name " step "http-$name" 120 "$RILL" bench --url "$URL" --concurrency 1,8,64 --rounds 1 \
    --max-tokens "$TOKENS" --ignore-eos
  step_times "$name"
  paths_ran "http-$name"
  stop
}
# step_times NAME: the server's step counters (/metrics) over everything it ran: time per step in the forward
# pass (logits to the host included) and in the whole step (sampling and emission too).
step_times() {
  python3 - "$URL" "$1" <<'EOF'
import re, sys, urllib.request
url, name = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
def value(metric):
    m = re.search(r"^" + metric + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")
steps = value("rill_steps_total")
fwd, whole = value("rill_step_forward_microseconds_total"), value("rill_step_microseconds_total")
rows = value("rill_batch_size_sum")
print(f"STEPS {name}: {steps:.0f} steps, {rows / steps:.1f} sequences per step, forward {fwd / steps / 1e3:.2f} ms "
      f"and whole step {whole / steps / 1e3:.2f} ms per step")
EOF
}

if wants bench; then
  say "--- rill bench over HTTP on $DEVICE"
  http gpt2-124m models/gpt2-124m-shape
  http smollm2-q4_1 models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
  say "--- the same with CUDA graphs, with candle's per-sequence attention, and with SmolLM2's weights quantized"
  export RILL_GPU_GRAPHS=1
  http gpt2-124m-graphs models/gpt2-124m-shape
  http smollm2-q4_1-graphs models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
  unset RILL_GPU_GRAPHS
  if [[ -n "${GPU_CHECK_CANDLE_ATTENTION:-}" ]]; then
    export RILL_GPU_ATTENTION=0
    http gpt2-124m-candle-attention models/gpt2-124m-shape
    http smollm2-q4_1-candle-attention models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
    unset RILL_GPU_ATTENTION
  fi
  export RILL_GPU_WEIGHTS=quant
  http smollm2-q4_1-quantized-weights models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
  unset RILL_GPU_WEIGHTS
  http gpt2-124m-bf16-weights models/gpt2-124m-shape --dtype bf16
  say "--- HF transformers generate on $DEVICE, same checkpoint"
  PREFIX="HF " step hf-generate 180 python3 scripts/hf-generate-bench.py models/gpt2-124m-shape --device "$DEVICE" \
    --batch 1,64 --dtype f32,bf16 --tokens "$TOKENS"
fi
# Only the two HTTP benches at the defaults (not in the default steps).
if wants http; then
  http gpt2-124m models/gpt2-124m-shape
  http smollm2-q4_1 models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
fi
if wants ttft; then
  say "--- ttft on $DEVICE"
  ttft gpt2-124m models/gpt2-124m-shape
  ttft smollm2-q4_1 models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
fi
wants parity && parity_rest
if wants decode; then
  say "--- decode bench (CPU and $DEVICE side by side)"
  RILL_BENCH_ROUNDS=1 PREFIX="BENCH decode " step decode-bench 240 "$BIN/decode-bench" --bench
fi

say "done in $((SECONDS - T0)) s; log: $LOG"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  say "FAILED steps: ${FAILED[*]}"
  exit 1
fi
