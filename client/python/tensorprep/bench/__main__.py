"""Comparison benchmark: the seed workloads, three ways, in one run on one machine.

    python -m tensorprep.bench --server-bin build/server/tensorprep-server --out bench-results

Ways (see workloads.py): (a) tf.numpy_function in tf.data with AUTOTUNE, (b) TensorFlow native
ops, (c) the service through this client, unary and streaming. Batches 1 and 64 by default.
Before any timing, every way's output for one batch is checked against the others; a mismatch
aborts the run (exit 1). Reports images/s (median of repeats), p50/p99 of the time the consumer
waits per batch, and CPU microseconds per image spent in this process (the training process) and
in the server. Writes benchmark.md, benchmark.json and benchmark.png to --out.
"""

import argparse
import contextlib
import gc
import itertools
import json
import os
import pathlib
import platform
import re
import signal
import subprocess
import sys
import threading

import numpy as np

WAYS = {
    "a": "(a) tf.numpy_function",
    "b": "(b) TF native ops",
    "unary": "(c) tensorprep unary",
    "stream": "(c) tensorprep stream",
}
TARGETS = [  # (workload, batch, way, baseline way, minimum ratio)
    ("W2", 64, "stream", "a", 3.0),
    ("W2", 64, "stream", "b", 1.0),
    ("W3", 64, "stream", "a", 2.0),
]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tensorprep.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--address", help="use a running server at HOST:PORT")
    g.add_argument("--server-bin", default=os.environ.get("TENSORPREP_SERVER_BIN",
                                                          "build/server/tensorprep-server"),
                   help="start this server binary on 127.0.0.1 (default: %(default)s)")
    p.add_argument("--server-threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    p.add_argument("--workloads", default="W1,W2,W3")
    p.add_argument("--batches", default="1,64")
    p.add_argument("--ways", default="a,b,unary,stream")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--min-time", type=float, default=1.5, help="seconds per repeat")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of warm-up per cell")
    p.add_argument("--inflight", type=int, default=4, help="requests in flight on the stream")
    p.add_argument("--chunk-mb", type=float, default=4.0,
                   help="stream: largest request in MB; bigger batches are split (0: never)")
    p.add_argument("--pool", type=int, default=64, help="distinct samples per workload")
    p.add_argument("--out", default="bench-results")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve the client-side histogram on 127.0.0.1:PORT during the run")
    p.add_argument("--no-chart", action="store_true")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="keep glibc's default allocator settings in this process "
                        "(see tensorprep.tune_malloc)")
    return p.parse_args(argv)


# --- server -------------------------------------------------------------------------------------
class LocalServer:
    def __init__(self, binary, threads, device):
        binary = pathlib.Path(binary)
        if not binary.is_file():
            sys.exit(f"bench: server binary {binary} not found (build it, or pass --address)")
        # As deployed (scripts/run-server.sh, the image): malloc on transparent huge pages.
        env = dict(os.environ)
        env.setdefault("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        self.tunables = env["GLIBC_TUNABLES"]
        self.proc = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             "--threads", str(threads), "--device", device],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
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

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


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


