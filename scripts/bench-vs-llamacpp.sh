#!/usr/bin/env bash
# Single-stream speed, rill against llama.cpp (PyPI llama-cpp-python) on the same SmolLM2 Q4_1 GGUF, the same
# chat prompt (identical token ids, checked by tests/smollm2_golden.rs) and the same thread count. Rounds
# alternate between the two so that drifting memory bandwidth or a busy neighbour hits both alike; medians are
# printed. Greedy decoding with EOS ignored, so both generate exactly TOKENS tokens.
#
#   scripts/bench-vs-llamacpp.sh                 # ROUNDS=5 THREADS=2 TOKENS=128 by default
#   ROUNDS=9 THREADS=1 scripts/bench-vs-llamacpp.sh
#   MODEL=models/arch/llama-bench-q4_k_m.gguf PROMPT_FILE=tests/fixtures/fidelity-corpus.txt PROMPT_CHARS=2000 \
#     scripts/bench-vs-llamacpp.sh               # another GGUF, a raw (template-free) long prompt
#
# `servers` mode measures the two HTTP servers instead, with `rill bench` as the client: `rill serve` and
# llama-cpp-python's OpenAI server on the same GGUF and thread count, one after the other (never both running),
# each at the concurrency levels LEVELS (default 1,4) with BENCH_ROUNDS requests per client (default 2), greedy,
# TOKENS tokens per request with EOS ignored (checked through a non-streaming request's usage: llama-cpp-python
# sends no usage in streams). Prints both tables and the ratios at the last level; the JSON is kept in OUT_DIR.
#
#   scripts/bench-vs-llamacpp.sh servers         # THREADS=2 TOKENS=128 LEVELS=1,4 BENCH_ROUNDS=2
#   TOKENS=32 scripts/bench-vs-llamacpp.sh servers
set -euo pipefail
MODE=${1:-single}
case "$MODE" in
  single | servers) ;;
  *) echo "usage: $0 [servers]" >&2; exit 2 ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-5}
THREADS=${THREADS:-2}
TOKENS=${TOKENS:-128}
USER_MSG="What is the capital of France?"
MODEL=${MODEL:-smollm2}
# A raw prompt (no chat template) from the first PROMPT_CHARS characters of PROMPT_FILE, for prefill speed.
RAW=()
if [[ -n "${PROMPT_FILE:-}" ]]; then
  USER_MSG="$(head -c "${PROMPT_CHARS:-2000}" "$PROMPT_FILE")"
  RAW=(--raw)
fi
VENV=.venv-llamacpp

scripts/fetch-models.sh smollm2 >/dev/null
cargo build --release --locked --quiet
if ! "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "installing llama-cpp-python into $VENV (builds llama.cpp from source, ~15-20 min on 2 cores)"
  python3 -m venv "$VENV"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet "llama-cpp-python==0.3.36" numpy jinja2
fi

# --- servers mode ----------------------------------------------------------------------------------------------
GGUF=models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf
# `rill bench --ignore-eos` sends `ignore_eos` (rill) and `min_tokens` (llama-cpp-python, which has no
# `ignore_eos`: `min_tokens` bans the model's EOS id, 2 here). Not `logit_bias` as well: llama-cpp-python 0.3.36
# drops both when a request has both (`logits_processor = logits_processor.extend(...)` sets it to None).
# check_tokens below confirms, from usage, that each server generates exactly TOKENS tokens with these fields.
SERVER_PID=""

stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready URL: until it answers 200 (two minutes at most), or the server process has died.
wait_ready() {
  local i
  for i in $(seq 1 600); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server exited; its log:" >&2; cat "$2" >&2; return 1; }
    sleep 0.2
  done
  echo "no answer from $1" >&2
  return 1
}

# check_tokens NAME PORT: one non-streaming request with the same EOS settings must report TOKENS tokens.
check_tokens() {
  local got
  got=$(curl -fsS "http://127.0.0.1:$2/v1/chat/completions" -H 'Content-Type: application/json' -d "{
      \"messages\": [{\"role\": \"user\", \"content\": \"Say hi.\"}], \"max_tokens\": $TOKENS, \"temperature\": 0,
      \"ignore_eos\": true, \"min_tokens\": $TOKENS}" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["usage"]["completion_tokens"])')
  echo "$1: a non-streaming request with the same settings generated $got tokens (usage)"
  [[ "$got" == "$TOKENS" ]] || { echo "$1 did not generate exactly $TOKENS tokens" >&2; return 1; }
}

# bench NAME PORT: measure the server listening on PORT.
bench() {
  check_tokens "$1" "$2"
  ./target/release/rill bench --url "http://127.0.0.1:$2" --concurrency "$LEVELS" --rounds "$BENCH_ROUNDS" \
    --max-tokens "$TOKENS" --ignore-eos --json "$OUT_DIR/$1.json" >"$OUT_DIR/$1.txt"
}

