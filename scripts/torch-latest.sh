#!/usr/bin/env bash
# Runs the PyTorch adapter tests (and the torchvision parity tests of every op) against the newest
# PyTorch release on PyPI, in a virtual environment of its own: <repo>/.venv-torch.
#
# Why a separate command and venv: the project's test venv (scripts/python-env.sh) uses Debian's
# CPU-only PyTorch 1.13, which needs NumPy 1.x; PyPI's current torch wheels for Linux depend on the
# CUDA libraries as wheels (several GB of nvidia-* packages) and on NumPy 2, so they cannot share
# that venv and are too heavy for every CI run. Run this before a release, or when PyTorch ships.
#
# Idempotent: the first run downloads and installs (minutes; about 5 GB on disk); later runs
# upgrade torch/torchvision only when PyPI has a newer release, then run the tests.
#
# Usage: scripts/torch-latest.sh [pytest args...]
#   TORCH_SPEC="torch==2.15.0 torchvision==0.30.0"  pins other versions (default: the newest).
#   TENSORPREP_SERVER_BIN as for the other Python tests (default <repo>/build/server/...).
# The output ends with the versions tested and pytest's own summary line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TENSORPREP_TORCH_VENV:-${repo}/.venv-torch}"
req="${repo}/client/python/requirements-dev.txt"
torch_spec="${TORCH_SPEC:-torch torchvision}"

if [[ ! -x "${venv}/bin/python" ]]; then
  # No --system-site-packages: Debian's python3-torch must not shadow the wheel under test.
  /usr/bin/python3 -m venv "${venv}"
fi
py="${venv}/bin/python"

# The gRPC/protobuf pins are the test venv's own, so the stubs generated into the source tree
# (client/python/tensorprep/v1) suit both venvs and neither regenerates them under the other.
pins=()
for pkg in protobuf grpcio grpcio-tools pytest pytest-timeout hypothesis; do
  line="$(grep -E "^${pkg}==" "${req}")" || { echo "torch-latest.sh: no pin for ${pkg} in ${req}" >&2; exit 1; }
  pins+=("${line}")
done
# shellcheck disable=SC2086  # torch_spec is a list of requirement specifiers
"${py}" -m pip install -q --disable-pip-version-check --upgrade ${torch_spec} "${pins[@]}" numpy

"${py}" - <<'PY'
import numpy, google.protobuf, grpc, torch
try:
    import torchvision
    tv = torchvision.__version__
except ImportError:
    tv = "not installed"
print("torch-latest.sh: torch", torch.__version__, "torchvision", tv, "numpy", numpy.__version__,
      "protobuf", google.protobuf.__version__, "grpcio", grpc.__version__)
PY

cd "${repo}"
export PYTHONPATH="${repo}/client/python${PYTHONPATH:+:${PYTHONPATH}}"
exec "${py}" -m pytest -q -p no:cacheprovider tests/python/test_adapters_torch.py \
  tests/python/test_torchvision_parity.py tests/python/test_ops_parity.py "$@"
