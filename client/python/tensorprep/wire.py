"""Encodes requests and decodes responses without copying tensor bytes more than once.

Going through the generated message classes costs three copies of every tensor on the way out
(ndarray.tobytes, the assignment into the message, SerializeToString) and two on the way back
(parse, then reading the bytes field). For a batch of 64 images of 256x256x3 float32 (50 MB) each
copy is several milliseconds, as long as the server's kernels. So:

- encode: the small fields are serialised by the generated classes, and each tensor's ``data`` field
  is appended as a length-delimited field straight from the array's buffer (one copy, into the
  message bytes that gRPC sends).
- decode: the response bytes are walked at the top level; tensor ``data`` fields become NumPy views
  into the received bytes (no copy, read-only), and everything else is parsed by the generated
  classes.

Protobuf's wire format allows fields in any order, and the field numbers come from the generated
descriptors, so the output is an ordinary message that any protobuf library parses (the tests check
that both ways against the generated classes).
"""

import dataclasses

import numpy as np

from ._stubs import pb
from .ops import DTYPES

_DTYPE_BY_ENUM = {v: k.newbyteorder("<") for k, v in DTYPES.items()}

_WIRE_VARINT = 0
_WIRE_I64 = 1
_WIRE_LEN = 2
_WIRE_I32 = 5


def _num(message, field):
    return message.DESCRIPTOR.fields_by_name[field].number


_REQ_IMAGES = _num(pb.ProcessRequest, "images")
_REQ_AUX = _num(pb.ProcessRequest, "aux")
_RESP_IMAGES = _num(pb.ProcessResponse, "images")
_RESP_AUX = _num(pb.ProcessResponse, "aux")
_AUX_TENSOR = _num(pb.AuxTensor, "tensor")
_TENSOR_DTYPE = _num(pb.Tensor, "dtype")
_TENSOR_SHAPE = _num(pb.Tensor, "shape")
_TENSOR_DATA = _num(pb.Tensor, "data")


def _varint(value):
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field, wire_type):
    return _varint((field << 3) | wire_type)


def _read_varint(buf, pos):
    result = 0
    shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint in response")


def as_wire_array(array, what="images"):
    """Returns ``array`` as a C-contiguous little-endian ndarray of a supported dtype.

    Raises TypeError for a non-array-like and ValueError for an unsupported dtype or a rank the
    service cannot take; nothing is converted silently (float64 must be cast by the caller).
    """
    arr = np.asarray(array)
    dt = arr.dtype
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt not in DTYPES:
        raise ValueError(f"{what}: dtype {arr.dtype} is not supported; expected one of "
                         f"{sorted(str(d) for d in DTYPES)} (cast first, e.g. .astype(np.float32))")
    if arr.ndim == 0:
        raise ValueError(f"{what}: expected a batch (N, H, W) or (N, H, W, C), got a scalar")
    return np.ascontiguousarray(arr, dtype=dt)


def _tensor_parts(arr):
    """Parts (bytes / buffers) of a serialised Tensor message holding ``arr``; and its length."""
    head = pb.Tensor(dtype=DTYPES[arr.dtype.newbyteorder("=")], shape=arr.shape).SerializeToString()
    data = memoryview(arr.reshape(-1)).cast("B") if arr.size else b""
    data_key = _key(_TENSOR_DATA, _WIRE_LEN) + _varint(arr.nbytes)
    return [head, data_key, data], len(head) + len(data_key) + arr.nbytes


def _len_field(field, parts, length):
    return [_key(field, _WIRE_LEN) + _varint(length)] + parts, len(_key(field, _WIRE_LEN)) + len(
        _varint(length)) + length


@dataclasses.dataclass
class AuxInput:
    """An auxiliary tensor to send (labels, a mask): follows every geometric op of the batch."""
    array: np.ndarray
    interpolation: object = None  # None (nearest on the server), "nearest" or "bilinear"
    fill: float = 0.0


