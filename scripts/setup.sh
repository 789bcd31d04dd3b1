#!/usr/bin/env bash
# Installs the Debian packages that building, running and testing tensorprep need. Idempotent:
# packages already installed are not touched, and apt is not contacted when nothing is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libopencv-dev prometheus-cpp-dev libjpeg-dev libpng-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  prometheus openssl curl
  buildah debootstrap
  clang libclang-rt-14-dev bc
  python3 python3-venv python3-pip
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("${pkg}")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup.sh: run as root (or install: ${missing[*]})" >&2
    exit 1
  fi
  echo "setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
