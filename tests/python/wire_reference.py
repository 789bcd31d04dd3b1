"""What tensorprep.wire.decode_response must return for a byte string, worked out with protobuf's
own parser (the generated classes), for the property tests (test_wire_decode.py) and the fuzz
harness (fuzz_wire.py).

``reference(buf)`` is REJECT when protobuf cannot parse ``buf`` or the parsed message cannot be a
decoded response (a tensor whose bytes do not fit its dtype and shape, a tensor in shared memory,
two aux tensors with one name); otherwise (meta bytes, images, [(name, array)]) as ``summary`` of a
DecodedResponse gives them. ``check(buf)`` decodes ``buf`` and fails with AssertionError when the
result differs from the reference; a MalformedResponseError is accepted for any input (the decoder
may be stricter than protobuf), every other exception propagates.
"""

import math

import numpy as np
from google.protobuf.message import DecodeError

from tensorprep import wire
from tensorprep._stubs import pb
from tensorprep.errors import MalformedResponseError

REJECT = "reject"

# The DType enum's NumPy types, written out here rather than taken from the package under test.
DTYPES = {pb.DTYPE_UINT8: np.dtype("<u1"), pb.DTYPE_INT32: np.dtype("<i4"),
          pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_FLOAT16: np.dtype("<f2")}


def _array(tensor):
    if tensor.HasField("shm") or tensor.dtype not in DTYPES:
        return REJECT
    dtype = DTYPES[tensor.dtype]
    shape = tuple(tensor.shape)
    if any(d < 0 for d in shape) or math.prod(shape) * dtype.itemsize != len(tensor.data):
        return REJECT
    try:
        return np.frombuffer(tensor.data, dtype=dtype, count=len(tensor.data) // dtype.itemsize
                             ).reshape(shape)
    except ValueError:  # more dimensions than NumPy allows (32 in NumPy 1.x)
        return REJECT


def _meta_bytes(message):
    return message.SerializeToString(deterministic=True)


def reference(buf):
    try:
        msg = pb.ProcessResponse.FromString(bytes(buf))
    except DecodeError:
        return REJECT
    images = _array(msg.images) if msg.HasField("images") else None
    if images is REJECT:
        return REJECT
    aux = []
    for a in msg.aux:
        arr = _array(a.tensor) if a.HasField("tensor") else None
        if arr is REJECT or a.name in [name for name, _ in aux]:
            return REJECT
        aux.append((a.name, arr))
    msg.ClearField("images")
    msg.ClearField("aux")
    return _meta_bytes(msg), images, aux


def summary(decoded):
    return _meta_bytes(decoded.meta), decoded.images, list(decoded.aux.items())


def _same_array(got, want, buf, what):
    if want is None:
        assert got is None, f"{what}: decoded an array where protobuf has no tensor"
        return
    assert isinstance(got, np.ndarray), f"{what}: no array where protobuf has {want.shape}"
    assert got.dtype == want.dtype and got.shape == want.shape, (
        f"{what}: {got.dtype}{got.shape} where protobuf gives {want.dtype}{want.shape}")
    assert got.tobytes() == want.tobytes(), f"{what}: values differ from protobuf's"
    assert not got.flags.writeable, f"{what}: a writable array, not a view of the response"
    if got.nbytes:  # a view inside the response's bytes, never past them
        base = np.frombuffer(buf, np.uint8).ctypes.data
        start = got.ctypes.data
        assert base <= start and start + got.nbytes <= base + len(buf), (
            f"{what}: the array's memory is not inside the response buffer")


def check(buf, *, must_decode=False):
    """Decodes ``buf`` and compares with the reference; returns "decoded" or "rejected"."""
    want = reference(buf)
    try:
        got = wire.decode_response(buf)
    except MalformedResponseError as e:
        assert str(e).startswith("DATA_LOSS: malformed response ("), str(e)
        assert not (must_decode and want is not REJECT), (
            f"rejected a response protobuf parses: {e}")
        return "rejected"
    assert want is not REJECT, "decoded bytes that protobuf rejects (or that cannot be arrays)"
    meta, images, aux = summary(got)
    assert meta == want[0], "the non-tensor fields differ from protobuf's"
    _same_array(images, want[1], buf, "images")
    assert [name for name, _ in aux] == [name for name, _ in want[2]], "aux names differ"
    for (name, arr), (_, want_arr) in zip(aux, want[2]):
        _same_array(arr, want_arr, buf, f"aux {name!r}")
    return "decoded"
