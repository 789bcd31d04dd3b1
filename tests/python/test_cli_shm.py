"""`tensorprep process` and `tensorprep bench` (the C++ CLI) with --shm: the results written
through shared memory equal those of the inline run byte for byte, the transport line says which
way the tensors went, the CLI falls back to inline bytes (--shm=auto) or fails saying why
(--shm) when the server has shared memory off, and it leaves nothing behind in /dev/shm.

The CLI is TENSORPREP_CLI_BIN, default <repo>/build/client/cpp/tensorprep; the servers come from
conftest (shm_server: --shm-prefix and --uds; server: shared memory off).
"""

import json
import os
import re

import numpy as np
import pytest

from cli import run_cli

PIPELINE = json.dumps([
    {"rotate": {"angleDeg": 30, "interpolation": "INTERPOLATION_BILINEAR",
                "border": "BORDER_EDGE"}},
    {"randomFlip": {"axis": "FLIP_AXIS_HORIZONTAL", "p": 0.5}},
    {"add": {"value": [1.0]}},
])
TRANSPORT = re.compile(r"^transport=(shm|inline) \((.*)\)$", re.M)


def shm_objects(prefix):
    return sorted(n for n in os.listdir("/dev/shm") if ("/" + n).startswith(prefix))


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Float32 images (with a uint8 twin) and an int32 label map, as .npy files."""
    d = tmp_path_factory.mktemp("cli_shm")
    rng = np.random.default_rng(12)
    images = rng.random((5, 40, 56, 3), dtype=np.float32)
    np.save(d / "f32.npy", images)
    np.save(d / "u8.npy", rng.integers(0, 256, images.shape, dtype=np.uint8))
    np.save(d / "labels.npy", rng.integers(0, 21, images.shape[:3], dtype=np.int32))
    return d


def process(address, batch, name, out_dir, shm):
    out, labels_out = out_dir / f"{name}.npy", out_dir / f"{name}.labels.npy"
    args = ["--address", address, "process", "--in", batch / name, "--out", out,
            "--labels", batch / "labels.npy", "--labels-out", labels_out, "--seed", 11,
            "--device", "cpu", "--pipeline", PIPELINE]
    if shm is not None:
        args.append(shm)
    r = run_cli(*args)
    return r, out, labels_out


@pytest.mark.parametrize("name", ["f32.npy", "u8.npy"])
@pytest.mark.parametrize("via", ["uds", "tcp"])
def test_process_through_shm_equals_inline(shm_server, batch, tmp_path, name, via):
    address = shm_server.uds_address if via == "uds" else shm_server.address
    inline_dir, shm_dir = tmp_path / "inline", tmp_path / "shm"
    inline_dir.mkdir()
    shm_dir.mkdir()
    ri, out_i, lab_i = process(address, batch, name, inline_dir, None)
    assert ri.returncode == 0, ri.stderr
    assert TRANSPORT.search(ri.stderr).group(1) == "inline", ri.stderr
    assert "turned off" in ri.stderr
    rs, out_s, lab_s = process(address, batch, name, shm_dir, "--shm")
    assert rs.returncode == 0, rs.stderr
    m = TRANSPORT.search(rs.stderr)
    assert m is not None and m.group(1) == "shm", rs.stderr
    images = np.load(batch / name)
    labels = np.load(batch / "labels.npy")
    # Every tensor byte went through shared memory, none inside the messages.
    assert f"shared memory: {images.nbytes + labels.nbytes} bytes in" in m.group(2), m.group(2)
    assert "inline 0 in, 0 out" in m.group(2), m.group(2)
    # The files are equal byte for byte: same header, same values.
    assert out_s.read_bytes() == out_i.read_bytes()
    assert lab_s.read_bytes() == lab_i.read_bytes()
    result = np.load(out_s)
    assert result.dtype == images.dtype and result.shape == images.shape
    assert np.load(lab_s).dtype == np.int32
    assert shm_objects(shm_server.shm_prefix) == []


@pytest.mark.parametrize("mode", ["unary", "stream"])
@pytest.mark.parametrize("workload", ["W3", "small"])
def test_bench_through_shm(shm_server, mode, workload):
    requests = 12
    r = run_cli("--address", shm_server.uds_address, "bench", "--workload", workload, "--batch", 2,
                "--mode", mode, "--requests", requests, "--warmup", 2, "--inflight", 3, "--json",
                "--shm", "--progress-seconds", "off")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["workload"] == workload and report["mode"] == mode
    assert report["transport"] == "shm", report
    assert report["shm_requests"] == requests
    assert report["transport_reason"] == ""
    assert report["images_per_s"] > 0
    # The text report has the transport line too.
    t = run_cli("--address", shm_server.uds_address, "bench", "--workload", workload, "--batch",
                1, "--mode", mode, "--requests", 3, "--warmup", 0, "--shm=on",
                "--progress-seconds", "off")
    assert t.returncode == 0, t.stderr
    assert re.search(r"^  transport +shm +\(3 of 3 requests through shared memory\)$", t.stdout,
                     re.M), t.stdout
    assert shm_objects(shm_server.shm_prefix) == []


def test_bench_inline_says_why(shm_server):
    r = run_cli("--address", shm_server.address, "bench", "--workload", "small", "--requests", 3,
                "--warmup", 0, "--json", "--progress-seconds", "off")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["transport"] == "inline" and report["shm_requests"] == 0
    assert "turned off" in report["transport_reason"]


def test_server_without_shm_falls_back_or_fails(server, batch, tmp_path):
    ra, out_a, lab_a = process(server.address, batch, "f32.npy", tmp_path, "--shm=auto")
    assert ra.returncode == 0, ra.stderr
    m = TRANSPORT.search(ra.stderr)
    assert m is not None and m.group(1) == "inline", ra.stderr
    assert "disabled" in m.group(2)
    (tmp_path / "inline").mkdir()
    ri, out_i, _ = process(server.address, batch, "f32.npy", tmp_path / "inline", None)
    assert ri.returncode == 0, ri.stderr
    assert out_a.read_bytes() == out_i.read_bytes()

    rr, _, _ = process(server.address, batch, "f32.npy", tmp_path, "--shm")
    assert rr.returncode == 1
    assert "FAILED_PRECONDITION" in rr.stderr and "disabled" in rr.stderr, rr.stderr

    b = run_cli("--address", server.address, "bench", "--workload", "small", "--requests", 4,
                "--warmup", 1, "--mode", "stream", "--json", "--shm", "auto",
                "--progress-seconds", "off")
    assert b.returncode == 0, b.stderr
    report = json.loads(b.stdout)
    assert report["transport"] == "inline" and "disabled" in report["transport_reason"]
