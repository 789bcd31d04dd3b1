#!/usr/bin/env bash
# Installs what is missing, builds everything, and runs every test:
#   1. the GoogleTest suites through ctest (Release build, CUDA compiled when nvcc is present);
#   2. the same C++ suites under AddressSanitizer + UndefinedBehaviorSanitizer (CPU only);
#   3. the libFuzzer target over request decoding, validation and execution, for 60 s;
#   4. the Python suites through pytest: the client and its adapters, metrics with a real
#      Prometheus, the container image, Kubernetes manifests and scale-out over replicas.
# Exits non-zero if any step fails; the output ends with pytest's own summary line.
# TENSORPREP_SKIP_SANITIZE=1 / TENSORPREP_SKIP_FUZZ=1 skip steps 2 / 3 on a developer's machine;
# CI runs them all. Arguments go to pytest.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_BUILD_DIR:-${repo}/build}"
cd "${repo}"

"${repo}/scripts/build.sh" || exit 1
venv="$("${repo}/scripts/python-env.sh" | tail -n 1)" || exit 1

ctest --test-dir "${build}" --output-on-failure -j 2
ctest_rc=$?

sanitize_rc=0
if [[ "${TENSORPREP_SKIP_SANITIZE:-0}" != 1 ]]; then
  TENSORPREP_SANITIZE_TARGETS="kernels_test codec_test handlers_test server_test metrics_test \
bad_input_test limits_test security_test shutdown_test load_test wire_response_test stream_state_test \
shm_test shm_client_test pipeline_models_test" "${repo}/scripts/sanitize.sh"
  sanitize_rc=$?
fi

fuzz_rc=0
if [[ "${TENSORPREP_SKIP_FUZZ:-0}" != 1 ]]; then
  "${repo}/scripts/fuzz.sh" 60
  fuzz_rc=$?
fi

TENSORPREP_SERVER_BIN="${build}/server/tensorprep-server" \
TENSORPREP_CLI_BIN="${build}/client/cpp/tensorprep" \
  "${venv}/bin/python" -m pytest -q "$@"
pytest_rc=$?

((ctest_rc == 0 && sanitize_rc == 0 && fuzz_rc == 0 && pytest_rc == 0))
