"""Workload W5 (JPEG files in, the training transform out) at a tiny budget: the harness runs its
checks and times every way it can, a peer that is not installed is skipped with its reason, and
the service's output is a normalised float16 NCHW batch equal to a PIL + NumPy decode and resize
when the crop is fixed to the whole image (or to torchvision's fallback box) and nothing is
flipped."""

import dataclasses
import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from tensorprep.bench import w4, w5


def importable(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


HAVE_TF = importable("tensorflow")
HAVE_DALI = importable("nvidia.dali")
# The service against the reference, per sample, in normalised units: w5.CHECK_BOUNDS (one uint8
# level is about 0.017; the service measured max 0.018 / mean 0.0002 on the 256 set).
BOUNDS = w5.CHECK_BOUNDS
WHOLE = w5.Config(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)


@pytest.fixture(scope="module")
def client(server):
    import tensorprep
    with tensorprep.Client(server.address, timeout=120, device="cpu", metrics=False,
                           shm=False) as c:
        yield c


def test_w5_short_run(start_server, tmp_path):
    srv = start_server()
    out = tmp_path / "w5"
    proc = subprocess.run(
        [sys.executable, "-m", "tensorprep.bench", "--workloads", "W5", "--address", srv.address,
         "--batches", "4", "--pool", "8", "--repeats", "1", "--min-time", "0.05", "--warmup",
         "0.01", "--dali-threads", "1", "--no-chart", "--no-tune-malloc", "--out", str(out)],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "benchmark.json").read_text())
    assert not result["not_served"], result["not_served"]
    expected = {"tensorprep"} | ({"tf"} if HAVE_TF else set()) | ({"dali"} if HAVE_DALI else set())
    for way in ("tf", "dali"):
        if way not in expected:
            assert way in result["skipped"], result["skipped"]
    for s in ("256", "varied"):
        rows = {r["way"]: r for r in result["rows"] if r["set"] == s}
        assert set(rows) == expected, rows.keys()
        for r in rows.values():
            assert r["images"] > 0 and r["images_per_s"] > 0, r
        svc = rows["tensorprep"]
        info = result["sets"][s]
        # The bytes the server counted are the files' and the float16 result's.
        assert (info["encoded_bytes_min"] <= svc["bytes_in_per_image"]
                <= info["encoded_bytes_max"]), (svc["bytes_in_per_image"], info)
        assert svc["bytes_out_per_image"] == 3 * 224 * 224 * 2
        assert svc["bytes_in_vs_float32"] >= 10, svc["bytes_in_vs_float32"]
        assert svc["server_stage_us_per_image"]["image_decode"] > 0, svc
        # Every way's checked batch has the same shape and dtype.
        shapes = result["checks"][s]["workload"]
        assert set(shapes) == expected, shapes
        assert {(v["dtype"], tuple(v["shape"])) for v in shapes.values()} == {
            ("float16", (8, 3, 224, 224))}, shapes
    assert set(result["checks"]["256"]["deterministic"]) == expected
    assert result["checks"]["varied"]["deterministic"] is None
    kinds = {t["kind"] for t in result["targets"]}
    assert kinds == ({"ratio", "bytes_in"} if len(expected) > 1 else {"bytes_in"}), kinds
    md = (out / "benchmark.md").read_text()
    assert "(d) decoded float32 on the wire" in md and "fewer bytes in than float32" in md


def test_w5_synthetic_files_are_photograph_sized():
    files = w5.make_set("256", 6)
    assert len(set(files)) == 6
    sizes = [len(f) for f in files]
    assert all(15 << 10 <= n <= 60 << 10 for n in sizes), sizes
    assert all(w5.decode_jpeg(f).shape == (256, 256, 3) for f in files)
    for f in w5.make_set("varied", 6):
        h, w, c = w5.decode_jpeg(f).shape
        assert c == 3 and 300 <= min(h, w) <= 400 and max(h, w) <= 500, (h, w)
        assert 3 / 4 - 0.01 <= w / h <= 4 / 3 + 0.01, (h, w)


def center_square(img):
    """torchvision's fallback box for scale (1, 1) and ratio (1, 1): the centred square of the
    shorter side (every try of a box the image's area with ratio 1 is too wide or too tall)."""
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


