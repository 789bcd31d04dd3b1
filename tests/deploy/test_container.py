"""The container image, built and run: scripts/container-test.sh in its CI mode.

The script builds the Dockerfile's runtime stage with buildah on a Debian base made by debootstrap
(the binaries under test copied in, see the script), starts the server inside the container and
calls it from the host (health, a pipeline checked against NumPy, /metrics), runs the image's
HEALTHCHECK inside it, checks the non-root user and a SIGTERM drain, and removes everything it
created. It needs root and the Debian mirror; from nothing (no cached base tarball) it takes a few
minutes, most of it debootstrap.
"""

import os
import pathlib
import subprocess
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# Where buildah keeps state besides its --root/--runroot; the script's own temporary root.
STATE = [pathlib.Path(p) for p in ("/var/lib/containers", "/run/containers",
                                   "/var/tmp/containers")]


def leftovers():
    """Everything that the script could leave behind, as a set of paths."""
    out = set()
    for d in STATE:
        if d.exists():
            out |= {str(p) for p in d.rglob("*")} | {str(d)}
    out |= {str(p) for p in pathlib.Path(tempfile.gettempdir()).glob("tensorprep-container.*")}
    return out


@pytest.mark.timeout(1800)
def test_image_builds_runs_and_serves():
    if os.geteuid() != 0:
        pytest.skip("buildah's chroot isolation and debootstrap need root (CI runs as root)")
    server = pathlib.Path(os.environ.get("TENSORPREP_SERVER_BIN",
                                         REPO / "build" / "server" / "tensorprep-server"))
    env = dict(os.environ)
    # The build tree the server under test comes from; the script takes its CLI from there too.
    env["TENSORPREP_BUILD_DIR"] = str(server.parent.parent)
    env["TENSORPREP_PYTHON"] = sys.executable
    before = leftovers()
    run = subprocess.run([str(REPO / "scripts" / "container-test.sh")], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=1700)
    report = run.stdout + run.stderr
    print(report)
    assert run.returncode == 0, report[-6000:]
    assert run.stdout.strip().splitlines()[-1] == "container test: OK", report[-6000:]
    assert leftovers() == before, f"left behind: {sorted(leftovers() - before)[:20]}"
    for step in ("image config: entrypoint", "runs as uid 10001", "pipeline result matches NumPy",
                 "HEALTHCHECK inside the container: SERVING", "SIGTERM: drained and exited 0"):
        assert step in report, f"missing step {step!r}\n{report[-6000:]}"
