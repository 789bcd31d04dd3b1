#!/usr/bin/env bash
# Installs what is missing, builds everything, and runs every test: the GoogleTest suites through
# ctest, then the Python suites (client, adapters, metrics with a real Prometheus) through pytest.
# Exits non-zero if either runner fails; the output ends with the runners' own summary lines.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_BUILD_DIR:-${repo}/build}"
cd "${repo}"

"${repo}/scripts/build.sh" || exit 1
venv="$("${repo}/scripts/python-env.sh" | tail -n 1)" || exit 1

ctest --test-dir "${build}" --output-on-failure -j 2
ctest_rc=$?

TENSORPREP_SERVER_BIN="${build}/server/tensorprep-server" \
TENSORPREP_CLI_BIN="${build}/client/cpp/tensorprep" \
  "${venv}/bin/python" -m pytest -q "$@"
pytest_rc=$?

if ((ctest_rc != 0 || pytest_rc != 0)); then
  exit 1
fi
