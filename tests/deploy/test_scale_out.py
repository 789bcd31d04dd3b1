"""Scale-out without cluster code: three server replicas on loopback behind one client channel.

The clients balance with gRPC's own round_robin policy over several addresses and retry the
idempotent Process call on UNAVAILABLE (client/python/tensorprep/client.py, client/cpp/client.cc).
These tests check, from each replica's own /metrics, that the work was spread (every replica within
±20% of an even share), and that killing a replica mid-run loses no request the client sent:
unary calls are retried on the survivors by the channel's retry policy; a stream that breaks is
re-opened by the driver here (``_StreamDriver``), which re-sends the requests that got no answer.
Every result is checked against NumPy.
"""

import concurrent.futures
import os
import pathlib
import subprocess
import threading
import time

import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import tensorprep as tp
from tensorprep.errors import TensorprepError

REPO = pathlib.Path(__file__).resolve().parents[2]
REPLICAS = 3
TOLERANCE = 0.2  # each replica's share within ±20% of total / REPLICAS
PIPELINE = [tp.flip("horizontal"), tp.add(3)]


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def cli_binary():
    return pathlib.Path(os.environ.get("TENSORPREP_CLI_BIN",
                                       REPO / "build" / "client" / "cpp" / "tensorprep"))


def make_batch(index, n=2):
    """A small uint8 batch whose values identify `index`; the reference result is NumPy's."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 250, size=(n, 16, 24, 3), dtype=np.uint8)


def reference(batch):
    # flip left-right, then +3 (no saturation: inputs stay below 250).
    return np.flip(batch, axis=2) + np.uint8(3)


def scrape(port):
    """-> {(name, frozenset(labels.items())): value} of one replica's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def requests_ok(port, rpc):
    return scrape(port).get(("tensorprep_requests_total",
                             frozenset({"rpc": rpc, "code": "OK"}.items())), 0.0)


def samples(port):
    return sum(v for (name, _), v in scrape(port).items() if name == "tensorprep_samples_total")


def counts(servers, rpc):
    return [requests_ok(s.metrics_port, rpc) for s in servers]


def assert_even(deltas, what):
    total = sum(deltas)
    share = total / len(deltas)
    assert total > 0, f"{what}: no work reached any replica"
    for i, d in enumerate(deltas):
        assert abs(d - share) <= TOLERANCE * share, (
            f"{what}: replica {i} got {d:g} of {total:g} (even share {share:g} ±{TOLERANCE:.0%}); "
            f"all: {deltas}")


def connect_all(client, servers):
    """Issues ListOps until every replica has answered one: round_robin only picks replicas whose
    connection is up, so a fresh channel sends its first calls to whichever connected first."""
    def all_seen():
        client.list_ops(timeout=5)
        return all(c > 0 for c in counts(servers, "ListOps"))
    assert wait_for(all_seen, timeout=20), (
        f"not every replica was reached: {counts(servers, 'ListOps')}")


@pytest.fixture(scope="module")
def replicas(start_server):
    return [start_server(threads=1) for _ in range(REPLICAS)]


@pytest.fixture(scope="module")
def client(replicas):
    c = tp.Client(",".join(s.address for s in replicas), timeout=60, device="cpu", metrics=False)
    connect_all(c, replicas)
    yield c
    c.close()


def test_unary_load_is_spread_evenly(client, replicas):
    before = counts(replicas, "Process")
    n, threads = 90, 3

    def call(i):
        batch = make_batch(i)
        out = client.process(batch, PIPELINE)
        np.testing.assert_array_equal(out, reference(batch), err_msg=f"request {i}")
        return i

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        done = sorted(pool.map(call, range(n)))
    assert done == list(range(n))
    deltas = [a - b for a, b in zip(counts(replicas, "Process"), before)]
    assert sum(deltas) == n, f"replicas counted {deltas}, the client sent {n}"
    assert_even(deltas, "unary Process requests")


def test_stream_load_is_spread_evenly(client, replicas):
    # A stream lives on one connection, so spreading streams means opening several: round_robin
    # places each new stream on the next replica.
    streams, per_stream, batch_n = 6, 8, 2
    before_msgs = counts(replicas, "ProcessStream")
    before_samples = [samples(s.metrics_port) for s in replicas]

    def run_stream(k):
        batches = [make_batch(1000 + k * per_stream + j, batch_n) for j in range(per_stream)]
        outs = list(client.stream(iter(batches), PIPELINE, inflight=2))
        assert len(outs) == per_stream
        for j, (b, o) in enumerate(zip(batches, outs)):
            np.testing.assert_array_equal(o, reference(b), err_msg=f"stream {k} message {j}")

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        list(pool.map(run_stream, range(streams)))
    msgs = [a - b for a, b in zip(counts(replicas, "ProcessStream"), before_msgs)]
    smp = [samples(s.metrics_port) - b for s, b in zip(replicas, before_samples)]
    assert sum(msgs) == streams * per_stream, f"replicas counted {msgs}"
    assert sum(smp) == streams * per_stream * batch_n, f"replicas counted samples {smp}"
    assert_even(msgs, "stream messages")
    assert_even(smp, "samples")


