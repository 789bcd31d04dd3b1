#!/usr/bin/env bash
# End-to-end benchmark: tensorprep against the gRPC transport ceiling, in one run on one machine.
#
# Starts, on 127.0.0.1 with ports picked by the kernel:
#   - tensorprep-server (CPU),
#   - tensorprep-echo-server --mode raw   (answers each request with its own bytes: the ceiling),
#   - tensorprep-echo-server --mode typed (parses and re-serialises: the protobuf ceiling),
# then runs the same client (`tensorprep bench`) against each, for W1, W2, W3 at batch 1 and 64,
# unary and stream, plus `small` (1x64x64x3 uint8 flip). Targets are interleaved per case and
# every case runs --rounds times; the table gives medians and tensorprep's ratios to the raw echo.
#
# Usage: bench/e2e.sh [--build DIR] [--rounds N] [--scale F] [--threads N] [--markdown FILE]
#                     [--json FILE] [--only REGEX] [--server-env NAME=VALUE]... [--device D]
#   --build     build directory holding server/, client/cpp/ and bench/ binaries (default: build)
#   --rounds    repetitions of every case (default 3)
#   --scale     multiplies the request counts (default 1; 0.2 for a quick look)
#   --threads   tensorprep-server --threads (default: all cores)
#   --markdown  also write the table as Markdown to FILE
#   --json      also write every raw measurement (one JSON object per line) to FILE
#   --only      run only the cases whose "workload batch" matches REGEX (e.g. '^W[23] 64$')
#   --server-env  set an environment variable for tensorprep-server only (repeatable), e.g.
#               GLIBC_TUNABLES=glibc.malloc.mmap_threshold=268435456 to try malloc settings
#   --device    cpu (default), cuda or auto: tensorprep-server's --device and the device every
#               request asks for. With cuda or auto, W2 also runs at batch 256 (the GPU target's
#               size); the echo servers stay the transport ceiling either way.
set -euo pipefail

build=build
rounds=3
scale=1
threads=0
markdown=""
json_out=""
only=""
server_env=()
device=cpu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) build="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --scale) scale="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --markdown) markdown="$2"; shift 2 ;;
    --json) json_out="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --server-env) server_env+=("$2"); shift 2 ;;
    --device) device="$2"; shift 2 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "e2e.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

server_bin="$build/server/tensorprep-server"
echo_bin="$build/bench/tensorprep-echo-server"
cli="$build/client/cpp/tensorprep"
for b in "$server_bin" "$echo_bin" "$cli"; do
  [[ -x "$b" ]] || { echo "e2e.sh: $b not found; build first (TENSORPREP_BUILD_BENCHMARKS=ON)" >&2; exit 2; }
done
[[ "$threads" -gt 0 ]] || threads=$(nproc)

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts a server in the background (recorded for cleanup) and sets $port from its
# "ready on HOST:PORT" line. Not run in a subshell, so that the pid reaches `pids`.
start() {
  local name="$1"; shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  port=""
  for _ in $(seq 1 200); do
    port=$(sed -nE 's/.*ready on [^ ]+:([0-9]+).*/\1/p' "$work/$name.out" | head -n1)
    [[ -n "$port" ]] && break
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then break; fi
    sleep 0.05
  done
  if [[ -z "$port" ]]; then
    echo "e2e.sh: $name did not start:" >&2
    cat "$work/$name.err" >&2
    exit 1
  fi
}

start tensorprep env "${server_env[@]}" "$server_bin" --host 127.0.0.1 --port 0 --metrics-port 0 \
  --device "$device" --threads "$threads" --max-message-mb 256 --stream-inflight-mb 1024
tp_port=$port
start echo_raw "$echo_bin" --host 127.0.0.1 --port 0 --mode raw
raw_port=$port
start echo_typed "$echo_bin" --host 127.0.0.1 --port 0 --mode typed
typed_port=$port
echo "tensorprep on :$tp_port (device=$device, threads=$threads${server_env:+, env ${server_env[*]}}), raw echo on :$raw_port, typed echo on :$typed_port" >&2

