#!/usr/bin/env bash
# Decode speed on a busy machine: SmolLM2 Q4_1 single-stream decode, rill against llama.cpp (PyPI
# llama-cpp-python, same GGUF, same threads), quiet and beside 1 and 2 busy-looping processes, plus rill with
# --threads 1 and rill's 8-stream aggregate (cargo bench's decode bench). Every round runs every condition and,
# within it, every contender in turn, ROUNDS times, so drift hits all alike; medians are printed as a table.
#
#   scripts/bench-contention.sh            # ROUNDS=3 TOKENS=128 THREADS=2
#
# The busy loops are plain shell loops, each bounded by `timeout`, and killed by PID when their condition ends
# (and on exit). Needs the release binary and bench (built here), and .venv-llamacpp (made on first use, like
# scripts/bench-vs-llamacpp.sh: llama.cpp builds from source, ~15-25 min on 2 cores).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$RILL_ROOT"

ROUNDS="${ROUNDS:-3}"
TOKENS="${TOKENS:-128}"
THREADS="${THREADS:-2}"
VENV=.venv-llamacpp
GGUF=models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
[[ -f "$GGUF" ]] || die "$GGUF is missing: run scripts/fetch-models.sh"

if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  log "installing llama-cpp-python into $VENV (builds llama.cpp from source, ~15-25 min on 2 cores)"
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy jinja2
fi
cargo build --release --quiet
BENCH="$(cargo bench --bench decode --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "decode" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$BENCH" ]] || die "could not build the decode bench"

HOGS=()
stop_hogs() {
  local pid
  for pid in "${HOGS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${HOGS[@]}"; do wait "$pid" 2>/dev/null || true; done
  HOGS=()
}
trap stop_hogs EXIT
start_hogs() {
  local i
  for ((i = 0; i < $1; i++)); do
    timeout 900 sh -c 'while :; do :; done' &
    HOGS+=("$!")
  done
}

PROMPT="Write a long story about a river."
rill_x1() { # rill generate's own timing line: "[... ; N tok/s; ...]"
  target/release/rill generate --model smollm2 --threads "$1" --prompt "$PROMPT" --chat --temperature 0 \
    --max-tokens "$TOKENS" --ignore-eos 2>&1 >/dev/null | sed -n 's/.*; \([0-9.]*\) tok\/s;.*/\1/p' | tail -n1
}
llama_x1() {
  "$VENV/bin/python" scripts/llamacpp_round.py --threads "$THREADS" --tokens "$TOKENS" \
    --user "$PROMPT" | cut -d' ' -f2
}
rill_x8() {
  RILL_THREADS="$THREADS" RILL_BENCH_MODELS=smollm2 RILL_BENCH_ROUNDS=1 RILL_BENCH_TOKENS=64 "$BENCH" --bench 2>&1 |
    sed -n 's/^smollm2 *cpu *decode x8 *\([0-9.]*\).*/\1/p'
}

OUT="$(mktemp)"
# Each round visits every condition in turn (quiet, one, two busy processes), so that this VM's drift over the
# run falls on all conditions alike and the share-of-quiet column compares like with like.
for ((r = 0; r < ROUNDS; r++)); do
  for cond in 0 1 2; do
    start_hogs "$cond"
    sleep 1
    echo "$cond rill $(rill_x1 "$THREADS")" >>"$OUT"
    echo "$cond llama $(llama_x1)" >>"$OUT"
    echo "$cond rill-t1 $(rill_x1 1)" >>"$OUT"
    echo "$cond rill-x8 $(rill_x8)" >>"$OUT"
    stop_hogs
  done
  log "round $((r + 1))/$ROUNDS done"
done

python3 - "$OUT" "$THREADS" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    cond, who, v = line.split()
    runs[(int(cond), who)].append(float(v))
med = {k: statistics.median(v) for k, v in runs.items()}
print(f"SmolLM2 Q4_1 decode tok/s, {sys.argv[2]} threads unless noted; medians")
print("| busy processes | rill x1 | llama.cpp x1 | rill / llama.cpp | rill x1, % of quiet | rill --threads 1 | rill x8 aggregate |")
print("|---|---|---|---|---|---|---|")
for c in (0, 1, 2):
    r, l = med[(c, "rill")], med[(c, "llama")]
    print(f"| {c} | {r:.1f} | {l:.1f} | {r / l:.2f}x | {100 * r / med[(0, 'rill')]:.0f}% | "
          f"{med[(c, 'rill-t1')]:.1f} | {med[(c, 'rill-x8')]:.1f} |")
PY
rm -f "$OUT"
