"""Generates the Python protobuf and gRPC modules from the repository's proto/ tree.

Used by setup.py at build time, and by ``tensorprep._stubs`` when the package runs straight from
the source tree without having been built. Imports nothing from the package itself, so setup.py
can load it by file path before the package is importable.

The proto's package path ``tensorprep/v1/`` lies inside this Python package, so protoc's output
goes to the directory that holds the package: the modules land in ``tensorprep/v1/`` (git-ignored)
under their natural names (``tensorprep.v1.tensorprep_pb2``), which the generated code and pickle
(messages sent to DataLoader worker processes) both rely on. Nothing generated is edited.
"""

import os
import pathlib
import sys

PROTO_FILE = "tensorprep/v1/tensorprep.proto"


def default_proto_root():
    """<repo>/proto, found from this file's place in <repo>/client/python/tensorprep/."""
    env = os.environ.get("TENSORPREP_PROTO_ROOT")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[3] / "proto"


def generate(out_dir, proto_root=None):
    """Runs grpc_tools.protoc with ``out_dir`` the directory that holds the ``tensorprep``
    package (client/python); returns {"protobuf": version, "grpcio_tools": version}.

    Raises FileNotFoundError when the proto is missing, ImportError when grpcio-tools is not
    installed, RuntimeError when protoc fails.
    """
    from grpc_tools import protoc  # imported here: only the build needs grpcio-tools
    import grpc_tools
    import google.protobuf

    proto_root = pathlib.Path(proto_root) if proto_root else default_proto_root()
    source = proto_root / PROTO_FILE
    if not source.is_file():
        raise FileNotFoundError(
            f"tensorprep: {source} not found; build the package from the repository")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        PROTO_FILE,
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"tensorprep: protoc failed with exit code {rc} on {source}")

    v1 = out_dir / "tensorprep" / "v1"
    init = v1 / "__init__.py"
    if not init.exists():
        init.write_text("# Generated from proto/tensorprep/v1 by tensorprep._protogen.\n")

    try:
        from importlib import metadata
        tools_version = metadata.version("grpcio-tools")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        tools_version = getattr(grpc_tools, "__version__", "0")
    return {"protobuf": google.protobuf.__version__, "grpcio_tools": tools_version}


if __name__ == "__main__":
    here = pathlib.Path(__file__).resolve().parent
    print(generate(here.parent, sys.argv[1] if len(sys.argv) > 1 else None))
