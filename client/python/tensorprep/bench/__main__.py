"""Comparison benchmark: the seed workloads, every way, in one run on one machine.

    python -m tensorprep.bench --server-bin build/server/tensorprep-server --out out/bench
    python -m tensorprep.bench --workloads W4 --out out/bench-w4     # see w4.py
    python -m tensorprep.bench --workloads W5 --out out/bench-w5     # see w5.py

W4 (the ImageNet training transform against torchvision in a DataLoader and DALI CPU) runs on
its own, with its own ways (torch, dali, shm-unary, shm-stream, shm-placed; default
torch,dali,shm-stream,shm-placed), batch 64 by default, and its own report: see w4.py.
W5 (JPEG files in: decoding, random resized crop, flip, normalize against tf.data and DALI CPU)
likewise, with its ways tensorprep, tf, tf-fused, dali (default tensorprep,tf,dali), its image
sets (--sets) and its report: see w5.py.

Ways (see workloads.py):
  a           tf.numpy_function in tf.data with AUTOTUNE, the seed's callback (skimage / NumPy)
  cv          the same with an OpenCV callback (cv2.warpAffine / cv2.flip); W2 and W3 only
  b           TensorFlow native ops in the same tf.data shape
  dali        NVIDIA DALI's CPU pipeline (device_id=None), fed by fn.external_source
  unary       the service, one Process call per batch, tensors inline in the messages
  stream      the service, one ProcessStream, tensors inline
  shm-unary   the service, one Process call per batch, tensors in shared memory
  shm-stream  the service, one ProcessStream, tensors in shared memory
  shm-placed  shm-stream with each batch already in the client's shared memory (client.empty)
The shm ways connect over the server's Unix socket. shm-unary and shm-stream pass batches that
live in ordinary memory, which the client copies into its shared memory (one copy per sample,
like tf.data's batching, and what the tf.data adapter does); shm-placed copies nothing on the
way out: the ceiling for a producer that writes its samples straight into shared memory.
Batches 1 and 64 by default. A way whose package is missing (opencv-python-headless,
nvidia-dali: client/python/requirements-bench.txt) or whose server does not offer shared memory
is skipped with a note in the report; the run goes on.

Before any timing, every way's output for one batch is checked against the seed's callback and
the service's transports against each other; a mismatch aborts the run (exit 1). Reports
images/s (median of repeats), p50/p99 of the time the consumer waits per batch, CPU
microseconds per image spent in this process (the training process) and in the server, the
ratio to each baseline (a, cv, b, dali) and the 1-minute load average after each cell; then the
issue's targets as a pass/miss table. Writes benchmark.md, benchmark.json and benchmark.png to
--out.
"""

import argparse
import contextlib
import gc
import inspect
import itertools
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np

