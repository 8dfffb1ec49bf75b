#!/usr/bin/env bash
# Conformance with the real clients: starts `rill serve --model smollm2` on a free port of 127.0.0.1, runs the
# Python SDK tests in tests/sdk (openai, ollama, anthropic, curl) and every example of the API docs, then stops
# the server. Exits non-zero on any failure.
#
#   scripts/sdk-test.sh [MARKDOWN]    # MARKDOWN: the docs whose examples are run (default README.md)
#
# Environment: RILL_SDK_VENV (default .venv-sdk), RILL_SDK_NO_BUILD=1 to skip `cargo build --release`,
# PYTEST_ARGS for extra pytest arguments.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$RILL_ROOT"

DOCS="${1:-README.md}"
VENV="${RILL_SDK_VENV:-.venv-sdk}"
# Pinned: the clients are what is being tested against, so a new release changes the test, not the server.
PACKAGES=(openai==3.57.0 ollama==0.6.3 anthropic==2.14.0 pytest==9.2.0 httpx==0.28.1
  jsonschema==4.26.0 pydantic==2.14.4 langchain-openai==1.7.4 langchain-core==1.8.3 "pydantic-ai-slim[openai]==2.68.0"
  aiohttp==3.14.5 click==8.5.1 jinja2==3.1.6 regex==2026.11.19 requests==2.34.2 rich==14.3.4 tenacity==9.2.1
  typer==0.29.2)
# instructor pins jiter<0.15, which openai 3.x's jiter>=0.16 excludes, so pip cannot resolve both: instructor
# goes in without its dependencies (the ones it needs are pinned above) and is checked by its own test file.
INSTRUCTOR=instructor==1.17.0

need curl python3
[[ -f "$DOCS" ]] || die "no such markdown file: $DOCS"
[[ -f models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf ]] || die "models/smollm2 is missing: run scripts/fetch-models.sh"

if [[ "${RILL_SDK_NO_BUILD:-}" != 1 ]]; then
  log "building rill (release)"
  cargo build --release --quiet
fi
[[ -x target/release/rill ]] || die "target/release/rill is missing: run cargo build --release"

pinned_venv "$VENV" "import openai, ollama, anthropic, pytest, httpx, jsonschema, langchain_openai, pydantic_ai" "${PACKAGES[@]}"
if [[ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("instructor"))' 2>/dev/null)" != "${INSTRUCTOR#*==}" ]]; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "$INSTRUCTOR"
fi

trap stop_rill_server EXIT
start_rill_server target/release/rill serve --model smollm2 --host 127.0.0.1 --port 0
log "server ready at $URL; running the SDK tests and the examples of $DOCS"

status=0
RILL_BASE_URL="$URL" RILL_DOCS="$DOCS" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/sdk ${PYTEST_ARGS:-} || status=$?
if [[ $status -ne 0 ]]; then
  log "server log (last 40 lines):"
  tail -n 40 "$RILL_SERVER_LOG" >&2
fi
exit "$status"
