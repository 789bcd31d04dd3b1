"""A short atheris run of the response-decoder fuzzer (fuzz_wire.py): a bounded number of inputs
(TENSORPREP_FUZZ_RUNS, default 60,000: about 20 s here), each checked against protobuf's parser.
Longer runs: python tests/python/fuzz_wire.py CORPUS_DIR -max_total_time=3600.
"""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (client/python/"
                    "requirements-dev.txt pins it; scripts/python-env.sh installs it)")

HARNESS = pathlib.Path(__file__).resolve().parent / "fuzz_wire.py"
RUNS = int(os.environ.get("TENSORPREP_FUZZ_RUNS", "60000"))


def test_fuzz_the_response_decoder(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    proc = subprocess.run(
        [sys.executable, str(HARNESS), str(corpus), f"-runs={RUNS}", "-max_len=4096",
         f"-artifact_prefix={tmp_path}/"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    crashes = {p.name: p.read_bytes() for p in tmp_path.glob("crash-*")}
    assert proc.returncode == 0 and not crashes, (
        f"the fuzzer found an input the decoder mishandles: {crashes!r}\n{proc.stderr[-6000:]}")
    assert f"Done {RUNS} runs" in proc.stderr, proc.stderr[-2000:]