WAYS = {
    "a": "(a) tf.numpy_function, seed callback",
    "cv": "(a') tf.numpy_function + OpenCV",
    "b": "(b) TF native ops",
    "dali": "(d) DALI CPU",
    "unary": "(c) tensorprep unary, inline",
    "stream": "(c) tensorprep stream, inline",
    "shm-unary": "(c) tensorprep unary, shm",
    "shm-stream": "(c) tensorprep stream, shm",
    "shm-placed": "(c) tensorprep stream, shm, placed",
}
BASELINES = ("a", "cv", "b", "dali")  # ratio columns: the service and every way against these
SERVICE_WAYS = ("unary", "stream", "shm-unary", "shm-stream", "shm-placed")
SHM_WAYS = ("shm-unary", "shm-stream", "shm-placed")
# The targets (batch 64, ratios in one run): (workload, batch, baseline, minimum ratio),
# evaluated for every service way in the run.
TARGETS = [
    ("W2", 64, "a", 5.0), ("W2", 64, "cv", 1.5), ("W2", 64, "b", 2.0), ("W2", 64, "dali", 1.5),
    ("W3", 64, "a", 2.0), ("W3", 64, "b", 1.0), ("W3", 64, "dali", 1.5),
]
CPU_TARGETS = [("W2", 64, 200.0)]  # training-process CPU µs per image, at most
SHM_PREFIX = "/tensorprep-"  # what scripts/run-server.sh allows too


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tensorprep.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--address", help="use a running server at HOST:PORT")
    g.add_argument("--server-bin", default=os.environ.get("TENSORPREP_SERVER_BIN",
                                                          "build/server/tensorprep-server"),
                   help="start this server binary on 127.0.0.1 (default: %(default)s), with "
                        "shared memory allowed and a Unix socket when it has those flags")
    p.add_argument("--shm-address",
                   help="with --address: where the shm ways connect (e.g. unix:PATH, the "
                        "server's --uds socket); default the same address")
    p.add_argument("--no-uds", action="store_true",
                   help="the shm ways use TCP too, not the local server's Unix socket")
    p.add_argument("--server-threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--workloads", default="W1,W2,W3",
                   help="W1,W2,W3 (any of them), or W4 or W5 alone")
    p.add_argument("--batches", help="default 1,64 (W4: 64)")
    p.add_argument("--ways", help=f"default {','.join(WAYS)} (W4: torch,dali,shm-stream,"
                                  f"shm-placed; W5: tensorprep,tf,dali)")
    p.add_argument("--torch-workers", default="0,2",
                   help="W4: the DataLoader's worker counts, one row each (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.5, help="seconds per repeat")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per cell")
    p.add_argument("--inflight", type=int, default=4, help="requests in flight on the stream")
    p.add_argument("--chunk-mb", type=float, default=4.0,
                   help="inline stream: largest request in MB; bigger batches are split "
                        "(0: never). Shared-memory requests are never split")
    p.add_argument("--shm-pool-mb", type=int, default=1024,
                   help="the shm client's first shared-memory region")
    p.add_argument("--pool", type=int, default=None,
                   help="distinct samples per workload (default 64; W5: 256 per image set)")
    p.add_argument("--sets", default="256,varied",
                   help="W5: image sets, 256 (all 256x256) and/or varied (ImageNet-like sizes)")
    p.add_argument("--jpeg-quality", type=int, default=90, help="W5: JPEG quality of the files")
    p.add_argument("--dali-threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", help="where the report goes (default: out/bench; W4: out/bench-w4; "
                                 "W5: out/bench-w5)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve the client-side histogram on 127.0.0.1:PORT during the run")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="keep glibc's default allocator settings in this process "
                        "(see tensorprep.tune_malloc)")
    return p.parse_args(argv)


# --- server -------------------------------------------------------------------------------------
class LocalServer:
    """The server binary on 127.0.0.1 (any free port), as deployed: malloc on transparent huge
    pages; shared memory allowed under SHM_PREFIX and a Unix socket in a private temporary
    directory when the binary has --shm-prefix / --uds (older builds run without)."""

    def __init__(self, binary, threads, device, uds=True):
        binary = pathlib.Path(binary)
        if not binary.is_file():
            sys.exit(f"bench: server binary {binary} not found (build it, or pass --address)")
        env = dict(os.environ)
        env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        self.tunables = env["GLIBC_TUNABLES"]
        help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                                   timeout=30).stdout
        args = [str(binary), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                "--threads", str(threads), "--device", device]
        self.shm = "--shm-prefix" in help_text
        if self.shm:
            args += ["--shm-prefix", SHM_PREFIX]
        self.tmpdir = None
        self.uds = None
        if uds and "--uds" in help_text:
            self.tmpdir = tempfile.mkdtemp(prefix="tensorprep-bench-")
            self.uds = os.path.join(self.tmpdir, "server.sock")
            args += ["--uds", self.uds]
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, env=env)
        self.ready_line = None
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                if self.ready_line is None and re.search(r"ready on [^ ]+:(\d+)", line):
                    self.ready_line = line.strip()
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30) or self.ready_line is None:
            self.proc.kill()
            sys.exit("bench: the server did not become ready")
        port = re.search(r"ready on [^ ]+:(\d+)", self.ready_line).group(1)
        self.address = f"127.0.0.1:{port}"
        self.pid = self.proc.pid

    @property
    def shm_address(self):
        return f"unix:{self.uds}" if self.uds else self.address

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


