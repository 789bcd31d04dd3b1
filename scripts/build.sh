#!/usr/bin/env bash
# Installs what is missing, then configures and builds tensorprep (Release, Ninja) into ./build
# (TENSORPREP_BUILD_DIR overrides). The CUDA backend is compiled whenever nvcc is present.
# Extra arguments go to CMake's configure step, e.g. -DTENSORPREP_CUDA=OFF.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_BUILD_DIR:-${repo}/build}"

"${repo}/scripts/setup.sh"
if [[ ! -f "${build}/CMakeCache.txt" || $# -gt 0 ]]; then
  cmake -S "${repo}" -B "${build}" -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
fi
cmake --build "${build}" -j "$(nproc)"
