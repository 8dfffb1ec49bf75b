# Shared helpers for rill's scripts/*.sh. Source it; do not execute it.
# shellcheck shell=bash

# Repository root (the parent of scripts/).
RILL_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log()  { printf '[%s] %s\n' "$(basename "$0")" "$*"; }
die()  { printf '[%s] error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

need() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "'$c' is required but not installed"
  done
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# has_sha256 FILE HEX: true when FILE exists and its sha256 is HEX.
has_sha256() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

# check_sha256 FILE HEX: die unless FILE has sha256 HEX.
check_sha256() {
  local got
  got="$(sha256_of "$1")"
  [[ "$got" == "$2" ]] || die "sha256 mismatch for $1: expected $2, got $got"
}

# start_rill_server CMD...: runs `rill serve` (CMD, which must bind 127.0.0.1 port 0) in the background, waits
# until /health answers 200, and sets RILL_SERVER_PID, RILL_SERVER_LOG and URL. Pair with stop_rill_server.
start_rill_server() {
  RILL_SERVER_LOG="$(mktemp -t rill-server.XXXXXX)"
  RILL_LOG="${RILL_LOG:-info}" "$@" 2>"$RILL_SERVER_LOG" &
  RILL_SERVER_PID=$!
  # The server prints its address once bound, then loads the model; /health turns 200 when it is ready.
  URL=""
  local _
  for _ in $(seq 1 600); do
    kill -0 "$RILL_SERVER_PID" 2>/dev/null || { cat "$RILL_SERVER_LOG" >&2; die "rill serve exited early"; }
    URL="$(sed -n 's/^rill listening on \(http:[^ ]*\)$/\1/p' "$RILL_SERVER_LOG" | head -n1)"
    if [[ -n "$URL" ]] && [[ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/health")" == 200 ]]; then
      return 0
    fi
    sleep 0.2
  done
  cat "$RILL_SERVER_LOG" >&2
  die "rill serve did not become ready"
}

# stop_rill_server: ends the server started by start_rill_server (by PID) and removes its log.
stop_rill_server() {
  if [[ -n "${RILL_SERVER_PID:-}" ]]; then
    kill "$RILL_SERVER_PID" 2>/dev/null || true
    wait "$RILL_SERVER_PID" 2>/dev/null || true
  fi
  rm -f "${RILL_SERVER_LOG:-}"
}

# pinned_venv VENV IMPORTS PACKAGE==VERSION...: makes VENV with exactly these pins, again whenever it is missing,
# cannot run IMPORTS (a Python statement), or was made for another list of pins.
pinned_venv() {
  local venv="$1" imports="$2"
  shift 2
  if ! "$venv/bin/python" -c "$imports" 2>/dev/null || [[ "$(cat "$venv/.rill-pins" 2>/dev/null)" != "$*" ]]; then
    log "creating $venv with $*"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
    echo "$*" >"$venv/.rill-pins"
  fi
}
