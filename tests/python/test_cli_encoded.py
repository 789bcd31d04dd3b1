"""`tensorprep process --images ...` (the C++ CLI): image files of their own sizes in, one dense
.npy out, with masks following the geometry, and errors that name the file or the sample.

The CLI is TENSORPREP_CLI_BIN, default <repo>/build/client/cpp/tensorprep. PNG files (made here
with Pillow from synthetic arrays) decode exactly, so the results are checked against NumPy
slicing of the source arrays.
"""

import json
import re

import numpy as np
import pytest

from cli import run_cli

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (scripts/python-env.sh "
                            "installs it)")

SIZES = [(30, 41), (52, 28), (19, 19)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """RGB images, grey images and palette-PNG masks as files, with their source arrays."""
    d = tmp_path_factory.mktemp("cli_encoded")
    rng = np.random.default_rng(31)
    out = {"dir": d, "images": [], "greys": [], "masks": [], "paths": [], "grey_paths": [],
           "mask_paths": []}
    for i, (h, w) in enumerate(SIZES):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
        mask = rng.integers(0, 12, (h, w), dtype=np.uint8)
        Image.fromarray(img).save(d / f"img{i}.png")
        Image.fromarray(grey, "L").save(d / f"grey{i}.png")
        pal = Image.fromarray(mask, "P")
        pal.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
        pal.save(d / f"mask{i}.png")
        out["images"].append(img)
        out["greys"].append(grey)
        out["masks"].append(mask)
        out["paths"].append(d / f"img{i}.png")
        out["grey_paths"].append(d / f"grey{i}.png")
        out["mask_paths"].append(d / f"mask{i}.png")
    return out


def center(arr, ch, cw):
    h, w = arr.shape[:2]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top:top + ch, left:left + cw]


PIPELINE = json.dumps([{"centerCrop": {"height": 16, "width": 12}},
                       {"flip": {"axis": "FLIP_AXIS_VERTICAL"}}])


def test_images_and_masks_to_npy(server, files, tmp_path):
    out, masks_out = tmp_path / "y.npy", tmp_path / "m.npy"
    r = run_cli("--address", server.address, "process", "--images", *files["paths"],
                "--masks", *files["mask_paths"], "--out", out, "--masks-out", masks_out,
                "--pipeline", PIPELINE)
    assert r.returncode == 0, r.stderr
    y, m = np.load(out), np.load(masks_out)
    assert y.shape == (3, 16, 12, 3) and y.dtype == np.uint8
    assert m.shape == (3, 16, 12) and m.dtype == np.uint8
    np.testing.assert_array_equal(y, np.stack([center(a, 16, 12)[::-1] for a in files["images"]]))
    np.testing.assert_array_equal(m, np.stack([center(a, 16, 12)[::-1] for a in files["masks"]]))
    timing = re.search(r"image decode ([0-9.]+)", r.stderr)
    assert timing and float(timing.group(1)) > 0, r.stderr
    assert "transport=inline" in r.stderr


def test_grey_channels_and_npy_samples(server, files, tmp_path):
    out = tmp_path / "g.npy"
    r = run_cli("--address", server.address, "process", "--images", *files["grey_paths"],
                "--channels", "1", "--out", out, "--pipeline",
                '[{"crop": {"top": 1, "left": 2, "height": 9, "width": 10}}]')
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out)[..., 0],
                                  np.stack([g[1:10, 2:12] for g in files["greys"]]))
    # .npy files go as raw samples of their own sizes (here float32, resized with nearest).
    raws = [np.arange(h * w, dtype=np.float32).reshape(h, w) for h, w in SIZES]
    paths = []
    for i, a in enumerate(raws):
        paths.append(tmp_path / f"raw{i}.npy")
        np.save(paths[-1], a)
    r = run_cli("--address", server.address, "process", "--images", *paths, "--out", out,
                "--pipeline", '[{"resize": {"height": 4, "width": 5, '
                '"interpolation": "INTERPOLATION_NEAREST"}}]')
    assert r.returncode == 0, r.stderr
    got = np.load(out)
    assert got.shape == (3, 4, 5) and got.dtype == np.float32
    for g, a in zip(got, raws):
        h, w = a.shape
        rows = np.floor(np.arange(4) * h / 4).astype(int)
        cols = np.floor(np.arange(5) * w / 5).astype(int)
        np.testing.assert_array_equal(g, a[rows][:, cols])


def test_errors_name_the_file_or_the_sample(server, files, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    base = ["--address", server.address, "process", "--out", tmp_path / "e.npy"]
    r = run_cli(*base, "--images", files["paths"][0], bad, "--pipeline", PIPELINE)
    assert r.returncode == 1
    assert re.search(r"INVALID_ARGUMENT: .*image_list\.samples\[1\]", r.stderr), r.stderr
    r = run_cli(*base, "--images", files["paths"][0], tmp_path / "missing.jpg",
                "--pipeline", PIPELINE)
    assert r.returncode == 1
    assert "--images" in r.stderr and "missing.jpg (sample 1): cannot open" in r.stderr
    r = run_cli(*base, "--images", *files["paths"], "--pipeline",
                '[{"flip": {"axis": "FLIP_AXIS_HORIZONTAL"}}]')
    assert r.returncode == 1 and "fixed size" in r.stderr, r.stderr
    r = run_cli(*base, "--images", *files["paths"], "--masks", files["mask_paths"][0],
                "--pipeline", PIPELINE)
    assert r.returncode == 2 and "expected one per image (3), got 1" in r.stderr
    assert not (tmp_path / "e.npy").exists()


def test_usage_names_the_images_flag():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "process --images A.jpg B.png ... --out Y.npy --pipeline P" in r.stdout
    assert "--masks M1.png" in r.stdout
