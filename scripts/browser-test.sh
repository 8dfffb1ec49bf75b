#!/usr/bin/env bash
# The chat page in a real browser: starts `rill serve --model smollm2 --resume-window-secs 3` on a free port of
# 127.0.0.1, then runs tests/browser (headless Chromium through Selenium, and a plain Python SSE client) through
# a proxy that cuts streams mid-answer. Screenshots land in target/browser-test/. Exits non-zero on any failure.
#
# Installs what it needs: Debian's chromium and chromium-driver (apt-get, when missing and run as root) and a
# venv with pinned Python packages. Environment: RILL_BROWSER_VENV (default .venv-browser), RILL_SDK_NO_BUILD=1
# to skip `cargo build --release`, PYTEST_ARGS for extra pytest arguments.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"
cd "$RILL_ROOT"

VENV="${RILL_BROWSER_VENV:-.venv-browser}"
# Pinned: the browser driver's client is part of what is tested.
PACKAGES=(selenium==4.50.0 pytest==9.2.0 httpx==0.28.1)

need curl python3
[[ -f models/smollm2/SmolLM2-135M-Instruct-Q4_1.gguf ]] || die "models/smollm2 is missing: run scripts/fetch-models.sh"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  [[ "$(id -u)" == 0 ]] || die "chromium and chromium-driver are needed: apt-get install chromium chromium-driver"
  log "installing chromium and chromium-driver"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi

if [[ "${RILL_SDK_NO_BUILD:-}" != 1 ]]; then
  log "building rill (release)"
  cargo build --release --quiet
fi

pinned_venv "$VENV" "import selenium, pytest, httpx" "${PACKAGES[@]}"

# Chromium and its driver leave a profile folder in $TMPDIR after every session: give them one of their own.
BROWSER_TMP="$(mktemp -d)"
cleanup() {
  stop_rill_server
  rm -rf "$BROWSER_TMP"
}
trap cleanup EXIT
start_rill_server target/release/rill serve --model smollm2 --host 127.0.0.1 --port 0 --resume-window-secs 3
log "server ready at $URL; $(chromium --version 2>/dev/null | head -n1)"

status=0
TMPDIR="$BROWSER_TMP" RILL_BASE_URL="$URL" "$VENV/bin/python" -m pytest -q -c tests/browser/pytest.ini --rootdir tests/browser tests/browser ${PYTEST_ARGS:-} || status=$?
if [[ $status -ne 0 ]]; then
  log "server log (last 40 lines):"
  tail -n 40 "$RILL_SERVER_LOG" >&2
fi
exit "$status"