def first_batch_a_b(tf, wl, w, images, labels, n, callback):
    out = {}
    for way, ds in (("a", wl.tf_numpy_function_dataset(tf, w, images[:n], None if labels is None
                                                        else labels[:n], n, callback)),
                    ("b", wl.tf_native_dataset(tf, w, images[:n], None if labels is None
                                               else labels[:n], n))):
        it = iter(ds)
        b = next(it)
        out[way] = tuple(t.numpy() for t in b) if isinstance(b, tuple) else b.numpy()
        del it
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
    ways = [w.strip() for w in args.ways.split(",")]
    for way in ways:
        if way not in WAYS:
            sys.exit(f"bench: unknown way {way!r}; expected {sorted(WAYS)}")

    server = None if args.address else LocalServer(args.server_bin, args.server_threads,
                                                   args.device)
    address = args.address or server.address
    results = {"machine": machine_info(), "config": vars(args).copy(), "checks": {}, "rows": [],
               "versions": {"tensorflow": tf.__version__, "numpy": np.__version__}}
    results["config"]["address"] = address
    results["config"]["malloc_tuned"] = tuned
    if server:
        results["server"] = f"{server.ready_line} GLIBC_TUNABLES={server.tunables}"
    with contextlib.suppress(ImportError):
        import skimage
        results["versions"]["skimage"] = skimage.__version__
    import grpc
    results["versions"]["grpcio"] = grpc.__version__

    client = Client(address, timeout=600, device=args.device, metrics=registry or False)
    try:
        client.wait_ready(30)
        cells = [(w, b, way) for w in workloads for b in batches for way in ways]
        bar = tqdm(total=len(cells), unit="cell", file=sys.stderr) if tqdm else None
        for w in workloads:
            images, labels = wl.make_pool(w, max(args.pool, max(batches)))
            callback = tp_metrics.timed_callback(wl.python_callback(w), workload=w.name,
                                                 registry=registry)
            pipeline = wl.service_pipeline(w)

            # Equality first: one batch of 16 through every way.
            n = min(16, images.shape[0])
            outs = first_batch_a_b(tf, wl, w, images, labels, n, callback)
            chk = wl.service_batches(w, images[:n], None if labels is None else labels[:n], n)[0]
            outs["unary"] = client.process(chk[0] if labels is not None else chk, pipeline,
                                           labels=chk[1] if labels is not None else None,
                                           seed=1, workload=w.name)
            halves = ([(chk[0][:n // 2], chk[1][:n // 2]), (chk[0][n // 2:], chk[1][n // 2:])]
                      if labels is not None else [chk[:n // 2], chk[n // 2:]])
            streamed = list(client.stream(halves, pipeline, seed=1, inflight=2,
                                          workload=w.name))
            if labels is not None:
                outs["stream"] = (np.concatenate([s[0] for s in streamed]),
                                  np.concatenate([s[1] for s in streamed]))
                np.testing.assert_array_equal(outs["stream"][0], outs["unary"][0])
            else:
                outs["stream"] = np.concatenate(streamed)
                np.testing.assert_array_equal(outs["stream"], outs["unary"])
            found = wl.check(w, images[:n], None if labels is None else labels[:n], outs)
            results["checks"][w.name] = {"passed": True, "samples": n, "measured": found}
            print(f"[check] {w.name}: outputs of {', '.join(outs)} agree {found}",
                  file=sys.stderr)

            for b in batches:
                svc = wl.service_batches(w, images, labels, b)
                for way in ways:
                    if bar:
                        bar.set_description(f"{w.name} b{b} {way}")
                    rts = []
                    gen = it = None
                    if way in ("a", "b"):
                        ds = (wl.tf_numpy_function_dataset(tf, w, images, labels, b, callback)
                              if way == "a" else wl.tf_native_dataset(tf, w, images, labels, b))
                        it = iter(ds)
                        next_batch = lambda it=it: next(it)  # noqa: E731
                    elif way == "unary":
                        cyc = itertools.cycle(svc)

                        def next_batch(cyc=cyc):
                            item = next(cyc)
                            if isinstance(item, tuple):
                                res = client.call(item[0], pipeline, labels=item[1],
                                                  workload=w.name)
                            else:
                                res = client.call(item, pipeline, workload=w.name)
                            rts.append(res.round_trip_s)
                    else:
                        gen = client.stream(itertools.cycle(svc), pipeline,
                                            inflight=args.inflight, full=True, workload=w.name,
                                            chunk_mb=args.chunk_mb or None)
                        next_batch = lambda gen=gen: rts.append(next(gen).round_trip_s)  # noqa
                    m = ms.measure(next_batch, b, warmup_s=args.warmup, min_time_s=args.min_time,
                                   repeats=args.repeats, server_pid=server.pid if server else None,
                                   round_trips=rts if way in ("unary", "stream") else None)
                    if gen is not None:
                        gen.close()
                    del it, gen
                    gc.collect()
                    row = {"workload": w.name, "batch": b, "way": way, "label": WAYS[way]}
                    row.update(vars(m))
                    if way in ("a", "b"):
                        row["server_cpu_us_per_image"] = None
                    results["rows"].append(row)
                    msg = (f"{w.name} b{b:<3} {WAYS[way]:<24} {m.images_per_s:10.1f} img/s  "
                           f"p50 {m.p50_ms:8.3f} ms  p99 {m.p99_ms:8.3f} ms  "
                           f"cpu {m.train_cpu_us_per_image:8.1f} us/img")
                    if bar:
                        bar.write(msg)
                        bar.update(1)
                    else:
                        print(msg, file=sys.stderr)
        if bar:
            bar.close()
    finally:
        client.close()
        if server:
            server.stop()

    if registry is not None:
        results["client_histogram"] = report.histogram_summary(registry)
    report.add_ratios(results["rows"])
    results["targets"] = report.evaluate_targets(results["rows"], TARGETS)
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
    try:
        return run(args)
    except AssertionError as e:
        print(f"bench: outputs disagree, no timings reported: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
