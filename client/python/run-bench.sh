#!/usr/bin/env bash
# Sets up the Python environment (scripts/python-env.sh: TensorFlow CPU, scikit-image, this
# package, ...) and runs the comparison benchmark against the server built in build/.
#
# Usage: client/python/run-bench.sh [bench flags]   e.g. --out bench-results --repeats 5
# Flags are those of `python -m tensorprep.bench --help`.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$("${repo}/scripts/python-env.sh" | tail -n 1)"
cd "${repo}"
exec "${venv}/bin/python" -m tensorprep.bench --server-bin "${repo}/build/server/tensorprep-server" "$@"
