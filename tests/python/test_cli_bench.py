"""`tensorprep bench` (the C++ CLI) holds a bounded set of requests, reports progress, and refuses
up front a run that memory cannot hold.

The CLI is TENSORPREP_CLI_BIN, default <repo>/build/client/cpp/tensorprep. Each run's peak RSS is
the kernel's figure for that child alone (``os.wait4``), not an estimate of the CLI's own; runs
that must fail before allocating get an address-space limit, so that a broken check fails the
test instead of exhausting the machine's memory.
"""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile

import pytest

from cli import cli_binary

MiB = 1 << 20
Run = collections.namedtuple("Run", "code stdout stderr peak_rss")
PROGRESS = re.compile(r"^tensorprep bench: (generated|warm-up|measured) (\d+)/(\d+) ")


# Linux charges a child the resident size of the process it was forked from (its peak RSS starts
# at the parent's, and exec keeps that peak), and the pytest process may hold hundreds of MB
# (TensorFlow, imported by other tests). So the CLI is started by a small launcher process: the
# CLI is the launcher's child, its peak starts from the launcher's few MB, and the launcher
# reports the CLI's own figure from wait4 through a pipe.
LAUNCHER = """
import os, resource, sys
fd, limit, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
pid = os.fork()
if pid == 0:
    if limit > 0:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
os.write(fd, f"{usage.ru_maxrss}".encode())
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""


def run_cli(*args, timeout=120, address_space=None):
    """Runs the CLI to completion -> Run(code, stdout, stderr, peak_rss in bytes)."""
    read_end, write_end = os.pipe()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", LAUNCHER, str(write_end), str(address_space or 0),
                 str(cli_binary()), *map(str, args)],
                stdout=out, stderr=err, pass_fds=(write_end,), start_new_session=True)
            os.close(write_end)
            write_end = None
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the CLI with it
                proc.wait()
                raise
            peak_kib = int(os.read(read_end, 64) or b"0")
            assert peak_kib > 0, "the launcher reported no peak RSS for the CLI"
            out.seek(0)
            err.seek(0)
            # The launcher exits with the CLI's code (a signal n shows as 256 - n).
            return Run(code, out.read().decode(), err.read().decode(), peak_kib * 1024)
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)


def w3_request_bytes(batch):
    # float32 images (batch, 256, 256, 3) and int32 labels (batch, 256, 256).
    return batch * 256 * 256 * 3 * 4 + batch * 256 * 256 * 4


def test_many_large_requests_run_in_bounded_memory(server):
    batch, warmup, requests = 4, 2, 250
    total_bytes = (warmup + requests) * w3_request_bytes(batch)  # 1008 MiB sent
    r = run_cli("--address", server.address, "bench", "--workload", "W3", "--batch", batch,
                "--mode", "stream", "--requests", requests, "--warmup", warmup, "--inflight", 2,
                "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["workload"] == "W3" and report["mode"] == "stream"
    assert report["batch"] == batch and report["requests"] == requests
    assert report["device"] == "CPU"
    assert report["images_per_s"] > 0 and report["p99_ms"] >= report["p50_ms"] > 0
    # Holding every request, as the CLI once did, takes total_bytes; the default six distinct
    # requests (--inflight 2 + 4) and gRPC's buffers take a small part of it.
    assert r.peak_rss < total_bytes / 4, (r.peak_rss / MiB, total_bytes / MiB)


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_progress_lines_count_every_phase(server, mode):
    # --progress-seconds 0 prints a line after every item, which makes the count exact.
    warmup, requests, distinct = 3, 20, 2
    r = run_cli("--address", server.address, "bench", "--workload", "small", "--batch", 2,
                "--mode", mode, "--requests", requests, "--warmup", warmup, "--distinct", distinct,
                "--progress-seconds", 0, "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["requests"] == requests  # stdout holds the report alone
    lines = [PROGRESS.match(line) for line in r.stderr.splitlines()]
    assert all(lines), r.stderr
    seen = [(m.group(1), int(m.group(2)), int(m.group(3))) for m in lines]
    expected = ([("generated", i, distinct) for i in range(1, distinct + 1)] +
                [("warm-up", i, warmup) for i in range(1, warmup + 1)])
    assert seen[:len(expected)] == expected
    # Stream responses may arrive in any order, but they are counted as they come.
    assert seen[len(expected):] == [("measured", i, requests) for i in range(1, requests + 1)]


def test_progress_can_be_turned_off(server):
    r = run_cli("--address", server.address, "bench", "--workload", "small", "--requests", 5,
                "--warmup", 1, "--progress-seconds", "off")
    assert r.code == 0, r.stderr
    assert r.stderr == ""
    assert r.stdout.splitlines()[0] == "small batch=1 mode=unary requests=5 device=CPU"
    assert [line.split()[0] for line in r.stdout.splitlines()[1:]] == [
        "throughput", "round", "server", "network+client"]


def test_memory_budget_fails_before_generating():
    # 12 distinct requests (--inflight 8 + 4) of 16 MiB cannot fit in 64 MiB. No server: the
    # check comes before the first call.
    r = run_cli("--address", "127.0.0.1:1", "bench", "--workload", "W3", "--batch", 16,
                "--mode", "stream", "--requests", 2000, "--inflight", 8, "--max-memory-mb", 64,
                timeout=60, address_space=4 << 30)
    assert r.code == 1
    assert r.stdout == ""
    assert r.stderr.startswith("tensorprep: RESOURCE_EXHAUSTED: bench would need about "), r.stderr
    assert "--max-memory-mb 64 allows 64.0 MiB" in r.stderr
    assert "12 distinct W3 requests of batch 16 (16.0 MiB each; --distinct 12 = --inflight 8 + 4)" \
        in r.stderr
    assert r.peak_rss < 64 * MiB  # nothing was generated


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pytest.skip("no MemAvailable in /proc/meminfo")


def test_available_memory_fails_before_generating():
    # Twice what the machine has available, in 256 MiB requests.
    request = w3_request_bytes(256)
    distinct = 2 * mem_available() // request + 1
    r = run_cli("--address", "127.0.0.1:1", "--max-message-mb", 2047, "bench", "--workload", "W3",
                "--batch", 256, "--requests", distinct, "--distinct", distinct,
                timeout=60, address_space=4 << 30)
    assert r.code == 1
    assert r.stderr.startswith("tensorprep: RESOURCE_EXHAUSTED: bench would need about "), r.stderr
    assert "the system has available" in r.stderr
    assert f"{distinct} distinct W3 requests of batch 256 (256.0 MiB each; --distinct {distinct})" \
        in r.stderr
    assert r.peak_rss < 64 * MiB


def test_request_over_the_message_limit_fails_before_generating():
    r = run_cli("--address", "127.0.0.1:1", "--max-message-mb", 64, "bench", "--workload", "W3",
                "--batch", 65, "--max-memory-mb", 1 << 20, timeout=60, address_space=4 << 30)
    assert r.code == 1
    assert ("tensorprep: INVALID_ARGUMENT: a W3 request of batch 65 is 65.0 MiB, more than "
            "--max-message-mb 64 allows") in r.stderr
    assert r.peak_rss < 64 * MiB


@pytest.mark.parametrize("flags", [["--inflight", 0], ["--distinct", -1], ["--batch", 0],
                                   ["--progress-seconds", "soon"], ["--mode", "both"]])
def test_bad_bench_flags_exit_2(flags):
    r = run_cli("--address", "127.0.0.1:1", "bench", *flags, timeout=60)
    assert r.code == 2, r.stderr
    assert r.stderr.startswith("tensorprep bench: ")
