#!/usr/bin/env bash
# Prints, one per line, the Debian/Ubuntu packages that provide the shared libraries the given
# ELF binaries load (per ldd): exactly what a runtime image must install to run them. Used by the
# Dockerfile's build stage and by scripts/container-test.sh for prebuilt binaries; it must run on
# the same distribution release as the runtime image, since package names differ between them.
# Libraries that no package owns (a driver's libcuda injected at run time) are skipped with a note.
set -euo pipefail
if (($# == 0)); then
  echo "usage: runtime-packages.sh BINARY..." >&2
  exit 2
fi
for bin in "$@"; do
  if ldd "${bin}" | grep -q "not found"; then
    echo "runtime-packages.sh: ${bin} has unresolved libraries:" >&2
    ldd "${bin}" | grep "not found" >&2
    exit 1
  fi
  ldd "${bin}" | awk '/=> \//{print $3}'
done | sort -u | while read -r lib; do
  real="$(readlink -f "${lib}")"
  pkg=""
  # usrmerge: dpkg knows a file by the path its package shipped, /lib/... or /usr/lib/...
  for candidate in "${lib}" "${real}" "${real#/usr}" "/usr${real}" "${lib#/usr}"; do
    pkg="$(dpkg-query -S "${candidate}" 2>/dev/null | head -n 1 | cut -d: -f1)" || true
    [[ -n "${pkg}" ]] && break
  done
  if [[ -z "${pkg}" ]]; then
    echo "runtime-packages.sh: no package owns ${lib}; not listed" >&2
    continue
  fi
  echo "${pkg}"
done | sort -u
