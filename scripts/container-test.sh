#!/usr/bin/env bash
# Builds the CPU image from the top-level Dockerfile, starts the server inside it and calls it from
# the host: grpc.health.v1 Check, one pipeline whose result is checked against NumPy, /metrics
# (the call must be counted there), the image's HEALTHCHECK command run inside the container, the
# non-root user, and a SIGTERM drain that exits 0. Prints "container test: OK" last on success.
#
# No Docker engine is needed: buildah builds the Dockerfile (chroot isolation, vfs storage in a
# temporary root), and the Debian base image is made locally with debootstrap from the mirror apt
# already uses, since no registry is assumed reachable. Everything created is removed at exit:
# the temporary root, the containers and images in it, and whatever buildah left under
# /var/lib/containers and /run/containers that was not there before.
#
# Usage: scripts/container-test.sh [--full]
#   default  BINARIES=prebuilt: the server and CLI built on this host (TENSORPREP_BUILD_DIR, default
#            ./build; this host must run the image's Debian release) are copied into the runtime
#            stage. The runtime stage itself (packages, user, entrypoint, healthcheck) is built for
#            real. This is what CI runs: compiling inside the image takes far longer.
#   --full   the whole Dockerfile: the build stage installs the -dev packages and compiles inside
#            the image (no host build needed).
# Environment: TENSORPREP_PYTHON (a Python with numpy, grpcio and the tensorprep package; default
# ./.venv/bin/python), TENSORPREP_CONTAINER_CACHE (where the debootstrap tarball is kept between
# runs; default ~/.cache/tensorprep-container; delete it to start from nothing), JOBS (compile jobs
# in --full mode, default 2).
# Needs root (debootstrap, chroot) and network access to the Debian mirror.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${TENSORPREP_BUILD_DIR:-${repo}/build}"
python="${TENSORPREP_PYTHON:-${repo}/.venv/bin/python}"
cache="${TENSORPREP_CONTAINER_CACHE:-${HOME:-/root}/.cache/tensorprep-container}"
mode=prebuilt
for arg in "$@"; do
  case "${arg}" in
    --full) mode=full ;;
    *) echo "container-test.sh: unknown argument ${arg}" >&2; exit 2 ;;
  esac
done

