"""Build hook: generates the protobuf/gRPC modules from <repo>/proto before packaging.

The generated code must run against a protobuf and grpcio at least as new as the generator that
wrote it, so the runtime dependencies are floored at the versions found in the build environment.
Everything else about the package is declared in pyproject.toml.
"""

import importlib.util
import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent


def _load_protogen():
    spec = importlib.util.spec_from_file_location("_tensorprep_protogen",
                                                  HERE / "tensorprep" / "_protogen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _floor(version):
    parts = version.split(".")
    return ".".join(parts[:2])


versions = _load_protogen().generate(HERE)

setup(
    install_requires=[
        f"grpcio>={_floor(versions['grpcio_tools'])}",
        f"protobuf>={_floor(versions['protobuf'])}",
        "numpy>=1.22",
    ],
)
