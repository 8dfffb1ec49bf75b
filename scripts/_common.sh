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
