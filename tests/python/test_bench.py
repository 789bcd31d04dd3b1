"""The comparison benchmark: its equality gate, and a short end-to-end run against a real server."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="tensorflow-cpu is not installed in this environment")
pytest.importorskip("skimage", reason="scikit-image is not installed in this environment")

from tensorprep.bench import workloads as wl  # noqa: E402


def test_equality_gate_rejects_wrong_outputs():
    images, labels = wl.make_pool(wl.W2, 4)
    good = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    wl.check(wl.W2, images, None, {"a": good, "c": good + 5e-5})
    with pytest.raises(AssertionError, match="W2 c differs"):
        wl.check(wl.W2, images, None, {"a": good, "c": good + 2e-4})

    x, y = wl.make_pool(wl.W3, 8)
    mirrored = (x[:, :, ::-1], y[:, :, ::-1])
    mixed = (np.concatenate([x[:4], mirrored[0][4:]]), np.concatenate([y[:4], mirrored[1][4:]]))
    wl.check(wl.W3, x, y, {"a": mixed})
    with pytest.raises(AssertionError, match="label 4 does not follow"):
        wl.check(wl.W3, x, y, {"a": (mixed[0], np.concatenate([y[:4], y[4:]]))})
    with pytest.raises(AssertionError, match="0 of 8 samples flipped"):
        wl.check(wl.W3, x, y, {"a": (x, y)})

    w1, _ = wl.make_pool(wl.W1, 2)
    with pytest.raises(AssertionError, match="W1 b"):
        wl.check(wl.W1, w1, None, {"a": w1 + 1, "b": w1 + 2})


def test_native_rotation_matches_skimage():
    import tensorflow as tf
    images, _ = wl.make_pool(wl.W2, 2)
    ds = wl.tf_native_dataset(tf, wl.W2, images, None, 2)
    got = next(iter(ds)).numpy()
    want = np.stack([wl.python_callback(wl.W2)(i) for i in images])
    np.testing.assert_allclose(got, want, atol=wl.W2_TOLERANCE, rtol=0)


def test_short_run_writes_table_json_and_chart(server, tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, "-m", "tensorprep.bench", "--address", server.address,
         "--workloads", "W1,W2,W3", "--batches", "2", "--repeats", "2", "--min-time", "0.05",
         "--warmup", "0.01", "--pool", "16", "--chunk-mb", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert all(c["passed"] for c in result["checks"].values())
    assert set(result["checks"]) == {"W1", "W2", "W3"}
    rows = result["rows"]
    assert len(rows) == 3 * 4
    for r in rows:
        assert r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
        assert r["train_cpu_us_per_image"] > 0
        if r["way"] == "a":
            assert r["vs_a"] == pytest.approx(1.0)
    md = (out / "benchmark.md").read_text()
    assert "| W2 | 2 | (c) tensorprep stream |" in md and "vs (a)" in md
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The client-side histogram saw both the Python callback and the remote calls.
    hist = result["client_histogram"]
    assert hist["python_callback/W2"]["count"] > 0 and hist["remote_stream/W2"]["count"] > 0
