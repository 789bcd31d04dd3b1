#!/usr/bin/env bash
# The GPU checks in one command, for a machine with an NVIDIA GPU; writes one log per step and a
# summary into OUT:
#   1. tests: the CUDA kernel tests and the handler tests (the CUDA backend against the CPU
#      backend through the Processor, inputs and results in shared memory included); both skip
#      their device cases without a usable GPU,
#   2. the CUDA kernel benchmark: CUDA-event times at 256x256x3 float32, batch 1/64/256, beside a
#      device-to-device copy of the same bytes and pinned host<->device bandwidth,
#   3. torchvision on the same GPU (bench/torch_compare.py), where torch and torchvision import,
#   4. end to end through tensorprep-server --device cuda against the raw gRPC echo (bench/e2e.sh;
#      W2 at batch 1, 64 and 256).
# Exits non-zero when a test step fails; benchmark steps that cannot run are reported, not fatal.
#
# Usage: scripts/gpu-check.sh [--build DIR | --bundle DIR] [--out DIR] [--iterations N]
#                             [--rounds N]
#   --build       a build directory (default: build)
#   --bundle      a bundle from scripts/gpu-bundle.sh (binaries and their libraries), for a GPU
#                 machine without this project's Debian packages
#   --out         where logs and the summary go (default: gpu-check-out)
#   --iterations  CUDA benchmark iterations per figure (default 200)
#   --rounds      e2e rounds (default 3)
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${repo}/build"
out="${repo}/gpu-check-out"
iterations=200
rounds=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --bundle)
      build="$(cd "$2" && pwd)/build"
      export LD_LIBRARY_PATH="$(cd "$2" && pwd)/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
      shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --iterations) iterations="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu-check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "${out}"
summary="${out}/summary.md"
: >"${summary}"
failed=0

# step NAME FATAL CMD...: runs CMD with its output in OUT/NAME.log and records the outcome.
step() {
  local name="$1" fatal="$2"; shift 2
  echo "== ${name}: $*" >&2
  local start=${SECONDS}
  "$@" >"${out}/${name}.log" 2>&1
  local rc=$?
  local verdict="ok"
  if ((rc != 0)); then
    verdict="exit ${rc}"
    ((fatal)) && failed=1
  fi
  echo "- ${name}: ${verdict} ($((SECONDS - start)) s)" | tee -a "${summary}" >&2
  tail -n 25 "${out}/${name}.log" >&2
  return 0
}

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  echo '```'
  echo
} >>"${summary}"

step cuda_kernels_test 1 "${build}/tests/kernels/cuda/cuda_kernels_test" --gtest_brief=1
step handlers_test 1 "${build}/tests/handlers/handlers_test" --gtest_brief=1
grep -h -E '^\[  (PASSED|SKIPPED|FAILED) ' "${out}/cuda_kernels_test.log" \
  "${out}/handlers_test.log" | sed 's/^/    /' >>"${summary}"
step cuda_bench 0 "${build}/bench/cuda/tensorprep_cuda_bench" "${iterations}"
if python3 -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null; then
  step torch_compare 0 python3 "${repo}/bench/torch_compare.py" --device cuda \
    --build "${build}" --iterations 50 --repeats 5
else
  echo "- torch_compare: skipped (torch/torchvision missing or no CUDA device for torch)" |
    tee -a "${summary}" >&2
fi
step e2e_cuda 0 "${repo}/bench/e2e.sh" --build "${build}" --device cuda --rounds "${rounds}" \
  --only '^W2 (1|64|256)$' --markdown "${out}/e2e_cuda.md"

{
  echo
  for f in cuda_bench torch_compare; do
    [[ -s "${out}/${f}.log" ]] || continue
    echo "## ${f}"
    echo
    echo '```'
    cat "${out}/${f}.log"
    echo '```'
    echo
  done
  if [[ -s "${out}/e2e_cuda.md" ]]; then
    echo "## e2e (--device cuda)"
    echo
    cat "${out}/e2e_cuda.md"
  fi
} >>"${summary}"
echo "gpu-check.sh: summary in ${summary}" >&2
exit "${failed}"
