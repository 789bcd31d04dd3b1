"""Imports the generated protobuf/gRPC modules, (re)generating them first when they do not fit.

An installed package carries the modules (setup.py writes them at build time). A checkout used
straight from the source tree (PYTHONPATH=client/python, or an editable install) has none until the
first import, and the ones it has go stale: the proto changes, or another environment sharing the
tree (pip's isolated build environment with a newer grpcio-tools, a second venv) writes modules
for a protobuf or grpcio this environment does not have, which the generated code refuses at
import with protobuf's VersionError. So before importing, the stamp written beside the modules
(tensorprep._protogen) is compared with the proto file and the installed runtimes, and the modules
are regenerated when they differ and grpcio-tools is installed. Without grpcio-tools, modules the
installed runtimes still accept are used as they are; otherwise ImportError says what to run.

Regeneration holds an exclusive lock on a file beside the modules, so processes that import at
the same time (DataLoader workers, parallel test runs) regenerate once, one after another.
"""

import pathlib
import sys
import threading

from . import _protogen

_lock = threading.Lock()
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent


def _fix_command():
    import google.protobuf
    return (f"{sys.executable} -m pip install grpcio-tools 'protobuf=={google.protobuf.__version__}'"
            " (a grpcio-tools that generates for the installed protobuf), then import tensorprep "
            "again: it regenerates the modules; or regenerate them explicitly with "
            f"{sys.executable} {_PACKAGE_DIR / '_protogen.py'}")


def _regenerate(out_dir):
    """Regenerates under the cross-process lock; returns None, or why it could not."""
    v1 = out_dir / "tensorprep" / "v1"
    try:
        v1.mkdir(parents=True, exist_ok=True)
        lock_file = open(v1 / ".generate.lock", "a+b")
    except OSError as e:
        return f"cannot write {v1} ({e})"
    with lock_file:
        try:
            import fcntl
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: the in-process lock alone
            pass
        if _protogen.stale_reason(out_dir) is None:  # another process did it meanwhile
            return None
        try:
            _protogen.generate(out_dir)
        except ImportError:
            return "grpcio-tools is not installed"
        except (OSError, RuntimeError) as e:  # no proto (an installed package), read-only, protoc
            return str(e)
    return None


def _ensure_current():
    out_dir = _PACKAGE_DIR.parent
    if _protogen.stale_reason(out_dir) is None:
        return
    with _lock:
        stale = _protogen.stale_reason(out_dir)
        if stale is None:
            return
        kind, reason = stale
        failure = _regenerate(out_dir)
        if failure is None:
            if not _protogen.runtime_accepts(out_dir):
                raise ImportError(
                    "tensorprep: the installed grpcio-tools generates code for a newer protobuf "
                    f"or grpcio than is installed ({_protogen.runtime_versions()}); install "
                    f"matching versions: {_fix_command()}")
            return
        if kind in ("unstamped", "runtime") and _protogen.runtime_accepts(out_dir):
            return  # only the runtime moved, and it still accepts the modules
        raise ImportError(f"tensorprep: {reason}, and they cannot be regenerated here "
                          f"({failure}). To fix it run: {_fix_command()}")


_ensure_current()

try:
    from .v1 import tensorprep_pb2 as pb  # noqa: E402
    from .v1 import tensorprep_pb2_grpc as pb_grpc  # noqa: E402
except Exception as e:  # VersionError (protobuf), RuntimeError (grpc): modules and runtime differ
    if isinstance(e, ImportError) and e.name and not e.name.startswith("tensorprep"):
        raise
    raise ImportError(
        f"tensorprep: the generated modules in {_PACKAGE_DIR / 'v1'} do not import with the "
        f"installed protobuf/grpcio ({type(e).__name__}: {e}). To fix it run: {_fix_command()}"
    ) from e

__all__ = ["pb", "pb_grpc"]