# --- the run ------------------------------------------------------------------------------------
def machine_info():
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    return info


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def client_has_shm(client_cls):
    return "shm" in inspect.signature(client_cls.__init__).parameters


def available_ways(ways, args, client_cls, server, versions):
    """-> (ways that can run, {way: why skipped}). Imports the optional packages once."""
    skipped = {}
    run = []
    for way in ways:
        if way == "cv":
            try:
                import cv2
                versions["opencv"] = cv2.__version__
            except ImportError:
                skipped[way] = ("opencv-python-headless is not installed "
                                "(pip install -r client/python/requirements-bench.txt)")
                continue
        elif way == "dali":
            try:
                import nvidia.dali
                versions["dali"] = nvidia.dali.__version__
            except ImportError:
                skipped[way] = ("nvidia-dali is not installed "
                                "(pip install -r client/python/requirements-bench.txt)")
                continue
        elif way in SHM_WAYS:
            if not client_has_shm(client_cls):
                skipped[way] = "this client has no shared-memory transport"
                continue
            if server is not None and not server.shm:
                skipped[way] = "the server binary has no --shm-prefix (shared memory)"
                continue
        run.append(way)
    return run, skipped


def make_clients(client_cls, address, shm_address, ways, args, registry):
    """-> (inline client, shm client or None, why no shm client)."""
    common = {"timeout": 600, "device": args.device, "metrics": registry or False}
    has_shm = client_has_shm(client_cls)
    inline = client_cls(address, **common, **({"shm": False} if has_shm else {}))
    shm = None
    reason = None
    if has_shm and any(w in SHM_WAYS for w in ways):
        shm = client_cls(shm_address, shm=True, shm_pool_mb=args.shm_pool_mb,
                         shm_max_mb=max(2048, args.shm_pool_mb), **common)
        try:
            shm.connect(30)
        except Exception as e:  # noqa: BLE001 - the reason goes into the report
            reason = f"shared memory is not possible with this server: {e}"
            shm.close()
            shm = None
    return inline, shm, reason


def first_batch(tf, wl, w, ways, images, labels, n, callbacks, dali_threads):
    """Outputs of one batch of ``n`` through each non-service way (always the seed's first)."""
    out = {}
    lab = None if labels is None else labels[:n]
    for way in ["a"] + [x for x in ways if x in ("cv", "b", "dali")]:
        if way in out:
            continue
        if way == "dali":
            p = wl.dali_pipeline(w, images[:n], lab, n, dali_threads, seed=1)
            out[way] = wl.dali_next(p)
            del p
            continue
        ds = (wl.tf_native_dataset(tf, w, images[:n], lab, n) if way == "b" else
              wl.tf_numpy_function_dataset(tf, w, images[:n], lab, n, callbacks[way]))
        it = iter(ds)
        b = next(it)
        out[way] = tuple(t.numpy() for t in b) if isinstance(b, tuple) else b.numpy()
        del it
    return out


