#!/usr/bin/env python3
"""The server's warp kernel time against cv2.warpAffine, per image, on the same distinct images.

Starts tensorprep-server on 127.0.0.1 (a free port) with --threads 1 and --device cpu, both this
process and the server with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (as deployed; this script
re-executes itself with it when it is missing). For each dtype (float32 uniform [0, 1), uint8) and
interpolation (bilinear, nearest) it rotates COUNT distinct SIZE x SIZE x 3 images by 30 degrees
with an edge border:
  - "batch 1": COUNT one-image requests; "batch 64" (batch COUNT): one COUNT-image request. The
    figure is the server's own kernel time (the response's timings.kernel_ns) per image, which
    does not depend on how the tensors travelled (the transport is printed all the same);
  - cv2.warpAffine in this process, cv2.setNumThreads(1), the same map
    (cv2.getRotationMatrix2D(((w-1)/2, (h-1)/2), 30, 1), INTER_LINEAR / INTER_NEAREST,
    BORDER_REPLICATE), one call per image into a fresh result as a user's callback would do.
Every round runs every case once; the table gives medians over the rounds.

    .venv/bin/python bench/warp_server.py --rounds 5 --markdown warp_server.md

Without OpenCV (opencv-python-headless, client/python/requirements-bench.txt) the cv2 column
says n/a and the kernel times are still measured.
"""

import argparse
import json
import math
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

TUNABLE = "glibc.malloc.hugetlb=1"
REPO = pathlib.Path(__file__).resolve().parents[1]
READY = re.compile(r"ready on [^ ]+:(\d+)")
DTYPES = ("float32", "uint8")
INTERPS = ("bilinear", "nearest")
ANGLE = 30.0


def with_tunable(env):
    """GLIBC_TUNABLES of `env` with glibc.malloc.hugetlb=1 added (other tunables kept)."""
    current = env.get("GLIBC_TUNABLES", "")
    if TUNABLE in current.split(":"):
        return current
    return f"{current}:{TUNABLE}" if current else TUNABLE


def reexec_with_tunable():
    """glibc reads its tunables at start-up only: run this script again with them set."""
    tunables = with_tunable(os.environ)
    if tunables == os.environ.get("GLIBC_TUNABLES"):
        return
    env = dict(os.environ, GLIBC_TUNABLES=tunables)
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", help="tensorprep-server binary (default: build/server/"
                                    "tensorprep-server, else the first one under build/)")
    p.add_argument("--rounds", type=int, default=5, help="rounds; medians are reported (5)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (256)")
    p.add_argument("--count", type=int, default=64,
                   help="distinct images, and the size of the large request (64; >= 2)")
    p.add_argument("--markdown", help="also write the report to this file")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.size < 2 or args.count < 2:
        p.error("need --rounds >= 1, --size >= 2, --count >= 2")
    return args


def find_server(explicit):
    if explicit:
        path = pathlib.Path(explicit)
    else:
        path = REPO / "build" / "server" / "tensorprep-server"
        if not path.is_file():
            found = sorted(p for p in (REPO / "build").rglob("tensorprep-server") if p.is_file())
            path = found[0] if found else path
    if not path.is_file():
        sys.exit(f"warp_server: server binary {path} not found (build it, or pass --server)")
    return path


class Server:
    """tensorprep-server on 127.0.0.1 with --threads 1; stop() ends it by its PID."""

    def __init__(self, binary, env):
        self.args = [str(binary), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                     "--threads", "1", "--device", "cpu"]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env=env)
        self.pid = self.proc.pid
        self.lines = []
        self.ready_line = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if self.ready_line is None and READY.search(line):
                    self.ready_line = line.strip()
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or self.ready_line is None:
            self.stop()
            sys.exit("warp_server: the server did not become ready:\n" + "\n".join(self.lines))
        self.address = f"127.0.0.1:{READY.search(self.ready_line).group(1)}"

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()


def make_images(np, dtype, count, size):
    rng = np.random.default_rng(1 if dtype == "float32" else 2)
    shape = (count, size, size, 3)
    if dtype == "float32":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def kernel_per_image(client, tp, images, interp, batch):
    """Server kernel seconds per image for images sent in requests of `batch` images, and the
    results (concatenated) and the transport of the last response."""
    pipeline = [tp.rotate(ANGLE, interpolation=interp, border="edge")]
    kernel, outs, transport = 0.0, [], None
    for first in range(0, len(images), batch):
        res = client.call(images[first:first + batch], pipeline, copy=True)
        kernel += res.timings["kernel"]
        outs.append(res.images)
        transport = res.transport
    return kernel / len(images), outs, transport


def cv2_per_image(cv2, images, interp):
    """cv2.warpAffine seconds per image, one call per image, and the results."""
    h, w = images.shape[1:3]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), ANGLE, 1)
    flags = cv2.INTER_LINEAR if interp == "bilinear" else cv2.INTER_NEAREST
    outs = []
    start = time.perf_counter()
    for img in images:
        outs.append(cv2.warpAffine(img, m, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE))
    return (time.perf_counter() - start) / len(images), outs


