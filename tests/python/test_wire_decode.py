"""The response decoder (tensorprep.wire.decode_response) against protobuf's own parser.

Random ProcessResponse messages (every field: tensors with and without consistent bytes, aux
entries, errors, timings, transfer figures, shared-memory references, unknown fields, and several
messages concatenated, which protobuf merges) are serialised by the generated classes; the decoder
must give what protobuf parses (wire_reference.py). Every truncation and random corruption of them
must either decode to what protobuf parses or raise MalformedResponseError: never IndexError, never
an array past the data.
"""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

import wire_reference as ref
from tensorprep import wire
from tensorprep._stubs import pb
from tensorprep.errors import DataLossError, MalformedResponseError, TensorprepError

# No example database and no per-example deadline; what Hypothesis writes on a failure (a patch
# with the failing example) goes to the temp directory, not into the checkout.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "tensorprep-hypothesis"))
SETTINGS = settings(database=None, deadline=None, max_examples=150,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ITEMSIZE = {pb.DTYPE_UINT8: 1, pb.DTYPE_INT32: 4, pb.DTYPE_FLOAT32: 4, pb.DTYPE_FLOAT16: 2}
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
uint64 = st.integers(0, 2**64 - 1)
int64 = st.integers(-2**63, 2**63 - 1)


@st.composite
def tensors(draw):
    t = pb.Tensor()
    t.dtype = draw(st.sampled_from([pb.DTYPE_UINT8, pb.DTYPE_INT32, pb.DTYPE_FLOAT32,
                                    pb.DTYPE_FLOAT16, pb.DTYPE_UNSPECIFIED, 9]))
    shape = draw(st.lists(st.integers(0, 5), max_size=4))
    t.shape.extend(shape)
    size = int(np.prod(shape)) * ITEMSIZE.get(t.dtype, 1)
    if draw(st.integers(0, 9)) == 0:  # sometimes bytes that do not fit the shape
        t.data = draw(st.binary(max_size=40))
    else:
        t.data = draw(st.binary(min_size=size, max_size=size))
    if draw(st.integers(0, 9)) == 0:
        t.shm.CopyFrom(pb.SharedMemoryRef(region=draw(text), offset=draw(uint64),
                                          byte_size=draw(uint64)))
    return t


@st.composite
def responses(draw):
    r = pb.ProcessResponse(request_id=draw(text), device=draw(st.sampled_from([0, 1, 2, 7])))
    if draw(st.booleans()):
        r.images.CopyFrom(draw(tensors()))
    for _ in range(draw(st.integers(0, 3))):
        a = r.aux.add(name=draw(st.sampled_from(["labels", "mask", "", "é"])),
                      interpolation=draw(st.integers(0, 3)),
                      fill=draw(st.floats(allow_nan=True)))
        if draw(st.integers(0, 4)):
            a.tensor.CopyFrom(draw(tensors()))
        if draw(st.integers(0, 4)) == 0:
            a.output.CopyFrom(pb.SharedMemoryRef(region=draw(text), offset=draw(uint64)))
    if draw(st.booleans()):
        r.timings.CopyFrom(pb.ServerTimings(decode_ns=draw(int64), queue_ns=draw(int64),
                                            kernel_ns=draw(int64), encode_ns=draw(int64),
                                            total_ns=draw(int64)))
    if draw(st.booleans()):
        r.error.CopyFrom(pb.Error(code=draw(st.integers(-2**31, 2**31 - 1)), message=draw(text)))
    if draw(st.booleans()):
        r.transfer.CopyFrom(pb.Transfer(inline_bytes_in=draw(uint64), inline_bytes_out=draw(uint64),
                                        shm_bytes_in=draw(uint64), shm_bytes_out=draw(uint64)))
    return r.SerializeToString()


# Unknown fields a newer server could send: a varint, a fixed64, a fixed32 and bytes.
unknown_fields = st.lists(st.sampled_from([b"\x78\x05", b"\x81\x01" + b"\x01" * 8,
                                           b"\x8d\x01abcd", b"\xa2\x06\x03xyz"]), max_size=2)


@st.composite
def wire_messages(draw):
    """One to three serialised responses back to back (protobuf merges them), unknown fields
    between them."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        parts.append(draw(responses()))
        parts.extend(draw(unknown_fields))
    return b"".join(parts)


@SETTINGS
@given(wire_messages())
def test_decodes_what_protobuf_parses(buf):
    ref.check(buf, must_decode=True)


@SETTINGS
@given(responses())
def test_every_truncation_decodes_as_protobuf_or_raises(buf):
    for cut in range(len(buf)):
        ref.check(buf[:cut])


@SETTINGS
@given(wire_messages(), st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                           st.integers(0, 255)), min_size=1, max_size=4))
def test_corrupted_bytes_decode_as_protobuf_or_raise(buf, edits):
    assume(buf)
    data = bytearray(buf)
    for where, value in edits:
        data[int(where * len(data))] = value
    ref.check(bytes(data))


@SETTINGS
@given(wire_messages(), st.floats(0, 1), st.binary(min_size=1, max_size=6), st.booleans())
def test_inserted_or_deleted_bytes_decode_as_protobuf_or_raise(buf, where, junk, insert):
    i = int(where * len(buf))
    ref.check(buf[:i] + junk + buf[i:] if insert else buf[:i] + buf[i + len(junk):])


# --- the cases found by hand, each with what the message must say -------------------------------
def response(**kw):
    return pb.ProcessResponse(**kw).SerializeToString()


def image_response(shape=(2, 3), dtype=pb.DTYPE_UINT8, data=None, **kw):
    n = int(np.prod(shape)) * ITEMSIZE[dtype]
    return response(images=pb.Tensor(dtype=dtype, shape=shape,
                                     data=bytes(range(n)) if data is None else data, **kw))


@pytest.mark.parametrize("buf, message", [
    (b"\x80", "in the response: truncated field key, cut off by the end of the message at byte 1 "
              "(at byte 0)"),
    (b"\x0a", "in the response: truncated length of field 1"),
    (b"\x12\x05ab", "in the response: field 2 declares 5 bytes but only 2 are left (at byte 1)"),
    (b"\xff" * 11, "field key longer than 10 bytes (at byte 0)"),
    (b"\x00", "invalid field key 0 (field number 0) (at byte 0)"),
    (b"\x80\x80\x80\x80\x10", "invalid field key 4294967296"),
    (b"\x0b\x0c", "field 1 has wire type 3, which this API does not use"),
    (b"\x29\x01\x02", "truncated fixed-size value of field 5 (needs 8 bytes, 2 left)"),
    (b"\x12\x03\x08\x01\x1a", "in images: truncated length of field 3"),
    (b"\x12\x05\x1a\x05abc", "in images: field 3 declares 5 bytes but only 3 are left"),
    (b"\x1a\x03\x12\x02\x08", "in aux entry 0: field 2 declares 2 bytes but only 1 are left"),
    (response(request_id="x").replace(b"x", b"\xff"), "protobuf cannot parse the fields besides "
                                                      "the tensors"),
    (image_response(data=b"abc"), "in images: response tensor of shape [2, 3] x uint8 needs 6 "
                                  "bytes, got 3"),
    (image_response(shape=(-1, -6)), "in images: response tensor has a negative dimension"),
    (image_response(shape=(2**32, 2**32), data=b""), "needs 18446744073709551616 bytes, got 0"),
    (image_response(shape=(1,) * 40, data=b"a"), "cannot be an array"),
    (response(images=pb.Tensor(dtype=7, shape=[1], data=b"a")), "unknown dtype 7"),
    (image_response(shm=pb.SharedMemoryRef(region="r1")), "the tensor lies in shared-memory "
                                                          "region 'r1'"),
    (response(aux=[pb.AuxTensor(name="m"), pb.AuxTensor(name="m")]),
     "in aux entry 1: a second aux tensor named 'm'"),
])
def test_malformed_responses_raise_a_clear_error(buf, message):
    with pytest.raises(MalformedResponseError) as e:
        wire.decode_response(buf)
    assert message in str(e.value)
    assert str(e.value).startswith(f"DATA_LOSS: malformed response ({len(buf)} bytes), in ")
    assert isinstance(e.value, DataLossError) and isinstance(e.value, TensorprepError)
    assert isinstance(e.value, ValueError)  # what the decoder raised before it had a class


def test_a_repeated_images_field_merges_as_protobuf_does():
    # dtype and shape from the first occurrence, shape extended and data replaced by the second
    first = image_response(shape=(2,), dtype=pb.DTYPE_UINT8, data=b"ab")
    second = response(images=pb.Tensor(shape=[3], data=bytes(range(6))))
    got = wire.decode_response(first + second)
    np.testing.assert_array_equal(got.images, np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert ref.check(first + second, must_decode=True) == "decoded"


def test_empty_and_absent_tensors():
    got = wire.decode_response(b"")
    assert got.images is None and got.aux == {} and got.meta == pb.ProcessResponse()
    got = wire.decode_response(image_response(shape=(0, 4)))
    assert got.images.shape == (0, 4) and got.images.dtype == np.uint8
    got = wire.decode_response(response(aux=[pb.AuxTensor(name="m")]))
    assert got.aux == {"m": None}