def service_outputs(client, w, pipeline, chk, has_labels, n, ways, prefix, placed=False):
    """The service's outputs for the check batch ``chk`` through ``client``: unary, and a stream
    of two halves; both must be equal bit for bit. ``placed``: also a stream of the halves
    placed in the client's shared memory beforehand (way shm-placed), equal too."""
    out = {}
    images = chk[0] if has_labels else chk
    unary = client.process(images, pipeline, labels=chk[1] if has_labels else None, seed=1,
                           workload=w.name)
    halves = ([(chk[0][:n // 2], chk[1][:n // 2]), (chk[0][n // 2:], chk[1][n // 2:])]
              if has_labels else [chk[:n // 2], chk[n // 2:]])
    streamed = list(client.stream(halves, pipeline, seed=1, inflight=2, workload=w.name))
    if has_labels:
        streamed = (np.concatenate([s[0] for s in streamed]),
                    np.concatenate([s[1] for s in streamed]))
        np.testing.assert_array_equal(streamed[0], unary[0])
        np.testing.assert_array_equal(streamed[1], unary[1])
    else:
        streamed = np.concatenate(streamed)
        np.testing.assert_array_equal(streamed, unary)
    values = [(f"{prefix}unary", unary), (f"{prefix}stream", streamed)]
    if placed:
        got = list(client.stream(placed_batches(client, halves), pipeline, seed=1, inflight=2,
                                 workload=w.name))
        got = ((np.concatenate([s[0] for s in got]), np.concatenate([s[1] for s in got]))
               if has_labels else np.concatenate(got))
        for u, v in zip(got, streamed) if has_labels else ((got, streamed),):
            if not np.array_equal(u, v):
                raise AssertionError(f"{w.name}: {prefix}placed differs from {prefix}stream")
        values.append((f"{prefix}placed", got))
    for way, value in values:
        if way in ways:  # copies: shared-memory slots go back to the pool
            out[way] = tuple(np.array(v) for v in value) if has_labels else np.array(value)
    return out


def placed_batches(client, svc):
    """The batches copied once into arrays of ``client``'s shared memory (client.empty)."""
    out = []
    for item in svc:
        parts = item if isinstance(item, tuple) else (item,)
        placed = []
        for a in parts:
            s = client.empty(a.shape, a.dtype)
            s[...] = a
            placed.append(s)
        out.append(tuple(placed) if isinstance(item, tuple) else placed[0])
    return out


def run(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .. import Client, tune_malloc
    tuned = False if args.no_tune_malloc else tune_malloc()
    import tensorflow as tf

    from .. import metrics as tp_metrics
    from . import measure as ms
    from . import report
    from . import workloads as wl

    try:
        from tqdm import tqdm
    except ImportError:  # progress as plain lines
        tqdm = None

    registry = None
    if tp_metrics.available():
        import prometheus_client
        registry = prometheus_client.CollectorRegistry()
        if args.metrics_port:
            prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1",
                                                registry=registry)

    workloads = [wl.ALL[name.strip()] for name in args.workloads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    for way in ways:
        if way not in WAYS:
            sys.exit(f"bench: unknown way {way!r}; expected {sorted(WAYS)}")

    server = None if args.address else LocalServer(args.server_bin, args.server_threads,
                                                   args.device, uds=not args.no_uds)
    address = args.address or server.address
    if server:
        shm_address = server.address if args.no_uds else server.shm_address
    else:
        shm_address = args.shm_address or args.address
    versions = {"tensorflow": tf.__version__, "numpy": np.__version__}
    results = {"machine": machine_info(), "config": vars(args).copy(), "checks": {}, "rows": [],
               "versions": versions, "skipped": {}, "notes": {},
               "load_average": {"start": load_average()}}
    results["config"].update(address=address, shm_address=shm_address, malloc_tuned=tuned)
    if server:
        # The socket's temporary directory says nothing about the run: name it generically.
        shown = [a.replace(server.tmpdir, "TMPDIR") if server.tmpdir else a
                 for a in server.args[1:]]
        results["server"] = (f"{server.ready_line} GLIBC_TUNABLES={server.tunables} "
                             f"args: {' '.join(shown)}")
    with contextlib.suppress(ImportError):
        import skimage
        versions["skimage"] = skimage.__version__
    import grpc
    versions["grpcio"] = grpc.__version__

    ways, skipped = available_ways(ways, args, Client, server, versions)
    results["ways"] = ways
    results["skipped"].update(skipped)
    for way, why in skipped.items():
        print(f"[skip] {way}: {why}", file=sys.stderr)

    client, shm_client, why = make_clients(Client, address, shm_address, ways, args, registry)
    if why:
        for way in SHM_WAYS:
            if way in ways:
                ways.remove(way)
                results["skipped"][way] = why
        print(f"[skip] {', '.join(SHM_WAYS)}: {why}", file=sys.stderr)
    def via(addr):
        return "a Unix socket" if addr.startswith("unix:") else "TCP"

    results["transports"] = {way: f"tensors inline in the messages, over {via(address)}"
                             for way in ("unary", "stream") if way in ways}
    if shm_client is not None:
        for way in SHM_WAYS:
            if way in ways:
                results["transports"][way] = (
                    f"tensors in shared memory, messages over {via(shm_address)}; "
                    + ("each batch placed in shared memory beforehand (client.empty), so "
                       "nothing is copied on the way out" if way == "shm-placed" else
                       "each batch copied into shared memory by the client"))
    if "cv" in ways:
        import cv2
        results["notes"]["cv"] = (f"OpenCV {cv2.__version__} with its default thread count "
                                  f"({cv2.getNumThreads()})")
    if "dali" in ways:
        results["notes"]["dali"] = (f"batch_size = the batch, num_threads={args.dali_threads}, "
                                    f"device_id=None, prefetch_queue_depth=2; each batch copied "
                                    f"out of DALI's buffers with as_array()")

    try:
        client.wait_ready(30)
        cells = [(w, b, way) for w in workloads for b in batches for way in ways]
        bar = tqdm(total=len(cells), unit="cell", file=sys.stderr) if tqdm else None
        for w in workloads:
            images, labels = wl.make_pool(w, max(args.pool, max(batches)))
            callbacks = {"a": tp_metrics.timed_callback(wl.python_callback(w), workload=w.name,
                                                        registry=registry)}
            if "cv" in ways:
                cb = wl.opencv_callback(w)
                if cb is not None:
                    callbacks["cv"] = tp_metrics.timed_callback(
                        cb, workload=f"{w.name}-opencv", registry=registry)
            w_ways = [x for x in ways if x != "cv" or "cv" in callbacks]
            if "cv" in ways and "cv" not in callbacks:
                results["skipped"][f"cv/{w.name}"] = ("no OpenCV form: the seed's callback is "
                                                      "already one NumPy pass")
            pipeline = wl.service_pipeline(w)

            # Equality first: one batch of 16 through every way.
            n = min(16, images.shape[0])
            outs = first_batch(tf, wl, w, w_ways, images, labels, n, callbacks, args.dali_threads)
            chk = wl.service_batches(w, images[:n], None if labels is None else labels[:n], n)[0]
            svc_outs = service_outputs(client, w, pipeline, chk, labels is not None, n,
                                       SERVICE_WAYS, "")
            if shm_client is not None:
                shm_outs = service_outputs(shm_client, w, pipeline, chk, labels is not None, n,
                                           SERVICE_WAYS, "shm-", placed="shm-placed" in w_ways)
                # The transport must not change a single bit.
                for a_way, b_way in (("unary", "shm-unary"), ("stream", "shm-stream")):
                    x, y = svc_outs[a_way], shm_outs[b_way]
                    for u, v in zip(x, y) if labels is not None else ((x, y),):
                        if not np.array_equal(u, v):
                            raise AssertionError(f"{w.name}: {b_way} differs from {a_way}")
                svc_outs.update(shm_outs)
            outs.update({k: v for k, v in svc_outs.items() if k in w_ways})
            found = wl.check(w, images[:n], None if labels is None else labels[:n], outs)
            results["checks"][w.name] = {"passed": True, "samples": n, "measured": found}
            print(f"[check] {w.name}: outputs of {', '.join(outs)} agree {found}",
                  file=sys.stderr)

            for b in batches:
                svc = wl.service_batches(w, images, labels, b)
                svc_placed = (placed_batches(shm_client, svc)
                              if shm_client is not None and "shm-placed" in w_ways else None)
                for way in w_ways:
                    if bar:
                        bar.set_description(f"{w.name} b{b} {way}")
                    rts = []
                    gen = it = pipe = None
                    transports = set()
                    if way in ("a", "cv", "b"):
                        ds = (wl.tf_native_dataset(tf, w, images, labels, b) if way == "b" else
                              wl.tf_numpy_function_dataset(tf, w, images, labels, b,
                                                           callbacks[way]))
                        it = iter(ds)
                        next_batch = lambda it=it: next(it)  # noqa: E731
                    elif way == "dali":
                        pipe = wl.dali_pipeline(w, images, labels, b, args.dali_threads)
                        next_batch = lambda pipe=pipe: wl.dali_next(pipe)  # noqa: E731
                    elif way in ("unary", "shm-unary"):
                        c = client if way == "unary" else shm_client
                        cyc = itertools.cycle(svc)

                        def next_batch(cyc=cyc, c=c):
                            item = next(cyc)
                            if isinstance(item, tuple):
                                res = c.call(item[0], pipeline, labels=item[1], workload=w.name)
                            else:
                                res = c.call(item, pipeline, workload=w.name)
                            rts.append(res.round_trip_s)
                            transports.add(getattr(res, "transport", "inline"))
                    else:
                        c = client if way == "stream" else shm_client
                        source = svc_placed if way == "shm-placed" else svc
                        gen = c.stream(itertools.cycle(source), pipeline,
                                       inflight=args.inflight, full=True, workload=w.name,
                                       chunk_mb=args.chunk_mb or None)

                        def next_batch(gen=gen):
                            res = next(gen)
                            rts.append(res.round_trip_s)
                            transports.add(getattr(res, "transport", "inline"))
                    m = ms.measure(next_batch, b, warmup_s=args.warmup, min_time_s=args.min_time,
                                   repeats=args.repeats, server_pid=server.pid if server else None,
                                   round_trips=rts if way in SERVICE_WAYS else None,
                                   warmup_batches=(2 if way.endswith("unary")
                                                   else args.inflight + 2))
                    if gen is not None:
                        gen.close()
                    del it, gen, pipe
                    gc.collect()
                    if way in SHM_WAYS and transports != {"shm"}:
                        sys.exit(f"bench: {w.name} b{b} {way}: results took {sorted(transports)}"
                                 f", not only shared memory (pool too small? --shm-pool-mb)")
                    row = {"workload": w.name, "batch": b, "way": way, "label": WAYS[way],
                           "load_avg_1m": load_average()}
                    row.update(vars(m))
                    if way not in SERVICE_WAYS:
                        row["server_cpu_us_per_image"] = None
                    results["rows"].append(row)
                    msg = (f"{w.name} b{b:<3} {WAYS[way]:<38} {m.images_per_s:10.1f} img/s  "
                           f"p50 {m.p50_ms:8.3f} ms  p99 {m.p99_ms:8.3f} ms  "
                           f"cpu {m.train_cpu_us_per_image:8.1f} us/img  "
                           f"load {row['load_avg_1m']}")
                    if bar:
                        bar.write(msg)
                        bar.update(1)
                    else:
                        print(msg, file=sys.stderr)
                del svc_placed
                gc.collect()
        if bar:
            bar.close()
    finally:
        client.close()
        if shm_client is not None:
            shm_client.close()
        if server:
            server.stop()

    results["load_average"]["end"] = load_average()
    if registry is not None:
        results["client_histogram"] = report.histogram_summary(registry)
    report.add_ratios(results["rows"], BASELINES)
    results["targets"] = report.evaluate_targets(results["rows"], TARGETS, CPU_TARGETS,
                                                 [w for w in SERVICE_WAYS if w in ways])
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = report.markdown(results)
    (out / "benchmark.md").write_text(md)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2, default=float))
    if not args.no_chart:
        report.chart(results, out / "benchmark.png")
    print(md)
    print(f"wrote {out / 'benchmark.md'}, {out / 'benchmark.json'}"
          f"{'' if args.no_chart else ', ' + str(out / 'benchmark.png')}", file=sys.stderr)
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    try:
        for alone in ("W4", "W5"):
            if alone in workloads and workloads != [alone]:
                sys.exit(f"bench: {alone} runs on its own (its ways differ): --workloads {alone}")
        if workloads == ["W5"]:
            from . import w5
            return w5.run(args)
        args.pool = args.pool or 64
        if workloads == ["W4"]:
            from . import w4
            return w4.run(args)
        args.batches = args.batches or "1,64"
        args.ways = args.ways or ",".join(WAYS)
        args.out = args.out or "out/bench"
        return run(args)
    except AssertionError as e:
        print(f"bench: outputs disagree, no timings reported: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
