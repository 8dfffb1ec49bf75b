#!/usr/bin/env bash
# Batched decode on an AVX2-only CPU, measured on any x86-64 machine: eight concurrent HTTP streams against one,
# SmolLM2 Q4_1, the way an AVX2-only machine runs rill.
#
# Capping the kernels at run time (RILL_KERNELS=avx2) is not enough on an AVX-512 machine: the normal build
# (`-C target-cpu=native`) then compiles the AVX2 kernels with AVX-512's 32 vector registers, where an AVX2-only
# CPU has 16, and the eight-row kernels spill there. So this script builds rill for x86-64-v3 (AVX2, FMA, F16C,
# no AVX-512) into target-v3/, serves with the kernels capped at AVX2, and runs `rill bench` at 1 and 8 clients,
# ROUNDS times; it prints each round and the medians.
#
#   scripts/bench-avx2.sh            # ROUNDS=5 TOKENS=128
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$RILL_ROOT"

ROUNDS="${ROUNDS:-5}"
TOKENS="${TOKENS:-128}"
GGUF=models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
[[ -f "$GGUF" ]] || die "$GGUF is missing: run scripts/fetch-models.sh"

log "building rill for x86-64-v3 into target-v3/ (a first build takes ~5-15 min)"
CARGO_TARGET_DIR="$RILL_ROOT/target-v3" RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release --quiet --bin rill
RILL=target-v3/release/rill

trap stop_rill_server EXIT
OUT="$(mktemp)"
for ((r = 0; r < ROUNDS; r++)); do
  # A fresh server each round, so that every round starts from the same state.
  RILL_KERNELS=avx2 start_rill_server "$RILL" serve --model "$GGUF" --host 127.0.0.1 --port 0
  "$RILL" bench --url "$URL" --concurrency 1,8 --rounds 3 --max-tokens "$TOKENS" --ignore-eos |
    awk -v r="$r" '$1 == "1" || $1 == "8" { print r, $1, $4, $5 }' >>"$OUT"
  stop_rill_server
  RILL_SERVER_PID=""
  log "round $((r + 1))/$ROUNDS: $(awk -v r="$r" '$1 == r { printf "%s clients %s tok/s  ", $2, $3 }' "$OUT")"
done

python3 - "$OUT" <<'PY'
import collections, statistics, sys
agg, ttft = collections.defaultdict(dict), collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, c, tok_s, t = line.split()
    agg[int(r)][int(c)], ttft[int(r)][int(c)] = float(tok_s), float(t)
ratios = [a[8] / a[1] for a in agg.values() if 1 in a and 8 in a]
med = lambda c, d: statistics.median(v[c] for v in d.values())
print("AVX2 build, kernels capped at AVX2; SmolLM2 Q4_1 over HTTP; medians of", len(ratios), "rounds")
print(f"1 client: {med(1, agg):.1f} tok/s (TTFT p50 {med(1, ttft):.0f} ms)")
print(f"8 clients: {med(8, agg):.1f} tok/s aggregate (TTFT p50 {med(8, ttft):.0f} ms)")
print("8 / 1 per round:", " ".join(f"{x:.2f}" for x in ratios), f"; median {statistics.median(ratios):.2f}x")
PY
rm -f "$OUT"
