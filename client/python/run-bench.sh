#!/usr/bin/env bash
# The comparison benchmark in one command: builds the server (scripts/build.sh; a second run only
# rebuilds what changed), sets up the Python environment (scripts/python-env.sh: TensorFlow CPU,
# scikit-image, this package, ...) plus the peer ways of client/python/requirements-bench.txt
# (OpenCV, NVIDIA DALI), and runs `python -m tensorprep.bench` against the server of build/.
#
# Usage: client/python/run-bench.sh [bench flags]   e.g. --out out/bench --repeats 5
# Flags are those of `python -m tensorprep.bench --help`. With --address (a server already
# running) nothing is built. TENSORPREP_BENCH_NO_BUILD=1 skips the build step too.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

external=0
for arg in "$@"; do
  [[ "${arg}" == --address || "${arg}" == --address=* ]] && external=1
done
if ((external == 0)) && [[ "${TENSORPREP_BENCH_NO_BUILD:-0}" != 1 ]]; then
  "${repo}/scripts/build.sh" >&2
fi

venv="$("${repo}/scripts/python-env.sh" | tail -n 1)"

# The bench's own packages, on top of the CI environment; constrained to its pins (see the file).
bench_req="${repo}/client/python/requirements-bench.txt"
stamp="${venv}/.tensorprep-bench-stamp"
key="$(cat "${bench_req}" "${repo}/client/python/requirements-dev.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "${stamp}" || "$(cat "${stamp}")" != "${key}" ]]; then
  echo "run-bench.sh: pip install -r client/python/requirements-bench.txt" >&2
  "${venv}/bin/python" -m pip install -q --disable-pip-version-check -r "${bench_req}"
  echo "${key}" >"${stamp}"
fi

cd "${repo}"
if ((external)); then
  exec "${venv}/bin/python" -m tensorprep.bench "$@"
fi
exec "${venv}/bin/python" -m tensorprep.bench \
  --server-bin "${repo}/build/server/tensorprep-server" "$@"
