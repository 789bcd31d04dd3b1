"""Opt-in tuning of glibc's allocator for processes that move large tensors.

Every request and response is a fresh buffer of the batch's size. glibc serves allocations above
its mmap threshold (at most 32 MB) with a new mmap and unmaps them on free, so each 50 MB message
costs ~12,800 page faults when first touched: on a virtual machine that is several times the cost
of copying the bytes (measured here: a 50 MB bytes copy 100 ms with the default, 20 ms tuned).
``tune_malloc`` keeps large blocks on the heap and freed memory in the process, so the next
message reuses pages already mapped.

It changes the allocator for the whole process (TensorFlow and PyTorch included), trading memory
held by the process for speed: call it once, at start-up, in a training process that streams large
batches. A no-op (returning False) where glibc's mallopt is not available.
"""

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def tune_malloc(trim_threshold_mb=1024):
    """Serves large allocations from the heap (no per-allocation mmap) and returns freed memory
    to the system only above ``trim_threshold_mb`` of free heap. Returns True when applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) << 20) == 1 and ok
    return ok
