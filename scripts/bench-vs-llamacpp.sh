#!/usr/bin/env bash
# Single-stream speed, rill against llama.cpp (PyPI llama-cpp-python) on the same SmolLM2 Q4_1 GGUF, the same
# chat prompt (identical token ids, checked by tests/smollm2_golden.rs) and the same thread count. Rounds
# alternate between the two so that drifting memory bandwidth or a busy neighbour hits both alike; medians are
# printed. Greedy decoding with EOS ignored, so both generate exactly TOKENS tokens.
#
#   scripts/bench-vs-llamacpp.sh                 # ROUNDS=5 THREADS=2 TOKENS=128 by default
#   ROUNDS=9 THREADS=1 scripts/bench-vs-llamacpp.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-128}
USER_MSG="What is the capital of France?"
VENV=.venv-llamacpp

scripts/fetch-models.sh smollm2 >/dev/null
cargo build --release --locked --quiet
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "installing llama-cpp-python into $VENV (builds llama.cpp from source, ~15-20 min on 2 cores)"
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy jinja2
fi

rill_round() {
  ./target/release/rill generate --model smollm2 --chat --prompt "$USER_MSG" --temperature 0 --ignore-eos \
    --max-tokens "$TOKENS" --threads "$THREADS" 2>&1 >/dev/null | tail -n 1 |
    sed -E 's/.*TTFT ([0-9.]+) ms; ([0-9.]+) tok\/s.*/\1 \2/'
}

llama_round() {
  "$VENV/bin/python" scripts/llamacpp_round.py --threads "$THREADS" --tokens "$TOKENS" --user "$USER_MSG"
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  read -r rt rd <<<"$(rill_round)"
  read -r lt ld <<<"$(llama_round)"
  echo "round $r: rill TTFT ${rt} ms, ${rd} tok/s | llama.cpp prompt ${lt} ms, ${ld} tok/s"
  echo "$rt $rd $lt $ld" >>"$results"
done
python3 - "$results" "$THREADS" "$TOKENS" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [statistics.median(c) for c in zip(*rows)]
print(f"\nmedians of {len(rows)} rounds, {sys.argv[2]} threads, {sys.argv[3]} generated tokens")
print(f"{'':10} {'first token / prompt (ms)':>26} {'decode tok/s':>14}")
print(f"{'rill':10} {med[0]:>26.1f} {med[1]:>14.1f}")
print(f"{'llama.cpp':10} {med[2]:>26.1f} {med[3]:>14.1f}")
print("rill's first-token time also counts its first forward in a fresh process and the first sampling step;")
print("llama.cpp's is its prompt evaluation after a warm-up round.")
PY
