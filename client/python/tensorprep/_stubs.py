"""Imports the generated protobuf/gRPC modules, generating them first when running from source.

An installed package carries the modules (setup.py writes them at build time). A checkout used
straight from the source tree (PYTHONPATH=client/python) has none until the first import, which
generates them if grpcio-tools is importable.
"""

import pathlib
import threading

_lock = threading.Lock()


def _generate_if_missing():
    here = pathlib.Path(__file__).resolve().parent
    target = here / "v1" / "tensorprep_pb2.py"
    if target.exists():
        return
    with _lock:
        if target.exists():
            return
        try:
            from . import _protogen
            _protogen.generate(here.parent)
        except ImportError as e:
            raise ImportError(
                "tensorprep: the generated protobuf modules are missing and grpcio-tools is not "
                "installed to generate them; install the package with pip (which generates them) "
                f"or install grpcio-tools ({e})") from e


_generate_if_missing()

from .v1 import tensorprep_pb2 as pb  # noqa: E402
from .v1 import tensorprep_pb2_grpc as pb_grpc  # noqa: E402

__all__ = ["pb", "pb_grpc"]
