"""Shared pytest fixtures: a real tensorprep server started per test module.

    def test_something(server):              # default flags, one server per module
        client = tensorprep.Client(server.address)

    def test_other(start_server):            # a server with its own flags
        srv = start_server(threads=1, max_message_mb=1)

    def test_shared_memory(shm_server):      # --shm-prefix and --uds on
        client = tensorprep.Client(shm_server.uds_address)

The binary is TENSORPREP_SERVER_BIN, default <repo>/build/server/tensorprep-server. A missing
binary fails the test (the test command builds it first). Each server listens on 127.0.0.1 with
--port 0 (the port is read from its ready line) and a free metrics port, and is stopped with
SIGTERM at teardown, which must exit 0.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
READY = re.compile(r"ready on [^ ]+:(\d+)")
METRICS = re.compile(r"metrics=[^:]+:(\d+)")


def server_binary():
    return pathlib.Path(os.environ.get("TENSORPREP_SERVER_BIN",
                                       REPO / "build" / "server" / "tensorprep-server"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running server: ``address`` ("127.0.0.1:PORT"), ``port``, ``metrics_port`` (None when
    metrics are off), ``proc`` (the Popen), ``ready_line`` and ``output()`` (what it has printed
    so far, stdout and stderr together)."""

    def __init__(self, flags, ready_timeout=30.0):
        binary = server_binary()
        if not binary.is_file():
            pytest.fail(f"server binary {binary} does not exist; build it first (scripts/build.sh)")
        self.flags = dict(flags)
        self.flags.setdefault("host", "127.0.0.1")
        self.flags.setdefault("port", 0)
        self.flags.setdefault("threads", 2)
        self.flags.setdefault("device", "cpu")
        if "metrics_port" not in self.flags:
            self.flags["metrics_port"] = free_port()
        args = [str(binary)]
        for key, value in self.flags.items():
            if value is None:
                continue
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        self.args = args
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, cwd=REPO)
        self._lines = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(ready_timeout) or self.port is None:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            pytest.fail(f"server did not print its ready line within {ready_timeout} s: "
                        f"{' '.join(args)}\n{self.output()}")
        self.address = f"127.0.0.1:{self.port}"

    port = None
    metrics_port = None
    ready_line = None

    def _read(self):
        # Drains the pipe for the server's lifetime so it can never block on a full pipe.
        for line in self.proc.stdout:
            self._lines.append(line)
            if self.ready_line is None:
                m = READY.search(line)
                if m:
                    self.ready_line = line.rstrip("\n")
                    self.port = int(m.group(1))
                    mm = METRICS.search(line)
                    self.metrics_port = int(mm.group(1)) if mm else None
                    self._ready.set()
        self._ready.set()

    def output(self):
        return "".join(self._lines)

    def stop(self, timeout=30.0):
        """SIGTERM, wait; returns the exit code (kills it and fails when it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._reader.join(5)
                pytest.fail(f"server did not stop within {timeout} s of SIGTERM\n{self.output()}")
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture(scope="module")
def start_server():
    """Factory: start_server(**flags) -> ServerProcess. Flags are the server's long options with
    underscores (threads=1, max_message_mb=1, metrics_port=0 for off); all are stopped with
    SIGTERM at the end of the module and must exit 0."""
    started = []

    def start(**flags):
        srv = ServerProcess(flags)
        started.append(srv)
        return srv

    yield start
    failures = []
    for srv in started:
        already_dead = srv.proc.poll() is not None
        code = srv.stop()
        if code != 0 and not getattr(srv, "expect_nonzero_exit", False):
            failures.append(f"{' '.join(srv.args)} exited {code}"
                            f"{' before teardown' if already_dead else ''}\n{srv.output()[-4000:]}")
    if failures:
        pytest.fail("\n".join(failures))


@pytest.fixture(scope="module")
def server(start_server):
    """One server with default flags (CPU, 2 threads) for the whole module."""
    return start_server()


@pytest.fixture(scope="module")
def shm_server(start_server, tmp_path_factory):
    """A server with shared memory on (objects named /tensorprep-test-<pid>-...) and a Unix
    socket beside TCP: ``address`` is TCP, ``uds_address`` "unix:<path>", ``shm_prefix``."""
    sock = tmp_path_factory.mktemp("uds") / "tensorprep.sock"
    prefix = f"/tensorprep-test-{os.getpid()}-"
    srv = start_server(shm_prefix=prefix, uds=str(sock))
    srv.shm_prefix = prefix
    srv.uds_address = f"unix:{sock}"
    return srv


def wait_for(predicate, timeout=10.0, interval=0.05):
    """Polls ``predicate`` until it returns truthy; returns its value or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
