"""Client-side load for the metrics tests: a separate Python process, as a training job would be.

It exports the client family (tensorprep_client_call_duration_seconds) with prometheus_client on
127.0.0.1 (every series at zero first; prints "exporting" and waits for "go" on stdin, sent once
Prometheus has scraped it), drives known traffic at a running server (successful and failing unary calls, a stream
with good and bad messages, encoded images, ListOps), observes the remote calls and the in-process Python
callbacks they replace, writes a JSON summary of exactly what it sent and received, prints
"ready", and keeps serving its metrics until its stdin closes.

    python client_load.py --server 127.0.0.1:PORT --metrics-port P --summary out.json

The summary is the independent reference the tests compare Prometheus's answers with.
"""

import argparse
import collections
import json
import pathlib
import sys
import uuid

import grpc
import numpy as np
import prometheus_client

try:
    import tensorprep as tp
except ImportError:  # running from a source checkout without the package installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "client" / "python"))
    import tensorprep as tp
from tensorprep import metrics as tp_metrics
from tensorprep._stubs import pb, pb_grpc

# How many of each; small, so the test stays quick on two shared cores.
N_W1 = 20  # unary, add 1 to 100,000 int32
N_W2 = 8  # unary, rotate 256x256x3 float32 by 30 degrees
N_W3_BATCHES = 6  # stream, random flip of 4 images + labels per message
W3_BATCH = 4
N_INVALID_UNARY = 7  # unary with an unspecified dtype
N_STREAM_RAW_OK = 3  # raw stream: good messages
N_STREAM_RAW_BAD = 2  # raw stream: messages whose bytes do not match shape x dtype
N_LIST_OPS = 3
N_W5 = 3  # unary, 3 PNG files of their own sizes center-cropped to one size (image_decode stage)
N_CALLBACKS = 20  # in-process Python callbacks per workload
# The (path, workload) series of the client family this process observes.
SERIES = ("remote_unary W1", "remote_unary W2", "remote_stream W3", "remote_unary W5",
          "python_callback W1", "python_callback W3")


_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def _payload_bytes(images, aux):
    """Tensor bytes as the server counts them: an encoded file is its length."""
    def size(x):
        return sum(len(f) for f in x) if isinstance(x, list) else int(x.nbytes)
    return size(images) + sum(size(a) for a in aux.values())


class Tally:
    """What was sent, what came back, and the server timings it reported."""

    def __init__(self, marker):
        self.marker = marker
        self.requests = collections.Counter()  # "rpc code" -> count
        self.samples_ok = 0
        self.bytes_in_ok = 0  # tensor payload of requests that succeeded
        self.bytes_in_failed = 0  # tensor payload of requests that failed
        self.bytes_out = 0  # tensor payload of responses
        self.timings = collections.Counter()  # stage -> seconds summed over OK responses
        self.timings_count = 0
        self.devices = collections.Counter()
        self.client_calls = collections.Counter()  # "path workload" -> count
        self.errors = []  # unexpected outcomes, reported by the test

    def ok(self, rpc, res, images, aux):
        self.requests[f"{rpc} OK"] += 1
        self.samples_ok += len(images) if isinstance(images, list) else int(images.shape[0])
        self.bytes_in_ok += _payload_bytes(images, aux)
        self.bytes_out += _payload_bytes(res.images, res.aux)
        for stage in ("decode", "queue", "kernel", "encode", "image_decode", "total"):
            self.timings[stage] += res.timings[stage]
        self.timings_count += 1
        self.devices[res.device] += 1


def run_w1(client, tally):
    x = np.arange(100_000, dtype=np.int32).reshape(1, 250, 400)
    for i in range(N_W1):
        res = client.call(x, [tp.add(1)], workload="W1", request_id=f"{tally.marker}-w1-{i}")
        if not np.array_equal(res.images, x + 1):
            tally.errors.append("W1 result differs from x + 1")
        tally.ok("Process", res, x, {})
        tally.client_calls["remote_unary W1"] += 1


def run_w2(client, tally):
    rng = np.random.default_rng(2)
    img = rng.random((1, 256, 256, 3), dtype=np.float32)
    for i in range(N_W2):
        res = client.call(img, [tp.rotate(30, interpolation="bilinear", border="edge")],
                          workload="W2", request_id=f"{tally.marker}-w2-{i}")
        if res.images.shape != img.shape:
            tally.errors.append(f"W2 shape {res.images.shape}")
        tally.ok("Process", res, img, {})
        tally.client_calls["remote_unary W2"] += 1