servers_mode() {
  LEVELS=${LEVELS:-1,4}
  BENCH_ROUNDS=${BENCH_ROUNDS:-2}
  OUT_DIR=${OUT_DIR:-target/bench-vs-llamacpp}
  mkdir -p "$OUT_DIR"
  if ! "$VENV/bin/python" -c "import fastapi, uvicorn, sse_starlette, pydantic_settings, starlette_context" 2>/dev/null; then
    "$VENV/bin/pip" install --quiet fastapi uvicorn sse-starlette pydantic-settings starlette-context
  fi
  trap stop_server EXIT
  local port launcher
  echo "rill serve: $GGUF, $THREADS threads, levels $LEVELS, $BENCH_ROUNDS rounds, $TOKENS tokens"
  port=$(free_port)
  ./target/release/rill serve --model "$GGUF" --port "$port" --threads "$THREADS" >"$OUT_DIR/rill-serve.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "http://127.0.0.1:$port/health" "$OUT_DIR/rill-serve.log"
  bench rill "$port"
  stop_server

  echo "llama-cpp-python server: same file, $THREADS threads"
  # The launcher (with its AMX workaround) is the one scripts/ttft-vs-llamacpp-server.py uses.
  launcher=$("$VENV/bin/python" -c 'import importlib.util as u
s = u.spec_from_file_location("t", "scripts/ttft-vs-llamacpp-server.py"); m = u.module_from_spec(s)
s.loader.exec_module(m); print(m.LLAMA_LAUNCHER)')
  port=$(free_port)
  # interrupt_requests off: by default a new request cuts the stream in progress short.
  "$VENV/bin/python" -c "$launcher" --model "$GGUF" --host 127.0.0.1 --port "$port" --n_threads "$THREADS" \
    --n_threads_batch "$THREADS" --n_ctx 2048 --model_alias smollm2 --interrupt_requests false \
    >"$OUT_DIR/llama-serve.log" 2>&1 &
  SERVER_PID=$!
  wait_ready "http://127.0.0.1:$port/v1/models" "$OUT_DIR/llama-serve.log"
  bench llama-cpp-python "$port"
  stop_server

  echo
  for name in rill llama-cpp-python; do
    echo "== $name"
    cat "$OUT_DIR/$name.txt"
    echo
  done
  python3 - "$OUT_DIR/rill.json" "$OUT_DIR/llama-cpp-python.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def by_level(r):
    return {l["summary"]["concurrency"]: l for l in r["levels"]}
la, lb = by_level(a), by_level(b)
def sources(l):
    return "/".join(sorted({r["token_source"] for r in l["requests"]})) or "-"
def ratio(x, y):
    return f"{x / y:.2f}x" if x and y else "-"
print(f"{'':6} {'aggregate tok/s':^26} {'TTFT p95 (ms)':^26} {'short':^9} {'tokens from':^16}")
print(f"{'conc':>6} {'rill':>8} {'llama':>8} {'ratio':>8} {'rill':>8} {'llama':>8} {'ratio':>8} {'rill':>4} {'llama':>4}"
      f" {'rill':>7} {'llama':>8}")
for c in sorted(set(la) & set(lb)):
    sa, sb = la[c]["summary"], lb[c]["summary"]
    ta, tb = sa["ttft_ms"]["p95"], sb["ttft_ms"]["p95"]
    print(f"{c:>6} {sa['aggregate_tok_s']:>8.1f} {sb['aggregate_tok_s']:>8.1f} "
          f"{ratio(sa['aggregate_tok_s'], sb['aggregate_tok_s']):>8} {ta or 0:>8.1f} {tb or 0:>8.1f} {ratio(ta, tb):>8} "
          f"{sa['short']:>4} {sb['short']:>4} {sources(la[c]):>7} {sources(lb[c]):>8}")
c = max(set(la) & set(lb))
sa, sb = la[c]["summary"], lb[c]["summary"]
print(f"\nat concurrency {c}: rill's aggregate throughput is {ratio(sa['aggregate_tok_s'], sb['aggregate_tok_s'])} "
      f"llama-cpp-python's (higher is better for rill), its TTFT p95 {ratio(sa['ttft_ms']['p95'], sb['ttft_ms']['p95'])} "
      f"(lower is better for rill)")
print("ratio = rill / llama; short = requests that streamed fewer than max_tokens tokens (llama-cpp-python sends no")
print("usage in streams, so its tokens are counted as content chunks, which a held-back stop-string prefix can merge)")
PY
}

if [[ "$MODE" == servers ]]; then
  servers_mode
  exit 0
fi

rill_round() {
  local chat=(--chat)
  [[ ${#RAW[@]} -eq 0 ]] || chat=()
  ./target/release/rill generate --model "$MODEL" "${chat[@]}" --prompt "$USER_MSG" --temperature 0 --ignore-eos \
    --max-tokens "$TOKENS" --threads "$THREADS" 2>&1 >/dev/null | tail -n 1 |
    sed -E 's/.*TTFT ([0-9.]+) ms; ([0-9.]+) tok\/s.*/\1 \2/'
}

llama_round() {
  local model="$MODEL"
  [[ "$model" != smollm2 ]] || model="$GGUF"
  "$VENV/bin/python" scripts/llamacpp_round.py --threads "$THREADS" --tokens "$TOKENS" --user "$USER_MSG" \
    --model "$model" "${RAW[@]}"
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