def test_cpp_client_spreads_unary_load(replicas):
    cli = cli_binary()
    if not cli.is_file():
        pytest.fail(f"CLI binary {cli} does not exist; build it first (scripts/build.sh)")
    before = counts(replicas, "Process")
    n = 300
    # A fresh process: its first calls go to whichever replica's connection and health check
    # came up first, a skew of a few calls that the tolerance (±20 of 100 here) absorbs.
    run = subprocess.run([str(cli), "--address", ",".join(s.address for s in replicas), "bench",
                          "--workload", "small", "--mode", "unary", "--requests", str(n),
                          "--warmup", "0", "--device", "cpu", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    deltas = [a - b for a, b in zip(counts(replicas, "Process"), before)]
    assert sum(deltas) == n, f"replicas counted {deltas}, the CLI sent {n}"
    assert_even(deltas, "C++ client unary requests")


class _StreamDriver:
    """Sends batches over streams of the shared client until every one has a checked result.

    The client library's ``stream`` yields results in order and raises when the stream breaks,
    so the results it yielded are exactly the requests that were answered; the driver re-sends
    the rest on a new stream, which round_robin places on a live replica.

    Before sending request ``pause_at`` it sets ``paused`` and waits for ``resume``, holding its
    stream open: the test then knows which replica carries a stream when it kills one."""

    def __init__(self, client, batches, per_stream, pause_at):
        self.client = client
        self.batches = batches
        self.per_stream = per_stream
        self.pause_at = pause_at
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.results = {}
        self.reopened = 0
        self.errors = []

    def _feed(self, chunk):
        for i in chunk:
            if i == self.pause_at and not self.resume.is_set():
                self.paused.set()
                self.resume.wait(60)
            yield self.batches[i]

    def run(self):
        pending = list(range(len(self.batches)))
        while pending:
            chunk = pending[:self.per_stream]
            answered = 0
            try:
                for out in self.client.stream(self._feed(chunk), PIPELINE, inflight=2):
                    self.results[chunk[answered]] = out.copy()
                    answered += 1
            except TensorprepError as e:
                self.errors.append(e.code.name)
                self.reopened += 1
                if self.reopened > 20:
                    raise
            pending = chunk[answered:] + pending[len(chunk):]


def streams_open(port):
    return scrape(port).get(("tensorprep_streams_open", frozenset()), 0.0)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_losing_a_replica_mid_run_loses_no_request(start_server, how):
    servers = [start_server(threads=1, grace_seconds=1) for _ in range(REPLICAS)]
    client = tp.Client(",".join(s.address for s in servers), timeout=60, device="cpu",
                       metrics=False)
    driver = None
    try:
        connect_all(client, servers)
        n_unary, unary_threads = 240, 3
        n_stream, per_stream = 120, 12
        unary_batches = [make_batch(5000 + i) for i in range(n_unary)]
        stream_batches = [make_batch(9000 + i) for i in range(n_stream)]
        unary_results, unary_errors = {}, []
        started = threading.Event()
        lock = threading.Lock()

        def unary_worker(w):
            for i in range(w, n_unary, unary_threads):
                try:
                    unary_results[i] = client.process(unary_batches[i], PIPELINE)
                except TensorprepError as e:
                    with lock:
                        unary_errors.append((i, e.code.name, e.details))
                if i >= n_unary // 4:
                    started.set()

        # The driver pauses half-way through its first stream, with answers still owed, so the
        # kill comes early and most of the unary load runs after it.
        driver = _StreamDriver(client, stream_batches, per_stream, pause_at=per_stream // 2)
        workers = [threading.Thread(target=unary_worker, args=(w,))
                   for w in range(unary_threads)]
        workers.append(threading.Thread(target=driver.run))
        for t in workers:
            t.start()
        assert started.wait(60) and driver.paused.wait(60), "the load never got going"
        # The victim is the replica holding the open stream, so that the kill breaks a stream
        # as well as unary calls.
        victim = wait_for(lambda: next((s for s in servers if streams_open(s.metrics_port) > 0),
                                       None), timeout=10)
        assert victim is not None, "no replica reports the paused stream as open"
        victim.expect_nonzero_exit = how == "SIGKILL"
        survivors = [s for s in servers if s is not victim]
        victim_before = requests_ok(victim.metrics_port, "Process")
        survivors_before = [requests_ok(s.metrics_port, "Process") for s in survivors]
        if how == "SIGKILL":
            victim.proc.kill()
        else:
            victim.proc.terminate()
        driver.resume.set()
        for t in workers:
            t.join(120)
            assert not t.is_alive(), "load did not finish"
        victim.proc.wait(10)
        if how == "SIGTERM":
            # A drain: the open stream finished within the grace period, nothing was cut.
            assert victim.proc.returncode == 0, victim.output()[-2000:]
        else:
            assert driver.reopened >= 1, "the killed replica's stream did not break"

        # Every request the client sent has exactly its correct result.
        assert unary_errors == [], f"unary calls failed despite retries: {unary_errors[:5]}"
        assert sorted(unary_results) == list(range(n_unary))
        for i, out in unary_results.items():
            np.testing.assert_array_equal(out, reference(unary_batches[i]), err_msg=f"unary {i}")
        assert sorted(driver.results) == list(range(n_stream)), driver.errors
        for i, out in driver.results.items():
            np.testing.assert_array_equal(out, reference(stream_batches[i]), err_msg=f"stream {i}")

        # The victim took part before it went, and every survivor carried some of the rest.
        assert victim_before > 0
        survivors_after = [requests_ok(s.metrics_port, "Process") for s in survivors]
        assert all(a > b for a, b in zip(survivors_after, survivors_before)), (
            f"survivors' Process counts at the kill {survivors_before}, at the end "
            f"{survivors_after}")
    finally:
        if driver is not None:
            driver.resume.set()
        client.close()