def run_w3_stream(client, tally):
    rng = np.random.default_rng(3)
    batches = [(rng.random((W3_BATCH, 256, 256, 3), dtype=np.float32),
                rng.integers(0, 20, (W3_BATCH, 256, 256), dtype=np.int32))
               for _ in range(N_W3_BATCHES)]
    results = client.stream(iter(batches), [tp.random_flip(0.5)], inflight=3, seed=11, full=True,
                            workload="W3")
    for (images, labels), res in zip(batches, results):
        tally.ok("ProcessStream", res, images, {"labels": labels})
        tally.client_calls["remote_stream W3"] += 1
        # Each sample is either unchanged or mirrored, and its label followed it.
        for k in range(W3_BATCH):
            flipped = np.array_equal(res.images[k], images[k, :, ::-1])
            if not (flipped or np.array_equal(res.images[k], images[k])):
                tally.errors.append(f"W3 sample {k} neither flipped nor unchanged")
            want = labels[k, :, ::-1] if flipped else labels[k]
            if not np.array_equal(res.aux["labels"][k], want):
                tally.errors.append(f"W3 label {k} did not follow its image")


def run_w5(client, tally):
    """Encoded images in: PNG files of three sizes (even margins, so the centre is exact),
    center-cropped to one dense batch."""
    import io

    from PIL import Image
    rng = np.random.default_rng(5)
    sizes = [(40, 52), (62, 34), (32, 32)]
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    files = []
    for a in arrays:
        out = io.BytesIO()
        Image.fromarray(a).save(out, format="PNG")
        files.append(out.getvalue())
    for i in range(N_W5):
        res = client.call(files, [tp.ops.center_crop(24, 24)], workload="W5",
                          request_id=f"{tally.marker}-w5-{i}")
        want = np.stack([a[(h - 24) // 2:(h + 24) // 2, (w - 24) // 2:(w + 24) // 2]
                         for a, (h, w) in zip(arrays, sizes)])
        if not np.array_equal(res.images, want):
            tally.errors.append("W5 result differs from the center crops")
        tally.ok("Process", res, files, {})
        tally.client_calls["remote_unary W5"] += 1


def run_invalid_unary(channel, tally):
    stub = pb_grpc.PreprocessorStub(channel)
    for i in range(N_INVALID_UNARY):
        req = pb.ProcessRequest(
            request_id=f"{tally.marker}-bad-{i}",
            images=pb.Tensor(dtype=pb.DTYPE_UNSPECIFIED, shape=[1, 4, 4], data=bytes(16)),
            pipeline=pb.Pipeline(ops=[pb.Op(add=pb.ArithmeticOp(value=[1.0]))]),
            device=pb.DEVICE_CPU)
        try:
            stub.Process(req, timeout=30)
            tally.errors.append("a request with DTYPE_UNSPECIFIED succeeded")
            tally.requests["Process OK"] += 1
        except grpc.RpcError as e:
            tally.requests[f"Process {e.code().name}"] += 1
            tally.bytes_in_failed += 16


def run_raw_stream(channel, tally):
    """Good and bad messages on one stream: a bad one gets an error response, the stream lives."""
    stub = pb_grpc.PreprocessorStub(channel)
    img = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(1, 2, 3, 5)
    requests, expected_ok = [], set()
    for i in range(N_STREAM_RAW_OK + N_STREAM_RAW_BAD):
        rid = f"{tally.marker}-s-{i}"
        if i < N_STREAM_RAW_OK:
            data, expected_ok = img.tobytes(), expected_ok | {rid}
        else:
            data = img.tobytes()[:-1]  # one byte short of shape x dtype
        requests.append(pb.ProcessRequest(
            request_id=rid,
            images=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=list(img.shape), data=data),
            pipeline=pb.Pipeline(ops=[pb.Op(flip=pb.FlipOp(axis=pb.FLIP_AXIS_VERTICAL))]),
            device=pb.DEVICE_CPU))
    for resp in stub.ProcessStream(iter(requests), timeout=30):
        if resp.HasField("error"):
            tally.requests[f"ProcessStream {_CODE_NAMES.get(resp.error.code, 'UNKNOWN')}"] += 1
            tally.bytes_in_failed += len(img.tobytes()) - 1
            continue
        if resp.request_id not in expected_ok:
            tally.errors.append(f"stream response for {resp.request_id} should have failed")
        out = np.frombuffer(resp.images.data, np.uint8).reshape(tuple(resp.images.shape))
        if not np.array_equal(out, img[:, ::-1]):
            tally.errors.append("raw stream flip result differs from numpy.flipud")
        res = tp.Result(images=out, aux={}, device="cpu" if resp.device == pb.DEVICE_CPU else
                        "cuda", request_id=resp.request_id, round_trip_s=0.0,
                        timings={"decode": resp.timings.decode_ns * 1e-9,
                                 "queue": resp.timings.queue_ns * 1e-9,
                                 "kernel": resp.timings.kernel_ns * 1e-9,
                                 "encode": resp.timings.encode_ns * 1e-9,
                                 "image_decode": resp.timings.image_decode_ns * 1e-9,
                                 "total": resp.timings.total_ns * 1e-9})
        tally.ok("ProcessStream", res, img, {})


