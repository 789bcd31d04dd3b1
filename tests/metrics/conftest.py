"""Fixtures of the metrics tests: a tensorprep server with its exporter, a real Prometheus server
scraping it with the repository's own scrape config and alert rules, and a client process that
drives known traffic and exports the client-side family.

Everything listens on 127.0.0.1; every process is stopped by its PID and every temporary file
removed when the module's tests are done.
"""

import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest

from metrics_stack import Prometheus, free_port, http_get, poll, scrape_config, stop, tool


@pytest.fixture(scope="module")
def stack(tmp_path_factory, start_server):
    """Server + Prometheus (first scrape done, no traffic yet). Yields a dict of handles."""
    promtool, prometheus_bin = tool("promtool"), tool("prometheus")
    tmp = tmp_path_factory.mktemp("metrics-stack")
    procs = []
    try:
        # The shared fixture (tests/conftest.py) picks a free metrics port and stops the server
        # with SIGTERM at the end of the module, requiring exit 0.
        server = start_server(device="cpu", threads=2)
        metrics_port = server.metrics_port
        assert metrics_port, f"metrics are off: {server.ready_line}"
        assert f"metrics=127.0.0.1:{metrics_port}" in server.ready_line, server.ready_line
        grpc_port = server.port
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        before = poll("the server's /metrics", lambda: http_get(metrics_url))

        client_port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(scrape_config(metrics_port, client_port, tmp))
        check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

        prom_port = free_port()
        prom = subprocess.Popen(
            [prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(tmp / "prometheus.log", "w"))
        procs.append(prom)
        api = Prometheus(f"http://127.0.0.1:{prom_port}")
        poll("Prometheus ready", lambda: http_get(f"{api.base}/-/ready"))

        def server_scraped():
            targets = api.api("targets")["activeTargets"]
            return any(t["labels"]["job"] == "tensorprep" and t["health"] == "up" for t in targets)

        # The first scrape sees every series at zero, before any traffic: rates then start from
        # a known zero, as they do in production where the exporter is up before the first call.
        poll("the first scrape of the server", server_scraped)
        yield {"tmp": tmp, "api": api, "grpc_address": f"127.0.0.1:{grpc_port}",
               "metrics_url": metrics_url, "metrics_before": before, "client_port": client_port,
               "promtool": promtool, "server": server, "procs": procs}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for name in ("prometheus.log", "client.log"):
            log = tmp / name
            if log.exists() and log.stat().st_size:
                sys.stderr.write(f"--- {name} (tail) ---\n{log.read_text()[-4000:]}\n")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def traffic(stack):
    """Runs tests/metrics/client_load.py against the stack, waits until Prometheus has scraped
    everything it did, and yields its summary. The client process keeps exporting until the end."""
    summary_path = stack["tmp"] / "client-summary.json"
    client = subprocess.Popen(
        [sys.executable, str(pathlib.Path(__file__).with_name("client_load.py")),
         "--server", stack["grpc_address"], "--metrics-port", str(stack["client_port"]),
         "--summary", str(summary_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(stack["tmp"] / "client.log", "w"),
        text=True)
    stack["procs"].append(client)
    api = stack["api"]
    try:
        if client.stdout.readline().strip() != "exporting":
            pytest.fail(f"client load failed to start (exit {client.poll()}): "
                        f"{(stack['tmp'] / 'client.log').read_text()[-4000:]}")

        def client_scraped():
            targets = api.api("targets")["activeTargets"]
            return any(t["labels"]["job"] == "tensorprep-client" and t["health"] == "up"
                       for t in targets)

        poll("the first scrape of the client", client_scraped)
        client.stdin.write("go\n")
        client.stdin.flush()
        line = client.stdout.readline()  # "ready" once the traffic is done
        if line.strip() != "ready":
            pytest.fail(f"client load failed (exit {client.poll()}): "
                        f"{(stack['tmp'] / 'client.log').read_text()[-4000:]}")
        summary = json.loads(summary_path.read_text())
        assert summary["errors"] == [], summary["errors"]
        want_ok = summary["requests"]["Process OK"]
        want_calls = summary["client_calls"]["python_callback W3"]

        def scraped_all():
            # The last things the client did: the server's stream and the client's callbacks.
            ok = api.query('tensorprep_requests_total{job="tensorprep",rpc="Process",code="OK"}')
            cb = api.query('tensorprep_client_call_duration_seconds_count{'
                           'path="python_callback",workload="W3"}')
            stream = api.query('sum(tensorprep_requests_total{rpc="ProcessStream"})')
            want_stream = sum(v for k, v in summary["requests"].items()
                              if k.startswith("ProcessStream "))
            return (ok and float(ok[0]["value"][1]) == want_ok and cb
                    and float(cb[0]["value"][1]) == want_calls and stream
                    and float(stream[0]["value"][1]) == want_stream)

        poll("Prometheus to scrape the whole traffic", scraped_all)
        # A few more scrapes and rule evaluations after the last change.
        time.sleep(3)
        yield summary
    finally:
        if client.poll() is None:
            client.stdin.close()
            try:
                client.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop(client)
