#!/usr/bin/env bash
# Builds the tree with AddressSanitizer + UndefinedBehaviorSanitizer (-O1, CPU only, no
# benchmarks) into ./build-asan and runs every GoogleTest suite under it through ctest.
# Any sanitizer report fails the run (-fno-sanitize-recover=all, halt_on_error).
# Environment: TENSORPREP_SANITIZE_BUILD_DIR, TENSORPREP_SANITIZE (default address,undefined),
# TENSORPREP_BUILD_JOBS (default 2), TENSORPREP_SANITIZE_TARGETS (space-separated targets to
# build, default all; ctest then runs the suites of the targets built). Extra arguments go to
# ctest (e.g. -R server).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_SANITIZE_BUILD_DIR:-${repo}/build-asan}"

if [[ ! -f "${build}/CMakeCache.txt" ]]; then
  cmake -S "${repo}" -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DTENSORPREP_SANITIZE="${TENSORPREP_SANITIZE:-address,undefined}" \
    -DTENSORPREP_CUDA=OFF -DTENSORPREP_BUILD_BENCHMARKS=OFF >/dev/null
fi
targets=()
for t in ${TENSORPREP_SANITIZE_TARGETS:-}; do targets+=(--target "${t}"); done
cmake --build "${build}" -j "${TENSORPREP_BUILD_JOBS:-2}" "${targets[@]}"

# A small quarantine keeps the load test's memory-growth bound meaningful under ASan.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:quarantine_size_mb=32:abort_on_error=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
export TENSORPREP_LOAD_SECONDS="${TENSORPREP_LOAD_SECONDS:-10}"
export TENSORPREP_LOAD_RSS_GROWTH_MB="${TENSORPREP_LOAD_RSS_GROWTH_MB:-400}"
ctest --test-dir "${build}" --output-on-failure -j 2 "$@"