def run_list_ops(client, tally):
    for _ in range(N_LIST_OPS):
        client.list_ops(timeout=30)
        tally.requests["ListOps OK"] += 1


def run_callbacks(registry, tally):
    """The in-process Python way each workload is done today, timed into the same family."""
    add_one = tp_metrics.timed_callback(lambda x: x + 1, workload="W1", registry=registry)
    x = np.arange(100_000, dtype=np.int32).reshape(1, 250, 400)

    def flip_both(images, labels):
        return np.fliplr(images).copy(), np.fliplr(labels).copy()

    flip = tp_metrics.timed_callback(flip_both, workload="W3", registry=registry)
    img = np.zeros((256, 256, 3), np.float32)
    lab = np.zeros((256, 256), np.int32)
    for _ in range(N_CALLBACKS):
        add_one(x)
        tally.client_calls["python_callback W1"] += 1
        flip(img, lab)
        tally.client_calls["python_callback W3"] += 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--summary", required=True)
    args = parser.parse_args()

    registry = prometheus_client.CollectorRegistry()
    # Every series this process will observe exists, at zero, before the first scrape: a series
    # born with its first observation has no zero sample before it, so rate() would miss that
    # first increment (the server creates its series up front for the same reason).
    family = tp_metrics.histogram(registry)
    for key in SERIES:
        family.labels(*key.split())
    prometheus_client.start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)
    print("exporting", flush=True)
    if sys.stdin.readline().strip() != "go":  # the test has seen Prometheus scrape us once
        sys.exit("client_load: expected 'go' on stdin")

    # Request ids carry a marker the test looks for in every label value of the server's metrics.
    tally = Tally(f"reqid-{uuid.uuid4().hex[:12]}")
    options = [("grpc.max_send_message_length", 256 << 20),
               ("grpc.max_receive_message_length", 256 << 20)]
    # shm=False: the tallies below count every RPC, and the shared-memory decision would add a
    # ListOps of its own.
    with tp.Client(args.server, device="cpu", metrics=registry, timeout=60,
                   shm=False) as client, \
            grpc.insecure_channel(args.server, options=options) as channel:
        client.wait_ready(30)
        run_list_ops(client, tally)
        run_w1(client, tally)
        run_invalid_unary(channel, tally)
        run_w2(client, tally)
        run_w3_stream(client, tally)
        run_w5(client, tally)
        run_raw_stream(channel, tally)
        run_callbacks(registry, tally)

    if set(tally.client_calls) != set(SERIES):
        tally.errors.append(f"observed {sorted(tally.client_calls)}, declared {SERIES}")
    summary = {
        "marker": tally.marker,
        "requests": dict(tally.requests),
        "samples_ok": tally.samples_ok,
        "bytes_in_ok": tally.bytes_in_ok,
        "bytes_in_failed": tally.bytes_in_failed,
        "bytes_out": tally.bytes_out,
        "timings": dict(tally.timings),
        "timings_count": tally.timings_count,
        "devices": dict(tally.devices),
        "client_calls": dict(tally.client_calls),
        "errors": tally.errors,
    }
    tmp = pathlib.Path(args.summary + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.rename(args.summary)
    print("ready", flush=True)
    sys.stdin.read()  # serve metrics until the test closes our stdin


if __name__ == "__main__":
    main()