log() { echo "container-test: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now() { date +%s; }
t_start="$(now)"

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap and buildah's chroot isolation)"
missing=()
for pkg in buildah debootstrap; do
  dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("${pkg}")
done
if ((${#missing[@]})); then
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/dev/null
fi
[[ -x "${python}" ]] || die "no Python at ${python} (set TENSORPREP_PYTHON; scripts/python-env.sh)"
"${python}" -c "import numpy, grpc, tensorprep" ||
  die "${python} lacks numpy, grpcio or tensorprep"

# ---- state and cleanup --------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/tensorprep-container.XXXXXX")"
# buildah keeps some state outside --root/--runroot (a blob-info cache, lock files); note what
# exists now so that cleanup removes exactly what this run added.
state_dirs=(/var/lib/containers /run/containers /var/tmp/containers)
for d in "${state_dirs[@]}"; do
  if [[ -e "${d}" ]]; then find "${d}" -mindepth 1 | sort >"${work}/before.$(echo "${d}" | tr / _)"; fi
done
server_pid=""
run_pid=""
ctr=""

cleanup() {
  local rc=$?
  set +e
  if [[ -n "${server_pid}" ]] && kill -0 "${server_pid}" 2>/dev/null; then kill -KILL "${server_pid}"; fi
  if [[ -n "${run_pid}" ]]; then wait "${run_pid}" 2>/dev/null; fi
  if [[ -d "${work}/storage" ]]; then
    bah rm --all >/dev/null 2>&1
    bah rmi --all --force >/dev/null 2>&1
  fi
  # Nothing should be mounted below the work dir after buildah rm, but never rm -rf through a mount.
  if grep -q " ${work}/" /proc/self/mounts; then
    grep " ${work}/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  fi
  for d in "${state_dirs[@]}"; do
    local before="${work}/before.$(echo "${d}" | tr / _)"
    if [[ ! -e "${d}" ]]; then continue; fi
    if [[ ! -f "${before}" ]]; then
      rm -rf "${d}"
    else
      # Deepest first, so that directories this run created are empty when removed.
      find "${d}" -mindepth 1 | sort | comm -23 - "${before}" | sort -r |
        while read -r p; do rm -rf "${p}"; done
    fi
  done
  rm -rf "${work}"
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "${work}/tmp"
cat >"${work}/storage.conf" <<EOF
[storage]
driver = "vfs"
runroot = "${work}/run"
graphroot = "${work}/storage"
EOF
# Short names are never resolved against a registry: every image here is local.
cat >"${work}/registries.conf" <<'EOF'
unqualified-search-registries = []
short-name-mode = "disabled"
EOF
export CONTAINERS_STORAGE_CONF="${work}/storage.conf"
export CONTAINERS_REGISTRIES_CONF="${work}/registries.conf"
export BUILDAH_ISOLATION=chroot
export TMPDIR="${work}/tmp"
bah() { buildah --root "${work}/storage" --runroot "${work}/run" --storage-driver vfs "$@"; }

# ---- base image: Debian from debootstrap ------------------------------------------------------------
. /etc/os-release
codename="${VERSION_CODENAME:?cannot read the release codename from /etc/os-release}"
# The mirror apt uses for this release's main component (deb822 .sources or one-line .list).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "${f}" ]] || continue
    awk -v suite="${codename}" '
      function flush() {
        if (uris != "" && (" " suites " ") ~ (" " suite " ") && comps ~ /(^| )main( |$)/) {
          split(uris, u, " "); print u[1]
        }
        uris = suites = comps = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^URIs:/ { sub(/^URIs:[ \t]*/, ""); uris = $0 }
      /^Suites:/ { sub(/^Suites:[ \t]*/, ""); suites = $0 }
      /^Components:/ { sub(/^Components:[ \t]*/, ""); comps = $0 }
      END { flush() }' "${f}"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f "${f}" ]] || continue
    sed -E 's/\[[^]]*\]//' "${f}" |
      awk -v suite="${codename}" '$1 == "deb" && $3 == suite && / main( |$)/ { print $2 }'
  done
}
mirror="$(apt_mirror | grep -E '^https?://' | sed -n 1p || true)"
[[ -n "${mirror}" ]] || die "no apt source for ${codename} main found in /etc/apt"
base_tar="${cache}/debian-${codename}-minbase.tar"
if [[ ! -s "${base_tar}" ]]; then
  log "debootstrap ${codename} from ${mirror}"
  t0="$(now)"
  mkdir -p "${cache}"
  debootstrap --variant=minbase "${codename}" "${work}/rootfs" "${mirror}" >"${work}/debootstrap.log" 2>&1 ||
    { tail -n 20 "${work}/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "${work}/rootfs/var/cache/apt/archives/"*.deb "${work}/rootfs/var/lib/apt/lists/"*
  tar -C "${work}/rootfs" --numeric-owner -cf "${base_tar}.partial" .
  mv "${base_tar}.partial" "${base_tar}"
  rm -rf "${work}/rootfs"
  log "debootstrap took $(($(now) - t0)) s"
fi
base_image="localhost/tensorprep-test-base:${codename}"
c="$(bah from --pull=never scratch)"
bah add "${c}" "${base_tar}" / >/dev/null
bah config --cmd '["/bin/bash"]' --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${c}"
bah commit --quiet "${c}" "${base_image}" >/dev/null
bah rm "${c}" >/dev/null
log "base image ${base_image} ready ($(($(now) - t_start)) s)"

# ---- the image --------------------------------------------------------------------------------------
image="localhost/tensorprep:test-cpu"
build_args=(--build-arg "BUILD_IMAGE=${base_image}" --build-arg "RUNTIME_IMAGE=${base_image}")
if [[ "${mode}" == prebuilt ]]; then
  for b in "${build}/server/tensorprep-server" "${build}/client/cpp/tensorprep"; do
    [[ -x "${b}" ]] || die "${b} missing: build first (scripts/build.sh), or use --full"
  done
  # A context of its own holding only the binaries: the build stage is skipped, so nothing else
  # of the tree is needed.
  ctx="${work}/context"
  mkdir -p "${ctx}/.container-prebuilt/bin"
  install -s "${build}/server/tensorprep-server" "${build}/client/cpp/tensorprep" \
    "${ctx}/.container-prebuilt/bin/"
  "${repo}/scripts/runtime-packages.sh" "${ctx}/.container-prebuilt/bin/"* \
    >"${ctx}/.container-prebuilt/runtime-packages.txt"
  build_args+=(--build-arg BINARIES=prebuilt)
else
  ctx="${repo}"
  build_args+=(--build-arg BINARIES=build --build-arg "JOBS=${JOBS:-2}")
fi
log "building ${image} (${mode})"
t0="$(now)"
bah build --isolation chroot --format docker --pull=never --layers=false --target runtime \
  -f "${repo}/Dockerfile" "${build_args[@]}" -t "${image}" "${ctx}" >"${work}/build.log" 2>&1 ||
  { tail -n 40 "${work}/build.log" >&2; die "image build failed"; }
build_s=$(($(now) - t0))
log "image built in ${build_s} s"

# ---- the image's configuration --------------------------------------------------------------------
bah inspect --type image "${image}" >"${work}/inspect.json"
"${python}" -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["Docker"]["config"], sys.stdout)' \
  "${work}/inspect.json" >"${work}/config.json"
"${python}" - "${work}/config.json" <<'PY' || die "image configuration"
import json, sys
c = json.load(open(sys.argv[1]))
problems = []
if c.get("Entrypoint") != ["/usr/local/bin/tensorprep-server"]:
    problems.append(f"Entrypoint {c.get('Entrypoint')}")
user = (c.get("User") or "").split(":")[0]
if user in ("", "0", "root"):
    problems.append(f"User {c.get('User')!r} is root")
if set(c.get("ExposedPorts") or {}) != {"50051/tcp", "9464/tcp"}:
    problems.append(f"ExposedPorts {c.get('ExposedPorts')}")
hc = c.get("Healthcheck") or {}
if not hc.get("Test"):
    problems.append("no Healthcheck")
if problems:
    sys.exit("; ".join(problems))
print("container-test: image config: entrypoint, user", c["User"], "ports", sorted(c["ExposedPorts"]),
      "healthcheck", hc["Test"], file=sys.stderr)
PY
size_mb="$(bah images --format '{{.Size}}' "${image}" 2>/dev/null | head -n 1)" || size_mb="?"

# ---- run it ---------------------------------------------------------------------------------------------
free_port() { "${python}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port="$(free_port)"
metrics_port="$(free_port)"
ctr="$(bah from --pull=never "${image}")"
# chroot isolation shares the host's network: the server listens on the host's loopback.
bah config --env TENSORPREP_HOST=127.0.0.1 --env "TENSORPREP_PORT=${port}" \
  --env "TENSORPREP_METRICS_PORT=${metrics_port}" --env TENSORPREP_DEVICE=cpu \
  --env TENSORPREP_THREADS=2 --env TENSORPREP_GRACE_SECONDS=5 "${ctr}"
entrypoint="$("${python}" -c 'import json,sys; print(json.load(open(sys.argv[1]))["Entrypoint"][0])' "${work}/config.json")"
bah run --isolation chroot "${ctr}" -- "${entrypoint}" >"${work}/server.log" 2>&1 &
run_pid=$!
for _ in $(seq 1 100); do
  grep -q "ready on" "${work}/server.log" && break
  kill -0 "${run_pid}" 2>/dev/null || { cat "${work}/server.log" >&2; die "server exited at start"; }
  sleep 0.1
done
grep -q "ready on 127.0.0.1:${port} " "${work}/server.log" ||
  { cat "${work}/server.log" >&2; die "no ready line for port ${port}"; }
log "$(grep "ready on" "${work}/server.log")"
server_pid="$(ss -Hltnp "sport = :${port}" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)"
[[ -n "${server_pid}" ]] || die "cannot find the server's process"
uid="$(awk '/^Uid:/ {print $2}' "/proc/${server_pid}/status")"
[[ "${uid}" != 0 ]] || die "the server runs as root"
log "server pid ${server_pid} runs as uid ${uid}"

# From the host: health, one checked pipeline, the metrics that count it.
"${python}" - "127.0.0.1:${port}" "${metrics_port}" <<'PY' || die "calls from the host"
import sys, urllib.request
import grpc
import numpy as np
import tensorprep as tp

address, metrics_port = sys.argv[1], int(sys.argv[2])
with grpc.insecure_channel(address) as channel:
    # grpc.health.v1.Health/Check with an empty HealthCheckRequest; the response's field 1
    # (status) must be SERVING (1).
    check = channel.unary_unary("/grpc.health.v1.Health/Check")
    for service in (b"", b"\n\x1atensorprep.v1.Preprocessor"):
        reply = check(service, timeout=10)
        assert reply == b"\x08\x01", f"health of {service!r}: {reply!r}"

rng = np.random.default_rng(3)
images = rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8)
mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
with tp.Client(address, timeout=30, device="cpu", metrics=False) as client:
    out = client.process(images, [tp.flip("horizontal"), tp.cast("float32"), tp.normalize(mean, std)])
expected = (np.flip(images, axis=2).astype(np.float32) - np.float32(mean)) / np.float32(std)
assert out.shape == expected.shape and out.dtype == np.float32, (out.shape, out.dtype)
np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-5)

text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
lines = [l for l in text.splitlines() if l.startswith("tensorprep_requests_total{")
         and 'rpc="Process"' in l and 'code="OK"' in l]
assert lines and float(lines[0].split()[-1]) == 1.0, f"Process OK count: {lines}"
samples = sum(float(l.split()[-1]) for l in text.splitlines()
              if l.startswith("tensorprep_samples_total{"))
assert samples == 4.0, f"tensorprep_samples_total sums to {samples}, 4 were sent"
print("container-test: host calls: health SERVING, pipeline result matches NumPy, /metrics counts it",
      file=sys.stderr)
PY

# The image's own HEALTHCHECK command, run inside the container as Docker would.
hc_cmd="$("${python}" -c 'import json,sys; t=json.load(open(sys.argv[1]))["Healthcheck"]["Test"]; print(json.dumps(t[1:] if t[0]=="CMD" else ["/bin/sh","-c",t[1]]))' "${work}/config.json")"
mapfile -t hc_argv < <("${python}" -c 'import json,sys; [print(a) for a in json.loads(sys.argv[1])]' "${hc_cmd}")
hc_out="$(bah run --isolation chroot "${ctr}" -- "${hc_argv[@]}" 2>&1)" ||
  die "HEALTHCHECK command failed: ${hc_out}"
[[ "${hc_out}" == *SERVING* ]] || die "HEALTHCHECK printed: ${hc_out}"
log "HEALTHCHECK inside the container: ${hc_out}"

# SIGTERM: the drain must end with exit 0.
kill -TERM "${server_pid}"
rc=0
wait "${run_pid}" || rc=$?
run_pid=""
server_pid=""
[[ "${rc}" -eq 0 ]] || { cat "${work}/server.log" >&2; die "server exited ${rc} after SIGTERM"; }
grep -q "stopped" "${work}/server.log" || { cat "${work}/server.log" >&2; die "no drain message"; }
log "SIGTERM: drained and exited 0"
log "image size ${size_mb}, build ${build_s} s, total $(($(now) - t_start)) s"
echo "container test: OK"
