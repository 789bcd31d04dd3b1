#!/usr/bin/env bash
# The long load/soak run: the same test binary as CI's short load test, for longer and with more
# callers. Prints one summary line (requests, errors, p50/p99, server RSS growth) and fails on
# any error, p99 over the bound or RSS growth over the bound.
#   scripts/soak.sh [SECONDS] [STREAMS] [UNARY]     defaults 600 16 16
# Bounds: TENSORPREP_LOAD_P99_MS (2000), TENSORPREP_LOAD_RSS_GROWTH_MB (200). Uses the build in
# TENSORPREP_BUILD_DIR (default ./build); run scripts/build.sh first.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_BUILD_DIR:-${repo}/build}"
binary="${build}/tests/reliability/load_test"
if [[ ! -x "${binary}" ]]; then
  echo "soak: ${binary} not found; run scripts/build.sh first" >&2
  exit 2
fi
TENSORPREP_LOAD_SECONDS="${1:-600}" TENSORPREP_LOAD_STREAMS="${2:-16}" \
TENSORPREP_LOAD_UNARY="${3:-16}" TENSORPREP_LOAD_MAX_REQUESTS="${TENSORPREP_LOAD_MAX_REQUESTS:-100000000}" \
  "${binary}" --gtest_brief=1
