#!/usr/bin/env bash
# Packs what a GPU machine without this project's Debian libraries needs to run the GPU checks
# (scripts/gpu-check.sh): the binaries, under DEST/build/ in build/'s layout, and every shared
# library they load except the C/C++ runtime and the NVIDIA driver, under DEST/lib/. The binaries
# link the CUDA runtime statically, so the driver is all the GPU machine must have.
#
# Usage: scripts/gpu-bundle.sh [--build DIR] [--dest DIR]    (defaults: build, .gpu)
# Then, on the GPU machine, from a checkout with DEST beside it: scripts/gpu-check.sh --bundle DEST
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${repo}/build"
dest="${repo}/.gpu"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "gpu-bundle.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

binaries=(
  server/tensorprep-server
  client/cpp/tensorprep
  bench/tensorprep-echo-server
  bench/cuda/tensorprep_cuda_bench
  tests/kernels/cuda/cuda_kernels_test
  tests/handlers/handlers_test
)
for b in "${binaries[@]}"; do
  [[ -x "${build}/${b}" ]] || { echo "gpu-bundle.sh: ${build}/${b} not built (scripts/build.sh)" >&2; exit 2; }
done

rm -rf "${dest}"
mkdir -p "${dest}/lib"
for b in "${binaries[@]}"; do
  mkdir -p "${dest}/build/$(dirname "${b}")"
  cp "${build}/${b}" "${dest}/build/${b}"
done
# The runtime every Linux machine has (and a newer one than ours must keep loading our binaries),
# and the driver's libcuda, which must come from the GPU machine itself.
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libstdc\+\+|libgcc_s|libpthread|libdl\.so|librt\.so|libcuda\.so)'
for b in "${binaries[@]}"; do
  ldd "${build}/${b}" | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  [[ "${name}" =~ ${skip} ]] && continue
  cp -L "${path}" "${dest}/lib/${name}"
done
echo "gpu-bundle.sh: ${dest}: ${#binaries[@]} binaries, $(ls "${dest}/lib" | wc -l) libraries," \
  "$(du -sh "${dest}" | cut -f1)"

# Check: with only the bundle on the library path, every library but the runtime's resolves to
# a file inside the bundle.
for b in "${binaries[@]}"; do
  LD_LIBRARY_PATH="${dest}/lib" ldd "${dest}/build/${b}" | awk '/=>/{print $1, $3}' |
    while read -r name path; do
      [[ "${name}" =~ ${skip} || "${path}" == "${dest}/lib/"* ]] && continue
      echo "gpu-bundle.sh: ${b}: ${name} resolves to ${path}, outside the bundle" >&2
      exit 1
    done
done
echo "gpu-bundle.sh: every binary loads its libraries from the bundle, but for the C/C++ runtime"
