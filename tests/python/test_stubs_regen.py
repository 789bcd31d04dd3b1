"""The generated protobuf/gRPC modules are regenerated when they do not fit (tensorprep._stubs):
made by another grpcio-tools for a newer protobuf (the VersionError seen after a build in pip's
isolated environment wrote into the source tree), made from an older proto file, or missing; and
where they cannot be regenerated, import fails with a message that says what to run.

Each case runs in a temporary copy of the package and the proto tree, in a fresh interpreter.
"""

import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import sys

import google.protobuf
import pytest

pytest.importorskip("grpc_tools", reason="grpcio-tools generates the modules")

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "client" / "python" / "tensorprep"
PROTO = pathlib.Path(__file__).resolve().parents[2] / "proto"
NO_TOOLS = "import sys; sys.modules['grpc_tools'] = None  # as if grpcio-tools were not installed\n"


@pytest.fixture
def tree(tmp_path):
    shutil.copytree(PACKAGE, tmp_path / "pkg" / "tensorprep",
                    ignore=shutil.ignore_patterns("v1", "__pycache__"))
    shutil.copytree(PROTO, tmp_path / "proto")
    return tmp_path


def run(tree, code, ok=True):
    env = dict(os.environ, PYTHONPATH=str(tree / "pkg"), TENSORPREP_PROTO_ROOT=str(tree / "proto"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


IMPORT = ("import tensorprep, tensorprep._stubs as s; "
          "assert s.pb.__file__.startswith(%r), s.pb.__file__; print('ok', s.pb.Tensor.__name__)")


def v1(tree):
    return tree / "pkg" / "tensorprep" / "v1"


def stamp(tree):
    text = (v1(tree) / "_generated.py").read_text()
    return eval(text.split("STAMP = ", 1)[1])  # noqa: S307 - a dict literal we wrote


def make_newer(tree):
    """What a newer grpcio-tools leaves: gencode for a protobuf major version not installed."""
    pb2 = v1(tree) / "tensorprep_pb2.py"
    major = int(google.protobuf.__version__.split(".")[0]) + 1
    text = re.sub(r"(Domain\.PUBLIC,\s*)\d+,", rf"\g<1>{major},", pb2.read_text(), count=1)
    pb2.write_text(text)
    st = v1(tree) / "_generated.py"
    st.write_text(st.read_text().replace(f"'protobuf': '{google.protobuf.__version__}'",
                                         f"'protobuf': '{major}.0.0'"))
    return major


def test_missing_modules_are_generated_with_a_stamp(tree):
    assert "ok Tensor" in run(tree, IMPORT % str(v1(tree)))
    s = stamp(tree)
    assert s["protobuf"] == google.protobuf.__version__
    want = hashlib.sha256((tree / "proto/tensorprep/v1/tensorprep.proto").read_bytes()).hexdigest()
    assert s["proto_sha256"] == want


def test_modules_for_a_newer_protobuf_are_regenerated(tree):
    run(tree, IMPORT % str(v1(tree)))
    major = make_newer(tree)
    # the modules as left would fail with protobuf's VersionError
    out = run(tree, "import importlib.util as u; s = u.spec_from_file_location('m', %r); "
              "s.loader.exec_module(u.module_from_spec(s))" % str(v1(tree) / "tensorprep_pb2.py"),
              ok=False)
    assert "VersionError" in out
    assert "ok Tensor" in run(tree, IMPORT % str(v1(tree)))
    assert stamp(tree)["protobuf"] == google.protobuf.__version__
    assert f"PUBLIC,\n    {major}," not in (v1(tree) / "tensorprep_pb2.py").read_text()


def test_modules_from_an_older_proto_are_regenerated(tree):
    run(tree, IMPORT % str(v1(tree)))
    proto = tree / "proto/tensorprep/v1/tensorprep.proto"
    proto.write_text(proto.read_text() + "\nmessage AddedLater { string note = 1; }\n")
    out = run(tree, IMPORT % str(v1(tree)) + "; print(s.pb.AddedLater(note='n'))")
    assert 'note: "n"' in out


def test_without_grpcio_tools_newer_modules_fail_with_what_to_run(tree):
    run(tree, IMPORT % str(v1(tree)))
    make_newer(tree)
    out = run(tree, NO_TOOLS + "import tensorprep", ok=False)
    assert "ImportError: tensorprep: the generated modules in" in out
    assert "cannot be regenerated here (grpcio-tools is not installed)" in out
    assert (f"To fix it run: {sys.executable} -m pip install grpcio-tools "
            f"'protobuf=={google.protobuf.__version__}'") in out
    assert "VersionError" not in out  # caught before the generated code is imported


def test_without_grpcio_tools_a_changed_proto_fails_with_what_to_run(tree):
    run(tree, IMPORT % str(v1(tree)))
    proto = tree / "proto/tensorprep/v1/tensorprep.proto"
    proto.write_text(proto.read_text() + "\n// edited\n")
    out = run(tree, NO_TOOLS + "import tensorprep", ok=False)
    assert "were made from another version of tensorprep/v1/tensorprep.proto" in out
    assert "_protogen.py" in out and "-m pip install grpcio-tools" in out


def test_without_grpcio_tools_modules_the_runtime_accepts_are_used(tree):
    run(tree, IMPORT % str(v1(tree)))
    st = v1(tree) / "_generated.py"  # made with an older protobuf patch release: still fine
    st.write_text(st.read_text().replace(f"'protobuf': '{google.protobuf.__version__}'",
                                         "'protobuf': '0.0.1'"))
    before = (v1(tree) / "tensorprep_pb2.py").read_text()
    assert "ok Tensor" in run(tree, NO_TOOLS + IMPORT % str(v1(tree)))
    assert (v1(tree) / "tensorprep_pb2.py").read_text() == before
