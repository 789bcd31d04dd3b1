"""The comparison benchmark: its equality gate, the peer ways' conventions, the targets table, and
short end-to-end runs against a real server.

OpenCV and DALI (client/python/requirements-bench.txt) are not part of the CI environment: the
tests of those ways skip without them, and the end-to-end run checks that the bench skips them
with a note instead of failing.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="tensorflow-cpu is not installed in this environment")
pytest.importorskip("skimage", reason="scikit-image is not installed in this environment")

from tensorprep.bench import report  # noqa: E402
from tensorprep.bench import workloads as wl  # noqa: E402



def importable(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


HAVE_CV2 = importable("cv2")
HAVE_DALI = importable("nvidia.dali")
needs_cv2 = pytest.mark.skipif(not HAVE_CV2, reason="opencv-python-headless is not installed "
                               "(client/python/requirements-bench.txt)")
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="nvidia-dali is not installed "
                                "(client/python/requirements-bench.txt)")


def server_has_shm():
    """Whether the server binary the fixtures start (as tests/conftest.py finds it) has shared
    memory and a Unix socket."""
    binary = pathlib.Path(os.environ.get(
        "TENSORPREP_SERVER_BIN",
        pathlib.Path(__file__).resolve().parents[2] / "build" / "server" / "tensorprep-server"))
    if not binary.is_file():
        return False
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    return "--shm-prefix" in out.stdout and "--uds" in out.stdout


def client_has_shm():
    from tensorprep.bench.__main__ import client_has_shm as has
    from tensorprep import Client
    return has(Client)


def run_bench(args, timeout=280):
    proc = subprocess.run([sys.executable, "-m", "tensorprep.bench", *args],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_equality_gate_rejects_wrong_outputs():
    images, labels = wl.make_pool(wl.W2, 4)
    good = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    wl.check(wl.W2, images, None, {"a": good, "c": good + 5e-5})
    with pytest.raises(AssertionError, match="W2 c differs"):
        wl.check(wl.W2, images, None, {"a": good, "c": good + 2e-4})

    x, y = wl.make_pool(wl.W3, 24)
    mirrored = (x[:, :, ::-1], y[:, :, ::-1])
    mixed = (np.concatenate([x[:4], mirrored[0][4:]]), np.concatenate([y[:4], mirrored[1][4:]]))
    all_mirrored = wl.make_pool(wl.W3, 5)
    x5, y5 = all_mirrored
    wl.check(wl.W3, x5, y5, {"a": (x5[:, :, ::-1], y5[:, :, ::-1])})  # 5 of 5 by chance: 1 in 16
    wl.check(wl.W3, x, y, {"a": mixed})
    with pytest.raises(AssertionError, match="label 4 does not follow"):
        wl.check(wl.W3, x, y, {"a": (mixed[0], np.concatenate([y[:4], y[4:]]))})
    with pytest.raises(AssertionError, match="0 of 24 samples flipped"):
        wl.check(wl.W3, x, y, {"a": (x, y)})

    w1, _ = wl.make_pool(wl.W1, 2)
    with pytest.raises(AssertionError, match="W1 b"):
        wl.check(wl.W1, w1, None, {"a": w1 + 1, "b": w1 + 2})


def test_rough_ways_are_bounded_by_max_and_mean():
    images, _ = wl.make_pool(wl.W2, 4)
    good = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    most, mean = wl.W2_ROUGH["cv"]
    # One sample off by close to the max bound: fine for a quantising warp, not for an exact one.
    spike = good.copy()
    spike[0, 10, 10, 0] += most * 0.9
    found = wl.check(wl.W2, images, None, {"a": good, "cv": spike})
    assert found["cv vs a"]["max"] == pytest.approx(most * 0.9, rel=1e-3)
    with pytest.raises(AssertionError, match="W2 b differs"):
        wl.check(wl.W2, images, None, {"a": good, "b": spike})
    with pytest.raises(AssertionError, match="max"):
        wl.check(wl.W2, images, None, {"a": good, "cv": spike + most})
    # Every pixel a little off: the mean bound catches it though the max is small.
    with pytest.raises(AssertionError, match="mean"):
        wl.check(wl.W2, images, None, {"a": good, "cv": good + mean * 2})


def test_native_rotation_matches_skimage():
    import tensorflow as tf
    images, _ = wl.make_pool(wl.W2, 2)
    ds = wl.tf_native_dataset(tf, wl.W2, images, None, 2)
    got = next(iter(ds)).numpy()
    want = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    np.testing.assert_allclose(got, want, atol=wl.W2_TOLERANCE, rtol=0)


@needs_cv2
def test_opencv_callbacks_match_the_seed():
    images, _ = wl.make_pool(wl.W2, 3)
    want = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    got = np.stack([wl.opencv_callback(wl.W2)(i) for i in images])
    err = np.abs(got.astype(np.float64) - want)
    most, mean = wl.W2_ROUGH["cv"]
    assert got.dtype == np.float32 and got.shape == images.shape
    assert err.max() <= most and err.mean() <= mean
    assert wl.opencv_callback(wl.W1) is None

    x, y = wl.make_pool(wl.W3, 1)
    flipped = False
    for _ in range(64):  # p = 0.5 per call: both outcomes occur
        xi, yi = wl.opencv_callback(wl.W3)(x[0], y[0])
        f = np.array_equal(xi, x[0, :, ::-1])
        assert f or np.array_equal(xi, x[0])
        np.testing.assert_array_equal(yi, y[0, :, ::-1] if f else y[0])
        flipped |= f
    assert flipped


@needs_dali
def test_dali_ways_match_the_seed():
    images, _ = wl.make_pool(wl.W2, 4)
    want = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    got = wl.dali_next(wl.dali_pipeline(wl.W2, images, None, 4, 1, seed=3))
    assert got.dtype == np.float32 and got.shape == images.shape
    err = np.abs(got.astype(np.float64) - want)
    most, mean = wl.W2_ROUGH["dali"]
    assert err.max() <= most and err.mean() <= mean

    w1, _ = wl.make_pool(wl.W1, 3)
    np.testing.assert_array_equal(wl.dali_next(wl.dali_pipeline(wl.W1, w1, None, 3, 1)), w1 + 1)

    # The pool cycles: batches of 3 from a pool of 5 are samples 0-2, 3,4,0, 1-3.
    x, y = wl.make_pool(wl.W3, 5)
    p = wl.dali_pipeline(wl.W3, x, y, 3, 1, seed=5)
    for idx in ([0, 1, 2], [3, 4, 0], [1, 2, 3]):
        img, lab = wl.dali_next(p)
        assert img.shape == (3, 256, 256, 3) and lab.shape == (3, 256, 256)
        for k, i in enumerate(idx):
            f = np.array_equal(img[k], x[i, :, ::-1])
            assert f or np.array_equal(img[k], x[i])
            np.testing.assert_array_equal(lab[k], y[i, :, ::-1] if f else y[i])


def test_targets_table_marks_pass_and_miss():
    rows = []
    for way, rate, cpu in (("a", 100.0, 7000.0), ("cv", 400.0, 2000.0), ("b", 250.0, 3000.0),
                           ("dali", 300.0, 2500.0), ("shm-stream", 600.0, 150.0)):
        rows.append({"workload": "W2", "batch": 64, "way": way, "label": way,
                     "images_per_s": rate, "p50_ms": 1.0, "p99_ms": 2.0,
                     "train_cpu_us_per_image": cpu, "server_cpu_us_per_image": None,
                     "load_avg_1m": 1.5})
    report.add_ratios(rows, ("a", "cv", "b", "dali"))
    targets = report.evaluate_targets(rows, [("W2", 64, "a", 5.0), ("W2", 64, "cv", 1.5),
                                             ("W3", 64, "a", 2.0)],
                                      [("W2", 64, 200.0)], ["shm-stream"])
    got = {(t["kind"], t["workload"], t["baseline"]): (t["value"], t["met"]) for t in targets}
    assert got[("ratio", "W2", "a")] == (pytest.approx(6.0), True)
    assert got[("ratio", "W2", "cv")] == (pytest.approx(1.5), True)
    assert got[("ratio", "W3", "a")] == (None, None)  # W3 did not run
    assert got[("train_cpu", "W2", None)] == (150.0, True)
    rows[-1]["images_per_s"] = 500.0
    report.add_ratios(rows, ("a", "cv", "b", "dali"))
    targets = report.evaluate_targets(rows, [("W2", 64, "a", 5.0)], [], ["shm-stream"])
    assert targets[0]["met"] is True  # 5.0 >= 5.0
    rows[-1]["images_per_s"] = 499.0
    report.add_ratios(rows, ("a", "cv", "b", "dali"))
    targets = report.evaluate_targets(rows, [("W2", 64, "a", 5.0)], [("W2", 64, 100.0)],
                                      ["shm-stream"])
    assert [t["met"] for t in targets] == [False, False]
    md = report.markdown({"machine": {}, "config": {"repeats": 1, "min_time": 1, "warmup": 0,
                                                    "inflight": 4, "pool": 64},
                          "rows": rows, "targets": targets})
    assert "| W2 batch 64: ≥ 5× seed callback | 4.99× **miss** |" in md
    assert "| W2 batch 64: training-process CPU ≤ 0.1 ms per image | 0.150 ms **miss** |" in md
    assert "vs OpenCV callback" in md and "vs DALI CPU" in md and "| 1.50 |" in md


def _check_run(out, ways_expected, workloads, batch):
    result = json.loads((out / "benchmark.json").read_text())
    assert all(c["passed"] for c in result["checks"].values())
    assert set(result["checks"]) == set(workloads)
    rows = result["rows"]
    want = {(w, batch, way) for w in workloads for way in ways_expected
            if not (way == "cv" and w == "W1")}
    assert {(r["workload"], r["batch"], r["way"]) for r in rows} == want
    for r in rows:
        assert r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["train_cpu_us_per_image"] > 0
        assert r["load_avg_1m"] is not None
        if r["way"] == "a":
            assert r["vs_a"] == pytest.approx(1.0)
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result


def test_short_run_writes_table_json_and_chart(start_server, tmp_path):
    # All default ways; those whose package or server feature is missing must be skipped with a
    # reason, not fail the run.
    shm = server_has_shm() and client_has_shm()
    args = []
    if shm:
        sock = tmp_path / "s.sock"
        srv = start_server(shm_prefix=f"/tensorprep-bench-test-{os.getpid()}-", uds=str(sock))
        args = ["--shm-address", f"unix:{sock}"]
    else:
        srv = start_server()
    out = tmp_path / "bench"
    run_bench(["--address", srv.address, *args, "--workloads", "W1,W2,W3", "--batches", "2",
               "--repeats", "2", "--min-time", "0.05", "--warmup", "0.01", "--pool", "16",
               "--chunk-mb", "1", "--shm-pool-mb", "64", "--dali-threads", "1",
               "--out", str(out)])
    expected = ["a", "b", "unary", "stream"]
    expected += ["cv"] if HAVE_CV2 else []
    expected += ["dali"] if HAVE_DALI else []
    expected += ["shm-unary", "shm-stream", "shm-placed"] if shm else []
    result = _check_run(out, expected, ["W1", "W2", "W3"], 2)
    skipped = result["skipped"]
    if not HAVE_CV2:
        assert "opencv-python-headless" in skipped["cv"]
    if not HAVE_DALI:
        assert "nvidia-dali" in skipped["dali"]
    if shm:
        # Checked against the seed's output (and bit for bit against inline) before timing.
        assert {"shm-unary vs a", "shm-stream vs a", "shm-placed vs a"} <= set(
            result["checks"]["W2"]["measured"])
        assert "Unix socket" in result["transports"]["shm-stream"]
    else:
        assert skipped["shm-unary"] and skipped["shm-stream"] and skipped["shm-placed"]
    md = (out / "benchmark.md").read_text()
    assert "| W2 | 2 | (c) tensorprep stream, inline |" in md and "vs seed callback" in md
    assert "Targets (issue 12)" in md and "Load average" in md
    # The client-side histogram saw both the Python callback and the remote calls.
    hist = result["client_histogram"]
    assert hist["python_callback/W2"]["count"] > 0 and hist["remote_stream/W2"]["count"] > 0


@needs_cv2
@needs_dali
def test_peer_ways_run_on_a_tiny_configuration(server, tmp_path):
    out = tmp_path / "bench"
    run_bench(["--address", server.address, "--ways", "a,cv,b,dali,stream",
               "--workloads", "W1,W2,W3", "--batches", "3", "--repeats", "1",
               "--min-time", "0.05", "--warmup", "0.01", "--pool", "5", "--dali-threads", "1",
               "--no-chart", "--out", str(out)])
    result = json.loads((out / "benchmark.json").read_text())
    rows = {(r["workload"], r["way"]): r for r in result["rows"]}
    assert set(rows) == {(w, x) for w in ("W1", "W2", "W3") for x in ("a", "cv", "b", "dali",
                                                                       "stream")} - {("W1", "cv")}
    assert "cv/W1" in result["skipped"]
    for (w, way), r in rows.items():
        assert r["images_per_s"] > 0
        assert r["vs_dali"] == pytest.approx(r["images_per_s"] / rows[(w, "dali")]["images_per_s"])
        if w != "W1":
            assert r["vs_cv"] == pytest.approx(r["images_per_s"] / rows[(w, "cv")]["images_per_s"])
    found = result["checks"]["W2"]["measured"]
    assert found["cv vs a"]["max"] <= wl.W2_ROUGH["cv"][0]
    assert found["dali vs a"]["max"] <= wl.W2_ROUGH["dali"][0]
    assert 0 < result["checks"]["W3"]["measured"]["dali"] < 1
    assert "opencv" in result["versions"] and "dali" in result["versions"]
