"""Client-side latency histogram: the remote call and in-process Python callbacks, side by side.

One family, ``tensorprep_client_call_duration_seconds``, labelled by
  path      "remote_unary" | "remote_stream" | "python_callback"
  workload  a caller-chosen name from a small closed set ("W1", "W2", "resnet-train", ...)
so that one dashboard panel can set a remote call beside the Python function it replaces. The
Client observes its own calls; ``timed_callback`` wraps a Python function (for example the one
handed to ``tf.numpy_function``) so that it observes its run time into the same family.

prometheus_client is optional: without it every function here is a no-op and ``timed_callback``
returns the function unchanged. Expose the registry as usual (prometheus_client.start_http_server).
"""

import functools
import threading
import time

try:
    import prometheus_client
except ImportError:  # metrics are optional
    prometheus_client = None

METRIC_NAME = "tensorprep_client_call_duration_seconds"
PATHS = ("remote_unary", "remote_stream", "python_callback")
# 25 us .. 30 s, the server's own buckets (docs/metrics.md), so client and server quantiles line up:
# a small unary call on loopback is ~100 us, a 64-image batch tens of ms.
BUCKETS = (2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
           2.5, 5.0, 10.0, 30.0)

_lock = threading.Lock()
_histograms = {}  # id(registry) -> (registry, Histogram)


def available():
    """True when prometheus_client is importable."""
    return prometheus_client is not None


def histogram(registry=None):
    """The family in ``registry`` (default: prometheus_client.REGISTRY), created once; None
    without prometheus_client. Thread-safe."""
    if prometheus_client is None:
        return None
    registry = registry if registry is not None else prometheus_client.REGISTRY
    with _lock:
        entry = _histograms.get(id(registry))
        if entry is None or entry[0] is not registry:
            hist = prometheus_client.Histogram(
                METRIC_NAME,
                "Client-side duration of one preprocessing call: a remote call to the service "
                "(unary or one request on a stream) or an in-process Python callback.",
                labelnames=("path", "workload"), buckets=BUCKETS, registry=registry)
            entry = (registry, hist)
            _histograms[id(registry)] = entry
        return entry[1]


class Recorder:
    """Observes durations for one (registry, workload); cheap to call when disabled.

    The (path, workload) series of this recorder's workload are created at zero up front: a
    series born on its first observation loses that observation in ``rate()``.
    """

    def __init__(self, registry=None, workload="default", enabled=True):
        self.workload = workload
        self._hist = histogram(registry) if enabled else None
        self._children = {}
        if self._hist is not None:
            for path in PATHS:
                self._children[(path, workload)] = self._hist.labels(path=path, workload=workload)

    def observe(self, path, seconds, workload=None):
        if self._hist is None:
            return
        key = (path, workload or self.workload)
        child = self._children.get(key)
        if child is None:
            child = self._hist.labels(path=key[0], workload=key[1])
            self._children[key] = child
        child.observe(seconds)


def timed_callback(fn=None, *, workload="default", registry=None):
    """Wraps ``fn`` so each call's duration is observed with path="python_callback".

    Usable as ``timed_callback(fn, workload="W2")`` or as a decorator
    ``@timed_callback(workload="W2")``. Exceptions propagate; their duration is still observed.
    """
    if fn is None:
        return lambda f: timed_callback(f, workload=workload, registry=registry)
    if prometheus_client is None:
        return fn
    child = histogram(registry).labels(path="python_callback", workload=workload)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            child.observe(time.perf_counter() - start)

    return wrapper
