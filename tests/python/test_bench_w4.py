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


def test_w4_names_the_op_a_server_lacks(start_server, tmp_path, monkeypatch):
    """A server whose ListOps lacks one of W4's ops: the service ways are reported as not served,
    naming the op, and the other ways still run and are checked. (An op name no server has
    stands in for one the server does not serve yet.)"""
    from tensorprep.bench import __main__ as harness
    from tensorprep.bench import w4

    monkeypatch.setattr(w4, "SERVICE_OPS", w4.SERVICE_OPS + ("no_such_op",))
    sock = tmp_path / "s.sock"
    srv = start_server(shm_prefix=f"/tensorprep-w4-test-{os.getpid()}-", uds=str(sock))
    out = tmp_path / "w4"
    args = harness.parse_args(
        ["--workloads", "W4", "--address", srv.address, "--shm-address", f"unix:{sock}",
         "--ways", "torch-w0,shm-stream,shm-placed", "--batches", "8", "--repeats", "1",
         "--min-time", "0.05", "--warmup", "0.01", "--pool", "24", "--no-chart",
         "--no-tune-malloc", "--out", str(out)])
    assert w4.run(args) == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert [r["way"] for r in result["rows"]] == ["torch-w0"]
    for way in ("shm-stream", "shm-placed"):
        why = result["not_served"][way]
        assert why.startswith(w4.NOT_SERVED) and "ListOps lacks no_such_op" in why, why
    assert set(result["checks"]["W4"]["deterministic"]) == {"torch"}
    md = (out / "benchmark.md").read_text()
    assert "| – | (c) tensorprep stream, shm | not served by this server (ListOps lacks " \
           "no_such_op) |" in md, md


def test_w4_jitter_after_the_cast_when_the_server_wants_floats(start_server, tmp_path,
                                                                 monkeypatch):
    """When service_support says the server's color_jitter does not take uint8, every pipeline
    the run sends has the jitter after the cast, the report says so, and the checks pass."""
    from tensorprep.bench import __main__ as harness
    from tensorprep.bench import w4

    monkeypatch.setattr(w4, "service_support", lambda client: (None, False))
    placements = []
    build = w4.service_pipeline

    def spy(cfg, jitter_on_uint8=True):
        placements.append(jitter_on_uint8)
        return build(cfg, jitter_on_uint8)

    monkeypatch.setattr(w4, "service_pipeline", spy)
    sock = tmp_path / "s.sock"
    srv = start_server(shm_prefix=f"/tensorprep-w4-test-{os.getpid()}-", uds=str(sock))
    out = tmp_path / "w4"
    args = harness.parse_args(
        ["--workloads", "W4", "--address", srv.address, "--shm-address", f"unix:{sock}",
         "--ways", "shm-stream", "--batches", "8", "--repeats", "1", "--min-time", "0.05",
         "--warmup", "0.01", "--pool", "24", "--no-chart", "--no-tune-malloc", "--out",
         str(out)])
    assert w4.run(args) == 0
    assert placements and not any(placements), placements
    result = json.loads((out / "benchmark.json").read_text())
    assert result["notes"]["service"].startswith("colour jitter after the cast")
    assert result["checks"]["W4"]["passed"] is True
    assert [r["way"] for r in result["rows"]] == ["shm-stream"]


def test_w4_check_rejects_a_resize_without_antialiasing():
    """The reference check is not vacuous: torchvision's resize without antialiasing (what a
    crop through the plain bilinear warp gives) fails it; with antialiasing it passes."""
    torch = pytest.importorskip("torch")
    from torchvision.transforms import functional as F

    from tensorprep.bench import w4

    images = w4.make_pool(4, seed=3)
    x = w4.torch_pool(images)

    def normalised(antialias):
        y = F.resize(x, [w4.OUT_SIZE, w4.OUT_SIZE], antialias=antialias)
        y = F.normalize(y.float() / 255, w4.MEAN, w4.STD)
        return y.half()

    found = w4.check_deterministic(images, {"torch": normalised(True)})
    assert found["torch"]["max"] <= w4.CHECK_BOUNDS[0]
    with pytest.raises(AssertionError, match="bound"):
        w4.check_deterministic(images, {"torch": normalised(False)})
    # A flipped sample is recognised as the mirror, not as an error.
    mirrored = normalised(True).clone()
    mirrored[1] = torch.flip(mirrored[1], dims=[2])
    assert w4.check_deterministic(images, {"torch": mirrored})["torch"]["flipped"] == 0.25


def test_w4_service_pipeline_places_the_jitter_by_dtype():
    """service_support's answer decides where the colour jitter goes: before the cast on uint8,
    else after the division by 255 (on float32 in [0, 1])."""
    from tensorprep.bench import w4

    def kinds(pipe):
        return [op.WhichOneof("kind") for op in pipe]

    assert kinds(w4.service_pipeline(w4.WORKLOAD, True)) == [
        "random_resized_crop", "random_flip", "color_jitter", "cast", "divide", "normalize",
        "cast", "channels_first"]
    assert kinds(w4.service_pipeline(w4.WORKLOAD, False)) == [
        "random_resized_crop", "random_flip", "cast", "divide", "color_jitter", "normalize",
        "cast", "channels_first"]
    assert "color_jitter" not in kinds(w4.service_pipeline(w4.CHECK, True))
