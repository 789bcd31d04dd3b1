"""Workload W4 (the ImageNet training transform) end to end at a tiny budget: the bench's
correctness checks run against its NumPy reference before any timing, every way it can run
produces a row, and a peer that is not installed is skipped with its reason, not failed."""

import importlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="torch is not installed in this environment")


def importable(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def test_w4_short_run(start_server, tmp_path):
    sock = tmp_path / "s.sock"
    srv = start_server(shm_prefix=f"/tensorprep-w4-test-{os.getpid()}-", uds=str(sock))
    out = tmp_path / "w4"
    proc = subprocess.run(
        [sys.executable, "-m", "tensorprep.bench", "--workloads", "W4", "--address", srv.address,
         "--shm-address", f"unix:{sock}", "--batches", "8", "--torch-workers", "0",
         "--repeats", "1", "--min-time", "0.05", "--warmup", "0.01", "--pool", "24",
         "--dali-threads", "1", "--no-chart", "--out", str(out)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    ways = {r["way"] for r in result["rows"]}
    assert {"torch-w0", "shm-stream", "shm-placed"} <= ways, ways
    if importable("nvidia.dali"):
        assert "dali" in ways
    else:
        assert any("dali" in s for s in result["skipped"]), result["skipped"]
    assert not result["not_served"], result["not_served"]
    for row in result["rows"]:
        assert row["workload"] == "W4" and row["images"] > 0 and row["images_per_s"] > 0, row
    # The checks ran (before timing): both the reference comparison and the workload's batch.
    checks = result["checks"]["W4"]
    assert checks["passed"] is True, checks
    assert {"torch", "service"} <= set(checks["deterministic"]), checks
    assert 0 < checks["deterministic"]["service"]["flipped"] < 1, checks
    assert checks["workload"]["service"]["shape"][1:] == [3, 224, 224], checks
    assert checks["workload"]["service"]["dtype"] == "float16", checks
    assert "W4" in (out / "benchmark.md").read_text()
