"""Generates the Python protobuf and gRPC modules from the repository's proto/ tree, and says
whether modules already generated still fit the proto file and the installed runtimes.

Used by setup.py at build time, and by ``tensorprep._stubs`` at import. Imports nothing from the
package itself, so setup.py can load it by file path before the package is importable, and it runs
as a script (``python client/python/tensorprep/_protogen.py``) when the package does not import.

The proto's package path ``tensorprep/v1/`` lies inside this Python package, so protoc's output
goes to the directory that holds the package: the modules land in ``tensorprep/v1/`` (git-ignored)
under their natural names (``tensorprep.v1.tensorprep_pb2``), which the generated code and pickle
(messages sent to DataLoader worker processes) both rely on. Nothing generated is edited.

Why a stamp: generated code checks at import that the protobuf and grpcio runtimes are at least as
new as the generator that wrote it (protobuf raises VersionError, grpc RuntimeError), and the
modules silently go stale when the proto changes. A source tree is shared by every environment
that uses it (a build with a newer grpcio-tools in pip's isolated build environment writes here
too), so ``generate`` writes ``tensorprep/v1/_generated.py`` beside the modules: the proto's
SHA-256 and the versions they were made with and for. ``stale_reason`` compares it with what is
installed now.
"""

import ast
import hashlib
import os
import pathlib
import re
import shutil
import sys
import tempfile

PROTO_FILE = "tensorprep/v1/tensorprep.proto"
MODULES = ("tensorprep_pb2.py", "tensorprep_pb2_grpc.py")
STAMP = "_generated.py"

_PB_GENCODE = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),"
    r"\s*(\d+),")
_GRPC_GENCODE = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'", re.M)


def default_proto_root():
    """<repo>/proto, found from this file's place in <repo>/client/python/tensorprep/ (or
    $TENSORPREP_PROTO_ROOT)."""
    env = os.environ.get("TENSORPREP_PROTO_ROOT")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[3] / "proto"


def proto_sha256(proto_root=None):
    """SHA-256 of the proto file, or None when it is not there (an installed package)."""
    source = (pathlib.Path(proto_root) if proto_root else default_proto_root()) / PROTO_FILE
    try:
        return hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:
        return None


def _version_tuple(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def runtime_versions():
    """{"protobuf": ..., "grpcio": ...}: the versions installed in this environment."""
    import google.protobuf
    import grpc
    return {"protobuf": google.protobuf.__version__, "grpcio": grpc.__version__}


def read_stamp(out_dir):
    """The stamp ``generate`` wrote under ``out_dir`` (the directory holding the package) as a
    dict, or None when there is none or it cannot be read."""
    path = pathlib.Path(out_dir) / "tensorprep" / "v1" / STAMP
    try:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.Assign) and node.targets[0].id == "STAMP":
                return ast.literal_eval(node.value)
    except (OSError, SyntaxError, ValueError, AttributeError):
        pass
    return None


def gencode_versions(out_dir):
    """(protobuf gencode version, grpc generated version) as tuples, read from the generated
    modules' own checks; an element is None when the module or its check is missing."""
    v1 = pathlib.Path(out_dir) / "tensorprep" / "v1"
    try:
        m = _PB_GENCODE.search((v1 / MODULES[0]).read_text())
        pb = tuple(int(x) for x in m.groups()) if m else None
    except OSError:
        pb = None
    try:
        m = _GRPC_GENCODE.search((v1 / MODULES[1]).read_text())
        grpc_version = _version_tuple(m.group(1)) if m else None
    except OSError:
        grpc_version = None
    return pb, grpc_version


def runtime_accepts(out_dir, runtime=None):
    """Whether the installed runtimes accept the generated modules (they exist, and the protobuf
    and grpc they were generated for are not newer than the installed ones, protobuf of the same
    major version): the checks the generated code makes at import."""
    v1 = pathlib.Path(out_dir) / "tensorprep" / "v1"
    if not all((v1 / m).is_file() for m in MODULES):
        return False
    runtime = runtime or runtime_versions()
    pb, grpc_version = gencode_versions(out_dir)
    pb_rt = _version_tuple(runtime["protobuf"])
    if pb is not None and (pb > pb_rt or pb[0] != pb_rt[0]):
        return False
    return grpc_version is None or grpc_version <= _version_tuple(runtime["grpcio"])