# Cases: workload batch requests(unary) requests(stream). Counts keep each case near a second.
cases=(
  "small 1 400 1000"
  "W1 1 300 600"
  "W1 64 12 24"
  "W2 1 150 300"
  "W2 64 6 12"
  "W3 1 150 300"
  "W3 64 6 12"
)
[[ $device == cpu ]] || cases+=("W2 256 3 6")
results="$work/results.jsonl"
: >"$results"
scaled() { awk -v n="$1" -v s="$scale" 'BEGIN { v = int(n * s); print (v < 3 ? 3 : v) }'; }

for round in $(seq 1 "$rounds"); do
  for c in "${cases[@]}"; do
    read -r wl batch n_unary n_stream <<<"$c"
    if [[ -n "$only" ]] && ! [[ "$wl $batch" =~ $only ]]; then continue; fi
    for mode in unary stream; do
      if [[ $mode == unary ]]; then n=$(scaled "$n_unary"); else n=$(scaled "$n_stream"); fi
      for target in echo_raw tensorprep echo_typed; do
        case $target in
          tensorprep) port=$tp_port ;;
          echo_raw) port=$raw_port ;;
          echo_typed) port=$typed_port ;;
        esac
        line=$("$cli" --address "127.0.0.1:$port" bench --workload "$wl" --batch "$batch" \
          --mode "$mode" --requests "$n" --warmup 3 --inflight 4 --device "$device" --json)
        echo "{\"target\":\"$target\",\"round\":$round,\"r\":$line}" >>"$results"
      done
    done
  done
  echo "round $round of $rounds done" >&2
done

[[ -n "$json_out" ]] && cp "$results" "$json_out"

python3 - "$results" "$markdown" "$threads" <<'PY'
import json, statistics, sys, platform, os

path, markdown, threads = sys.argv[1], sys.argv[2], sys.argv[3]
rows = {}
for line in open(path):
    o = json.loads(line)
    r = o["r"]
    key = (r["workload"], r["batch"], r["mode"])
    rows.setdefault(key, {}).setdefault(o["target"], []).append(r)

def med(rs, field):
    return statistics.median(x[field] for x in rs)

order = {"small": 0, "W1": 1, "W2": 2, "W3": 3}
lines = []
hdr = ("| workload | batch | mode | MB/request | echo img/s | tensorprep img/s | ratio | "
       "typed-echo ratio | echo p50 ms | tp p50 ms | p50 ratio | echo p99 ms | tp p99 ms | "
       "p99 ratio | tp server p50 ms | tp kernel p50 ms |")
lines.append(hdr)
lines.append("|" + "---|" * 16)
for key in sorted(rows, key=lambda k: (order.get(k[0], 9), k[1], k[2] != "unary")):
    t = rows[key]
    if "tensorprep" not in t or "echo_raw" not in t:
        continue
    e, p = t["echo_raw"], t["tensorprep"]
    y = t.get("echo_typed", e)
    e_ips, p_ips, y_ips = med(e, "images_per_s"), med(p, "images_per_s"), med(y, "images_per_s")
    mb = med(p, "request_mb_per_s") / p_ips * key[1] if p_ips else 0
    lines.append(
        "| {} | {} | {} | {:.2f} | {:.0f} | {:.0f} | **{:.2f}** | {:.2f} | {:.3f} | {:.3f} | "
        "**{:.2f}** | {:.3f} | {:.3f} | {:.2f} | {:.3f} | {:.3f} |".format(
            key[0], key[1], key[2], mb, e_ips, p_ips, p_ips / e_ips, y_ips / e_ips,
            med(e, "p50_ms"), med(p, "p50_ms"), med(p, "p50_ms") / med(e, "p50_ms"),
            med(e, "p99_ms"), med(p, "p99_ms"), med(p, "p99_ms") / med(e, "p99_ms"),
            med(p, "server_p50_ms"), med(p, "kernel_p50_ms")))
rounds = max(len(v) for t in rows.values() for v in t.values())
note = ("ratio = tensorprep images/s / raw echo images/s (same client, same bytes); "
        "p50/p99 ratio = tensorprep latency / raw echo latency; typed-echo ratio = the protobuf "
        "echo's images/s / raw echo's. Medians of {} rounds; server threads = {}; {} cores."
        .format(rounds, threads, os.cpu_count()))
table = "\n".join(lines)
print(table)
print()
print(note)
if markdown:
    with open(markdown, "w") as f:
        f.write(table + "\n\n" + note + "\n")
PY
