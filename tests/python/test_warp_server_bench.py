"""bench/warp_server.py (the server's warp kernel time against cv2.warpAffine) runs end to end on a
tiny configuration: its table has every row with finite positive figures that agree with its
JSON, its ratios are those figures' quotients, it stops the server it started, and its results
match OpenCV's on the same images (so both sides timed the same map).

The server is TENSORPREP_SERVER_BIN, default <repo>/build/server/tensorprep-server. Without
OpenCV (client/python/requirements-bench.txt) the cv2 column must say n/a.
"""

import importlib.util
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "warp_server.py"
HAVE_CV2 = importlib.util.find_spec("cv2") is not None
ROW = re.compile(r"^\| (float32|uint8) (bilinear|nearest), batch (\d+) \| ([\d,.]+) µs/image \| "
                 r"(n/a|[\d,.]+ µs/image) \| (n/a|[\d.]+) \|$")


def server_binary():
    path = pathlib.Path(os.environ.get("TENSORPREP_SERVER_BIN",
                                       REPO / "build" / "server" / "tensorprep-server"))
    if not path.is_file():
        pytest.fail(f"server binary {path} does not exist; build it first (scripts/build.sh)")
    return path


def us(text):
    return float(text.replace(",", "").split()[0])


def test_tiny_run_produces_the_table(tmp_path):
    md, js = tmp_path / "warp.md", tmp_path / "warp.json"
    count = 4
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--server", str(server_binary()), "--rounds", "1",
         "--size", "32", "--count", str(count), "--markdown", str(md), "--json", str(js)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert elapsed < 30, f"the tiny run took {elapsed:.1f} s"

    text = md.read_text()
    assert text.strip() == proc.stdout.strip()
    data = json.loads(js.read_text())
    meta, figures = data["meta"], data["figures"]
    assert "glibc.malloc.hugetlb=1" in meta["tunables"].split(":")
    assert meta["transport"] in ("inline", "shm")
    assert f"(transport: {meta['transport']})" in text
    assert "load average" in meta["uptime_before"] and "load average" in meta["uptime_after"]
    assert "load average" in text

    # The server was stopped (and reaped) before the script exited.
    with pytest.raises(ProcessLookupError):
        os.kill(meta["server_pid"], 0)

    rows = [m for m in map(ROW.match, text.splitlines()) if m]
    expected = {(d, i, b) for d in ("float32", "uint8") for i in ("bilinear", "nearest")
                for b in (1, count)}
    assert {(m[1], m[2], int(m[3])) for m in rows} == expected
    assert len(rows) == len(expected) == len(figures)
    by_key = {(f["dtype"], f["interp"], f["batch"]): f for f in figures}
    for m in rows:
        f = by_key[(m[1], m[2], int(m[3]))]
        assert math.isfinite(f["ours_s"]) and f["ours_s"] > 0
        assert us(m[4]) == pytest.approx(f["ours_s"] * 1e6, abs=0.5)
        if HAVE_CV2:
            assert math.isfinite(f["cv2_s"]) and f["cv2_s"] > 0
            assert us(m[5]) == pytest.approx(f["cv2_s"] * 1e6, abs=0.5)
            assert float(m[6]) == pytest.approx(f["ours_s"] / f["cv2_s"], abs=0.006)
        else:
            assert f["cv2_s"] is None and m[5] == "n/a" and m[6] == "n/a"

    for d in ("float32", "uint8"):
        for i in ("bilinear", "nearest"):
            ratio = by_key[(d, i, count)]["ours_s"] / by_key[(d, i, 1)]["ours_s"]
            line = f"- {d} {i}: batch {count} / batch 1 per image = "
            shown = [ln for ln in text.splitlines() if ln.startswith(line)]
            assert len(shown) == 1
            assert float(shown[0][len(line):]) == pytest.approx(ratio, abs=0.006)

    if HAVE_CV2:
        # OpenCV quantises sample positions to 1/32 pixel: bilinear results stay close to ours
        # on data in [0, 1) (a different map would differ by up to 1), uint8 within a few levels.
        diff = meta["max_abs_diff"]
        assert diff["float32 bilinear"] < 0.1
        assert diff["uint8 bilinear"] < 32