def stale_reason(out_dir, proto_root=None, runtime=None):
    """None when the generated modules under ``out_dir`` are current: present, stamped, made
    from the proto file as it is now (when it can be read) and with the protobuf and grpcio
    installed now. Otherwise (kind, sentence): kind is "missing", "unstamped", "proto" (made from
    another version of the proto file) or "runtime" (made with other protobuf/grpcio versions)."""
    v1 = pathlib.Path(out_dir) / "tensorprep" / "v1"
    missing = [m for m in MODULES if not (v1 / m).is_file()]
    if missing:
        return "missing", f"the generated modules are missing ({', '.join(missing)} in {v1})"
    stamp = read_stamp(out_dir)
    if stamp is None:
        return "unstamped", (f"the generated modules in {v1} carry no stamp ({STAMP}), so "
                             "their origin is unknown")
    digest = proto_sha256(proto_root)
    if digest is not None and stamp.get("proto_sha256") != digest:
        return "proto", (f"the generated modules in {v1} were made from another version of "
                         f"{PROTO_FILE} (it has changed since)")
    runtime = runtime or runtime_versions()
    for name in ("protobuf", "grpcio"):
        if stamp.get(name) != runtime[name]:
            return "runtime", (f"the generated modules in {v1} were made with {name} "
                               f"{stamp.get(name)}, and {name} {runtime[name]} is installed")
    return None


def generate(out_dir, proto_root=None):
    """Runs grpc_tools.protoc with ``out_dir`` the directory that holds the ``tensorprep``
    package (client/python), then writes the stamp; returns {"protobuf": version,
    "grpcio_tools": version} (protobuf: the runtime installed with the generator).

    The modules are generated into a temporary directory and moved into place one by one, the
    stamp last, so another process importing at the same time sees whole files. Raises
    FileNotFoundError when the proto is missing, ImportError when grpcio-tools is not installed,
    RuntimeError when protoc fails, OSError when ``out_dir`` cannot be written.
    """
    from grpc_tools import protoc  # imported here: only generating needs grpcio-tools
    import grpc_tools

    proto_root = pathlib.Path(proto_root) if proto_root else default_proto_root()
    source = proto_root / PROTO_FILE
    if not source.is_file():
        raise FileNotFoundError(
            f"tensorprep: {source} not found; build the package from the repository")
    out_dir = pathlib.Path(out_dir)
    v1 = out_dir / "tensorprep" / "v1"
    v1.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    try:
        from importlib import metadata
        tools_version = metadata.version("grpcio-tools")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        tools_version = getattr(grpc_tools, "__version__", "0")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()

    with tempfile.TemporaryDirectory(dir=v1, prefix=".gen-") as tmp:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            PROTO_FILE,
        ])
        if rc != 0:
            raise RuntimeError(f"tensorprep: protoc failed with exit code {rc} on {source}")
        runtime = runtime_versions()
        stamp = {"proto_sha256": digest, "protobuf": runtime["protobuf"],
                 "grpcio": runtime["grpcio"], "grpcio_tools": tools_version}
        generated = pathlib.Path(tmp) / "tensorprep" / "v1"
        (generated / "__init__.py").write_text(
            "# Generated from proto/tensorprep/v1 by tensorprep._protogen.\n")
        (generated / STAMP).write_text(
            "# Written by tensorprep._protogen with the modules beside it; read by "
            "tensorprep._stubs.\n"
            f"STAMP = {stamp!r}\n")
        for name in (*MODULES, "__init__.py", STAMP):
            os.replace(generated / name, v1 / name)
    shutil.rmtree(v1 / "__pycache__", ignore_errors=True)
    return {"protobuf": stamp["protobuf"], "grpcio_tools": tools_version}


if __name__ == "__main__":
    here = pathlib.Path(__file__).resolve().parent
    print(generate(here.parent, sys.argv[1] if len(sys.argv) > 1 else None))
