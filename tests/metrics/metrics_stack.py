"""Helpers of the metrics tests: ports, polling, the Prometheus HTTP API, the scrape config."""

import json
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROM_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tensorprep.json"

# The targets of deploy/prometheus/prometheus.yml that the test points at its own processes.
SERVER_TARGET = "tensorprep-server:9464"
CLIENT_TARGET = "tensorprep-client:9465"

WAIT_S = 30  # bound of every poll


def tool(name):
    """Path of a Prometheus tool; fails (not skips) without it: these tests are the point."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package "
                    "(apt-get install --no-install-recommends prometheus)")
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def poll(what, fn, timeout=WAIT_S, interval=0.25):
    """Calls fn until it returns a truthy value; fails with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError, KeyError) as e:
            last_error = e
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def stop(proc, timeout=10):
    """SIGTERM to this one process, SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


class Prometheus:
    """A client of Prometheus's HTTP API."""

    def __init__(self, base):
        self.base = base

    def api(self, path, **params):
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        body = json.loads(http_get(url, timeout=10))
        if body.get("status") != "success":
            raise AssertionError(f"{url}: {body}")
        return body["data"]

    def query(self, expr, at=None):
        """Instant query -> list of {"metric": {...}, "value": [t, "v"]}; vectors only."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", **params)
        assert data["resultType"] == "vector", f"{expr}: result type {data['resultType']}"
        return data["result"]

    def value(self, expr):
        """The value of a query that must return exactly one series."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])


def scrape_config(metrics_port, client_port, rules_dir):
    """deploy/prometheus/prometheus.yml with its two targets and its intervals rewritten."""
    text = (PROM_DIR / "prometheus.yml").read_text()
    for old, new in ((SERVER_TARGET, f"127.0.0.1:{metrics_port}"),
                     (CLIENT_TARGET, f"127.0.0.1:{client_port}")):
        assert text.count(old) == 1, f"prometheus.yml should name target {old} once"
        text = text.replace(old, new)
    text, n = re.subn(r"(?m)^(\s*)(scrape_interval|evaluation_interval):\s*\S+", r"\1\2: 1s", text)
    assert n == 2, "prometheus.yml should set scrape_interval and evaluation_interval globally"
    # rule_files are relative to the config file: keep the repository's rules beside it.
    shutil.copy(PROM_DIR / "alerts.yml", rules_dir / "alerts.yml")
    return text