def uptime():
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def fmt_us(seconds):
    if seconds is None:
        return "n/a"
    us = seconds * 1e6
    return f"{us:,.0f} µs/image" if us >= 100 else f"{us:.1f} µs/image"


def report(figures, meta):
    count = meta["count"]
    lines = [f"Rotate {ANGLE:g}°, edge border, {count} distinct {meta['size']}×{meta['size']}×3 "
             f"images; server --threads 1, kernel time from the responses' timings.kernel_ns "
             f"(transport: {meta['transport']}); cv2.warpAffine {meta['cv2']} in the client, "
             f"setNumThreads(1), a fresh result per call; GLIBC_TUNABLES={meta['tunables']} in "
             f"both processes; medians of {meta['rounds']} round(s).",
             "",
             "| | tensorprep kernel | cv2.warpAffine | ratio |",
             "| --- | ---: | ---: | ---: |"]
    for f in figures:
        ratio = "n/a" if f["cv2_s"] is None else f"{f['ours_s'] / f['cv2_s']:.2f}"
        lines.append(f"| {f['dtype']} {f['interp']}, batch {f['batch']} | {fmt_us(f['ours_s'])} "
                     f"| {fmt_us(f['cv2_s'])} | {ratio} |")
    lines.append("")
    for dtype in DTYPES:
        for interp in INTERPS:
            b = {f["batch"]: f["ours_s"] for f in figures
                 if f["dtype"] == dtype and f["interp"] == interp}
            lines.append(f"- {dtype} {interp}: batch {count} / batch 1 per image = "
                         f"{b[count] / b[1]:.2f}")
    lines.append("")
    lines.append(f"uptime before: {meta['uptime_before']}")
    lines.append(f"uptime after:  {meta['uptime_after']}")
    if meta.get("max_abs_diff"):
        lines.append("")
        lines.append("max |tensorprep − cv2| (OpenCV quantises positions to 1/32 pixel): " +
                     ", ".join(f"{k} {v:g}" for k, v in meta["max_abs_diff"].items()))
    return "\n".join(lines)


def run(args, server_bin):
    import numpy as np
    import tensorprep as tp
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        cv2 = None

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    images = {d: make_images(np, d, args.count, args.size) for d in DTYPES}
    batches = (1, args.count)
    samples = {(d, i, b): [] for d in DTYPES for i in INTERPS for b in batches}
    cv_samples = {(d, i): [] for d in DTYPES for i in INTERPS}
    max_diff = {}
    meta = {"count": args.count, "size": args.size, "rounds": args.rounds, "tunables": tunables,
            "cv2": cv2.__version__ if cv2 else "n/a (not installed)", "uptime_before": uptime()}

    server = Server(server_bin, dict(os.environ, GLIBC_TUNABLES=tunables))
    meta["server_pid"] = server.pid
    meta["server"] = server.ready_line
    try:
        with tp.Client(server.address, device="cpu", metrics=False) as client:
            # Warm-up: the connection, the transport decision, the server's first allocations.
            for d in DTYPES:
                for i in INTERPS:
                    kernel_per_image(client, tp, images[d][:1], i, 1)
            transport = None
            for _ in range(args.rounds):
                for d in DTYPES:
                    for i in INTERPS:
                        outs = None
                        for b in batches:
                            s, outs, transport = kernel_per_image(client, tp, images[d], i, b)
                            samples[(d, i, b)].append(s)
                        if cv2 is not None:
                            s, cv_outs = cv2_per_image(cv2, images[d], i)
                            cv_samples[(d, i)].append(s)
                            ours = np.concatenate(outs).astype(np.float64)
                            diff = float(np.max(np.abs(ours - np.stack(cv_outs))))
                            max_diff[f"{d} {i}"] = max(diff, max_diff.get(f"{d} {i}", 0.0))
            meta["transport"] = transport
    finally:
        server.stop()
    meta["uptime_after"] = uptime()
    meta["max_abs_diff"] = max_diff
    figures = []
    for d in DTYPES:
        for i in INTERPS:
            cv = statistics.median(cv_samples[(d, i)]) if cv_samples[(d, i)] else None
            for b in batches:
                figures.append({"dtype": d, "interp": i, "batch": b,
                                "ours_s": statistics.median(samples[(d, i, b)]), "cv2_s": cv})
    return figures, meta


def main(argv=None):
    args = parse_args(argv)
    server_bin = find_server(args.server)
    reexec_with_tunable()
    # SIGTERM ends the run through the finally blocks (the server is stopped by its PID).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    figures, meta = run(args, server_bin)
    bad = [f for f in figures if not (math.isfinite(f["ours_s"]) and f["ours_s"] > 0)]
    text = report(figures, meta)
    print(text)
    if args.markdown:
        pathlib.Path(args.markdown).write_text(text + "\n")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"figures": figures, "meta": meta},
                                                      indent=1) + "\n")
    if bad:
        print(f"warp_server: kernel times that are not positive: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