def encode_request(images, pipeline, *, aux=(), request_id="", device=pb.DEVICE_AUTO, seed=0,
                   sample_offset=0):
    """Serialises a ProcessRequest. ``images`` and aux arrays must come from as_wire_array.

    ``aux`` is a sequence of (name, array, interpolation_enum, fill). Returns bytes.
    """
    head = pb.ProcessRequest(request_id=request_id, pipeline=pipeline, device=device, seed=seed,
                             sample_offset=sample_offset).SerializeToString()
    parts = [head]
    tparts, tlen = _tensor_parts(images)
    fparts, _ = _len_field(_REQ_IMAGES, tparts, tlen)
    parts += fparts
    for name, arr, interp, fill in aux:
        aux_head = pb.AuxTensor(name=name, interpolation=interp, fill=fill).SerializeToString()
        tparts, tlen = _tensor_parts(arr)
        inner, inner_len = _len_field(_AUX_TENSOR, tparts, tlen)
        fparts, _ = _len_field(_REQ_AUX, [aux_head] + inner, len(aux_head) + inner_len)
        parts += fparts
    return b"".join(parts)


def _skip(buf, pos, wire_type):
    if wire_type == _WIRE_VARINT:
        _, pos = _read_varint(buf, pos)
        return pos
    if wire_type == _WIRE_I64:
        return pos + 8
    if wire_type == _WIRE_I32:
        return pos + 4
    if wire_type == _WIRE_LEN:
        length, pos = _read_varint(buf, pos)
        return pos + length
    raise ValueError(f"unsupported wire type {wire_type} in response")


def _decode_tensor(buf, start, end, what):
    dtype_enum = pb.DTYPE_UNSPECIFIED
    shape = []
    data = (0, 0)
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == _TENSOR_DTYPE and wire_type == _WIRE_VARINT:
            dtype_enum, pos = _read_varint(buf, pos)
        elif field == _TENSOR_SHAPE and wire_type == _WIRE_LEN:  # packed
            length, pos = _read_varint(buf, pos)
            stop = pos + length
            while pos < stop:
                dim, pos = _read_varint(buf, pos)
                shape.append(dim)
        elif field == _TENSOR_SHAPE and wire_type == _WIRE_VARINT:
            dim, pos = _read_varint(buf, pos)
            shape.append(dim)
        elif field == _TENSOR_DATA and wire_type == _WIRE_LEN:
            length, pos = _read_varint(buf, pos)
            data = (pos, length)
            pos += length
        else:
            pos = _skip(buf, pos, wire_type)
    if dtype_enum not in _DTYPE_BY_ENUM:
        raise ValueError(f"{what}: response tensor has unknown dtype {dtype_enum}")
    dtype = _DTYPE_BY_ENUM[dtype_enum]
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != data[1]:
        raise ValueError(f"{what}: response tensor of shape {shape} x {dtype} needs "
                         f"{count * dtype.itemsize} bytes, got {data[1]}")
    return np.frombuffer(buf, dtype=dtype, count=count, offset=data[0]).reshape(shape)


def _decode_aux(buf, start, end):
    rest = []
    tensor = None
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if field == _AUX_TENSOR and wire_type == _WIRE_LEN:
            length, pos = _read_varint(buf, pos)
            tensor = (pos, pos + length)
            pos += length
        else:
            pos = _skip(buf, pos, wire_type)
            rest.append(buf[field_start:pos])
    meta = pb.AuxTensor.FromString(b"".join(rest))
    array = _decode_tensor(buf, tensor[0], tensor[1], f"aux {meta.name!r}") if tensor else None
    return meta.name, array


@dataclasses.dataclass
class DecodedResponse:
    meta: "pb.ProcessResponse"  # every field but the tensors
    images: np.ndarray  # None when the response carries no images (an error on a stream)
    aux: dict  # name -> ndarray, in response order


def decode_response(buf):
    """Parses a serialised ProcessResponse; tensors are read-only views into ``buf``."""
    rest = []
    images = None
    aux = {}
    pos = 0
    end = len(buf)
    while pos < end:
        field_start = pos
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == _WIRE_LEN and field in (_RESP_IMAGES, _RESP_AUX):
            length, pos = _read_varint(buf, pos)
            if field == _RESP_IMAGES:
                images = _decode_tensor(buf, pos, pos + length, "images")
            else:
                name, array = _decode_aux(buf, pos, pos + length)
                aux[name] = array
            pos += length
        else:
            pos = _skip(buf, pos, wire_type)
            rest.append(buf[field_start:pos])
    if pos != end:
        raise ValueError("truncated response")
    meta = pb.ProcessResponse.FromString(b"".join(rest))
    return DecodedResponse(meta=meta, images=images, aux=aux)
