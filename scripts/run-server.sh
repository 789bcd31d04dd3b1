#!/usr/bin/env bash
# Builds tensorprep if needed and starts the server in the foreground with sensible defaults
# (gRPC on 0.0.0.0:50051, metrics on :9464, CUDA when usable else CPU, all cores), and for
# training jobs on the same host a Unix socket (/tmp/tensorprep.sock) and shared-memory tensors
# (objects named /tensorprep-*), which the Python client then uses by itself (README, "Same host").
# Arguments and TENSORPREP_* variables are passed on: scripts/run-server.sh --port 6000;
# TENSORPREP_SHM_PREFIX= (empty) and TENSORPREP_UDS= (empty) turn the same-host paths off.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_BUILD_DIR:-${repo}/build}"
"${repo}/scripts/build.sh"
# Transparent huge pages for malloc'd buffers: megabyte-sized tensors then cost far fewer page
# faults (docs/performance.md has the measurement). A tunable, so it must be set before start.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"
export TENSORPREP_UDS="${TENSORPREP_UDS-/tmp/tensorprep.sock}"
export TENSORPREP_SHM_PREFIX="${TENSORPREP_SHM_PREFIX-/tensorprep-}"
[[ -n "${TENSORPREP_UDS}" ]] || unset TENSORPREP_UDS
[[ -n "${TENSORPREP_SHM_PREFIX}" ]] || unset TENSORPREP_SHM_PREFIX
exec "${build}/server/tensorprep-server" "$@"
