#!/usr/bin/env bash
# Builds the libFuzzer target (clang, AddressSanitizer + UndefinedBehaviorSanitizer, CPU only) and
# fuzzes request decoding + validation + execution for a bounded time.
#   scripts/fuzz.sh [SECONDS]      default 60; e.g. scripts/fuzz.sh 3600 for an hour
# Environment: TENSORPREP_FUZZ_BUILD_DIR (default ./build-fuzz), TENSORPREP_FUZZ_JOBS (parallel
# fuzzing processes, default 1), CXX/CC (default clang++/clang). Runs start from the seed corpus
# in fuzz/corpus (never modified); new inputs go to $build/corpus, crashes to $build/crashes.
# Exits non-zero if a crash, leak or contract violation was found.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_FUZZ_BUILD_DIR:-${repo}/build-fuzz}"
seconds="${1:-60}"
jobs="${TENSORPREP_FUZZ_JOBS:-1}"

if [[ ! -f "${build}/CMakeCache.txt" ]]; then
  cmake -S "${repo}" -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER="${CC:-clang}" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g -include ${repo}/fuzz/cpu_supports_shim.h" \
    -DTENSORPREP_FUZZ=ON -DTENSORPREP_CUDA=OFF -DTENSORPREP_BUILD_TESTS=OFF \
    -DTENSORPREP_BUILD_BENCHMARKS=OFF >/dev/null
fi
cmake --build "${build}" --target process_fuzzer -j "${TENSORPREP_BUILD_JOBS:-2}"

mkdir -p "${build}/corpus" "${build}/crashes"
log="${build}/fuzz.log"
set +e
"${build}/fuzz/process_fuzzer" "${build}/corpus" "${repo}/fuzz/corpus" \
  -max_total_time="${seconds}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -jobs="${jobs}" -workers="${jobs}" -print_final_stats=1 \
  -artifact_prefix="${build}/crashes/" 2>&1 | tee "${log}" | grep -E "^#[0-9]+ +(DONE|INITED)|ERROR|stat::" 
rc=${PIPESTATUS[0]}
set -e
if [[ ${jobs} -gt 1 ]]; then cat "${build}"/fuzz-*.log >> "${log}" 2>/dev/null || true; fi
crashes=$(find "${build}/crashes" -type f | wc -l)
execs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "${log}" | grep -oE "[0-9]+$" |
  paste -sd+ - | bc)
echo "fuzz: ${seconds} s, ${execs:-0} executions, ${crashes} crash file(s) in ${build}/crashes"
exit "${rc}"
