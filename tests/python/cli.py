"""The command-line client for the tests that run it: where the binary is, and one run of it."""

import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def cli_binary():
    """The CLI (TENSORPREP_CLI_BIN, else the build tree's); fails the test when it is missing."""
    path = pathlib.Path(os.environ.get("TENSORPREP_CLI_BIN",
                                       REPO / "build" / "client" / "cpp" / "tensorprep"))
    if not path.is_file():
        pytest.fail(f"CLI binary {path} does not exist; build the tensorprep target first")
    return path


def run_cli(*args, timeout=120):
    """Runs the CLI with ``args`` (str() of each); returns the CompletedProcess (text output)."""
    return subprocess.run([str(cli_binary()), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