@pytest.mark.parametrize("image_set", ["256", "varied"])
def test_w5_service_output_equals_a_reference_decode_and_resize(client, image_set):
    """Whole-image crop (256 set) or the centred square (varied sizes), no flip: the service's
    float16 NCHW batch un-normalises to values in 0..255 and equals PIL's decode, resized by w4's
    NumPy antialiased reference, within BOUNDS."""
    files = w5.make_set(image_set, 5, seed=3)
    out = w5.service_batch(client, files, w5.service_pipeline(WHOLE), seed=1)
    assert out.dtype == np.float16 and out.shape == (5, 3, 224, 224)
    mean = np.asarray(w5.MEAN)[:, None, None]
    std = np.asarray(w5.STD)[:, None, None]
    pixels = (out.astype(np.float64) * std + mean) * 255
    assert pixels.min() >= -0.5 and pixels.max() <= 255.5, (pixels.min(), pixels.max())
    for i, f in enumerate(files):
        want = w4.reference(center_square(w5.decode_jpeg(f))[None])[0]
        err = np.abs(out[i].astype(np.float64) - want)
        assert err.max() <= BOUNDS[0] and err.mean() <= BOUNDS[1], (i, err.max(), err.mean())


def test_w5_service_batch_is_split_invariant_and_flips(client):
    """The workload's random draws do not depend on how a batch is split into requests, and with
    p = 1 every sample of the whole-image crop is the reference's mirror."""
    files = w5.make_set("varied", 6, seed=4)
    pipe = w5.service_pipeline(w5.WORKLOAD)
    one = w5.service_batch(client, files, pipe, seed=5)
    two = w5.service_batch(client, files, pipe, seed=5, parts=2)
    np.testing.assert_array_equal(one, two)
    other = w5.service_batch(client, files, pipe, seed=6)
    assert not np.array_equal(one, other)
    flipped = dataclasses.replace(WHOLE, flip_p=1.0)
    files = w5.make_set("256", 4, seed=5)
    out = w5.service_batch(client, files, w5.service_pipeline(flipped), seed=1)
    found = w4.check_deterministic(np.stack([w5.decode_jpeg(f) for f in files]), {"svc": out},
                                   bounds=BOUNDS, name="W5")
    assert found["svc"]["flipped"] == 1.0


@pytest.mark.skipif(not HAVE_TF, reason="tensorflow is not installed")
def test_w5_peers_match_the_reference_and_the_check_is_not_vacuous():
    """tf.data (and DALI where installed) with the whole-image crop pass the same check; a
    normalisation on 0..255 values with the mean scaled by 255 but not the std (a plausible
    slip) fails it."""
    import tensorflow as tf
    files = w5.make_set("256", 4, seed=6)
    decoded = [w5.decode_jpeg(f) for f in files]
    outs = {"tf": next(iter(w5.tf_dataset(tf, files, WHOLE, 4, repeat=False))).numpy()}
    if HAVE_DALI:
        outs["dali"] = w5.dali_next(w5.dali_pipeline(files, WHOLE, 4, 1, seed=1))
    found = w5.check_deterministic(decoded, outs)
    assert all(v["flipped"] == 0 for v in found.values()), found
    wrong = (w4.reference(np.stack(decoded)) * np.asarray(w5.STD)[:, None, None] * 255
             - 255 * np.asarray(w5.MEAN)[:, None, None]) / np.asarray(w5.STD)[:, None, None]
    with pytest.raises(AssertionError, match="bound"):
        w5.check_deterministic(decoded, {"wrong": wrong.astype(np.float16)})


def test_w5_names_the_op_a_server_lacks(start_server, tmp_path, monkeypatch):
    """A server whose ListOps lacks one of W5's ops: the service is reported as not served,
    naming the op, and the other ways still run and are checked."""
    from tensorprep.bench import __main__ as harness

    monkeypatch.setattr(w5, "SERVICE_OPS", w5.SERVICE_OPS + ("no_such_op",))
    srv = start_server()
    out = tmp_path / "w5"
    ways = "tensorprep,tf" if HAVE_TF else "tensorprep"
    args = harness.parse_args(
        ["--workloads", "W5", "--address", srv.address, "--ways", ways, "--sets", "256",
         "--batches", "4", "--repeats", "1", "--min-time", "0.05", "--warmup", "0.01", "--pool",
         "4", "--no-chart", "--no-tune-malloc", "--out", str(out)])
    assert w5.run(args) == 0
    result = json.loads((out / "benchmark.json").read_text())
    assert [r["way"] for r in result["rows"]] == (["tf"] if HAVE_TF else [])
    why = result["not_served"]["tensorprep"]
    assert why.startswith(w5.NOT_SERVED) and "ListOps lacks no_such_op" in why, why
    md = (out / "benchmark.md").read_text()
    assert "not served by this server (ListOps lacks no_such_op)" in md, md
