#!/usr/bin/env bash
# Creates (or refreshes) the Python virtual environment used by the Python tests and the comparison
# benchmark: <repo>/.venv with the pinned packages of client/python/requirements-dev.txt, Debian's
# CPU-only PyTorch and torchvision (seen through --system-site-packages) and the tensorprep package itself.
#
# Idempotent: a stamp file keyed on the requirements, this script and the package's build files
# makes a second run take a second. Prints the venv's path on its last line.
#
# Usage: scripts/python-env.sh [--no-torch]
#   --no-torch   do not apt-get install python3-torch/-torchvision (the PyTorch tests then skip).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${TENSORPREP_VENV:-${repo}/.venv}"
req="${repo}/client/python/requirements-dev.txt"
deploy_req="${repo}/tests/deploy/requirements.txt"  # manifest validators for tests/deploy
kserve_req="${repo}/client/python/requirements-kserve.txt"  # tritonclient, without its pins
want_torch=1
for arg in "$@"; do
  case "${arg}" in
    --no-torch) want_torch=0 ;;
    *) echo "python-env.sh: unknown argument ${arg}" >&2; exit 2 ;;
  esac
done

# Debian's Python: python3-torch is packaged for it, and the venv must be made from the same
# interpreter to see it.
base_python=/usr/bin/python3

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("${pkg}")
  done
  if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
      echo "python-env.sh: need root to apt-get install ${missing[*]}" >&2
      return 1
    fi
    echo "python-env.sh: apt-get install ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

apt_install python3-venv python3-pip
if ((want_torch)); then
  # torchvision is the reference for the geometry parity tests and the GPU comparison benchmark.
  apt_install python3-torch python3-torchvision ||
    echo "python-env.sh: python3-torch/python3-torchvision not installed; PyTorch tests will skip" >&2
fi

stamp_key="$(cat "${req}" "${deploy_req}" "${kserve_req}" "${BASH_SOURCE[0]}" "${repo}/client/python/pyproject.toml" \
  "${repo}/client/python/setup.py" "${repo}/client/python/tensorprep/_protogen.py" \
  "${repo}/proto/tensorprep/v1/tensorprep.proto" 2>/dev/null |
  sha256sum | cut -d' ' -f1)"
stamp="${venv}/.tensorprep-stamp"

if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${stamp_key}" && -x "${venv}/bin/python" ]]; then
  echo "${venv}"
  exit 0
fi

if [[ ! -x "${venv}/bin/python" ]]; then
  "${base_python}" -m venv --system-site-packages "${venv}"
fi
py="${venv}/bin/python"
"${py}" -m pip install -q --disable-pip-version-check -r "${req}" -r "${deploy_req}"
# tritonclient pins protobuf < 7; installed without its pins (requirements-kserve.txt says why).
"${py}" -m pip install -q --disable-pip-version-check --no-deps -r "${kserve_req}"
# Editable install, so the tests exercise the checked-out sources; its build step (setup.py)
# generates the protobuf/gRPC modules from proto/ into client/python/tensorprep/v1/ (with the stamp
# that lets tensorprep._stubs regenerate them when another environment changed them).
"${py}" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall -e "${repo}/client/python"
"${py}" - <<'PY'
import numpy, grpc, google.protobuf, tensorflow, skimage, hypothesis, atheris, tensorprep
print("numpy", numpy.__version__, "grpcio", grpc.__version__,
      "protobuf", google.protobuf.__version__, "tensorflow", tensorflow.__version__,
      "skimage", skimage.__version__, "hypothesis", hypothesis.__version__)
try:
    import torch, torchvision
    print("torch", torch.__version__, "torchvision", torchvision.__version__)
except ImportError as e:
    print("torch not importable:", e)
PY
echo "${stamp_key}" >"${stamp}"
echo "${venv}"
