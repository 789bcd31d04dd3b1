"""Build hook: generates the protobuf/gRPC modules from <repo>/proto before packaging.

The generated code must run against a protobuf and grpcio at least as new as the generator that
wrote it, so the runtime dependencies are floored at the versions the generated code checks for.
The stamp written beside the modules lets tensorprep._stubs regenerate them when the package is
used from the source tree by an environment with other versions.
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


protogen = _load_protogen()
protogen.generate(HERE)
# The generated code's own import-time checks, read back from it: grpc needs grpcio at least as
# new as the generator, protobuf a runtime at least as new as the gencode and of the same major
# version (one major newer only warns, two fail).
pb_gencode, grpc_gencode = protogen.gencode_versions(HERE)
requires = ["numpy>=1.22"]
requires.append("grpcio>=" + ".".join(map(str, grpc_gencode)) if grpc_gencode else "grpcio")
requires.append(f"protobuf>={'.'.join(map(str, pb_gencode))},<{pb_gencode[0] + 1}"
                if pb_gencode else "protobuf")

setup(install_requires=requires)
