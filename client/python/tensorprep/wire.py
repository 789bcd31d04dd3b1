"""Encodes requests and decodes responses without copying tensor bytes more than once.

Going through the generated message classes costs three copies of every tensor on the way out
(ndarray.tobytes, the assignment into the message, SerializeToString) and two on the way back
(parse, then reading the bytes field). For a batch of 64 images of 256x256x3 float32 (50 MB) each
copy is several milliseconds, as long as the server's kernels. So:

- encode: the small fields are serialised by the generated classes, and each tensor's ``data`` field
  is appended as a length-delimited field straight from the array's buffer (one copy, into the
  message bytes that gRPC sends).
- decode: the response bytes are walked down to the tensors; tensor ``data`` fields become NumPy
  views into the received bytes (no copy, read-only), and everything else is parsed by the
  generated classes. Bytes that are not a well-formed response raise MalformedResponseError.

Protobuf's wire format allows fields in any order, and the field numbers come from the generated
descriptors, so the output is an ordinary message that any protobuf library parses (the tests check
that both ways against the generated classes).
"""

import dataclasses
import math
import os

import numpy as np
from google.protobuf.message import DecodeError as _DecodeError

from ._stubs import pb
from .errors import MalformedResponseError
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
_REQ_IMAGE_LIST = _num(pb.ProcessRequest, "image_list")
_AUX_LIST = _num(pb.AuxTensor, "list")
_LIST_SAMPLES = _num(pb.ImageList, "samples")
_SAMPLE_ENCODED = _num(pb.ImageSample, "encoded")
_SAMPLE_TENSOR = _num(pb.ImageSample, "tensor")
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
    """An auxiliary tensor to send (labels, a mask): follows every geometric op of the batch.

    ``array`` is a dense batch, or (when the images are a list of samples) a list of samples as
    the images take them: encoded files (a mask stored as PNG) or raw (H, W[, C]) arrays, one per
    image and of its size. ``channels`` applies to such a list: None (the server's default for
    aux tensors: 1, which gives a palette PNG's indices) or 3.
    """
    array: object
    interpolation: object = None  # None (nearest on the server), "nearest" or "bilinear"
    fill: float = 0.0
    channels: int = None


# --- ragged batches (ImageList) -------------------------------------------------------------------
_ENCODED_TYPES = (bytes, bytearray, memoryview)


def is_encoded_item(item):
    """Whether ``item`` is a sample given as an encoded file: bytes-like, or a path."""
    return isinstance(item, _ENCODED_TYPES + (str, os.PathLike))


def is_sample_list(value):
    """Whether ``value`` is meant as a list of samples (ImageList) rather than a dense batch: a
    list or tuple that is empty or holds an encoded file (bytes-like), a file path (str or
    os.PathLike) or a NumPy array. A list of plain numbers or nested lists stays a dense batch
    (converted by np.asarray, as before lists of samples existed)."""
    if not isinstance(value, (list, tuple)):
        return False
    return not value or any(is_encoded_item(x) or isinstance(x, np.ndarray) for x in value)


@dataclasses.dataclass
class SampleList:
    """A ragged batch ready for the wire (see as_sample_list): each sample is a bytes-like object
    (a whole encoded file) or a C-contiguous little-endian array (H, W) or (H, W, C)."""
    samples: list
    channels: int = 0  # 0: the server's default (3 for images, 1 for an aux tensor)

    def __len__(self):
        return len(self.samples)

    @property
    def nbytes(self):
        return sum(_sample_nbytes(s) for s in self.samples)

    def sample_nbytes(self):
        return [_sample_nbytes(s) for s in self.samples]

    def slice(self, lo, hi):
        return SampleList(self.samples[lo:hi], self.channels)


def _sample_nbytes(sample):
    return sample.nbytes if isinstance(sample, (np.ndarray, memoryview)) else len(sample)


def _read_file(path, what):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        # OSError(errno, text) makes the matching subclass (FileNotFoundError, ...).
        raise OSError(e.errno, f"{what}: cannot read {os.fspath(path)!r}: {e.strerror}") from None


def as_sample_list(value, what="images", channels=None):
    """Checks a list (or tuple) of samples and returns it as a SampleList, before anything is sent.

    Each item is an encoded JPEG or PNG file as ``bytes``/``bytearray``/``memoryview``; a path
    (``str`` or ``os.PathLike``), read here, on the client; or a NumPy array (H, W) or (H, W, C)
    of a supported dtype (a raw sample of its own size). Encoded and raw samples may not be mixed
    in one list, and raw samples must share dtype and channel count (the wire API's rule).
    ``channels``: None (the server's default) or a positive int, for the decoded samples.

    Raises TypeError for an item of another type, ValueError for an empty list or sample, mixed
    kinds, or a raw sample of the wrong rank, dtype or channels; OSError (naming the item) for a
    path that cannot be read.
    """
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{what}: expected a list of samples, got {type(value).__name__}")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)
                                 or channels < 1):
        raise ValueError(f"{what}: channels must be None or a positive int, got {channels!r}")
    if not value:
        raise ValueError(f"{what}: the list of samples is empty")
    samples = []
    first_raw = None  # (index, dtype, channels) of the first raw sample
    first_encoded = None
    for i, item in enumerate(value):
        name = f"{what}[{i}]"
        if is_encoded_item(item) and first_raw is not None:
            raise ValueError(f"{name}: a list holds encoded files or raw arrays, not both "
                             f"({what}[{first_raw[0]}] is an array, this one an encoded file)")
        if isinstance(item, _ENCODED_TYPES):
            data = item
            if isinstance(item, memoryview):
                data = item.cast("B") if item.c_contiguous else item.tobytes()
        elif isinstance(item, (str, os.PathLike)):
            data = _read_file(item, name)
        elif isinstance(item, np.ndarray):
            if item.ndim not in (2, 3):
                raise ValueError(f"{name}: a raw sample is (H, W) or (H, W, C), got shape "
                                 f"{item.shape}")
            if 0 in item.shape:
                raise ValueError(f"{name}: a raw sample needs every dimension >= 1, got shape "
                                 f"{item.shape}")
            if first_encoded is not None:
                raise ValueError(f"{name}: a list holds encoded files or raw arrays, not both "
                                 f"({what}[{first_encoded}] is an encoded file, this one an "
                                 "array)")
            arr = as_wire_array(item, name)
            c = arr.shape[2] if arr.ndim == 3 else 1
            if first_raw is None:
                first_raw = (i, arr.dtype, c)
            elif (arr.dtype, c) != first_raw[1:]:
                j, dt, cj = first_raw
                raise ValueError(f"{name}: raw samples of one list share dtype and channels; "
                                 f"{what}[{j}] is {dt} with {cj} channel(s), this one {arr.dtype} "
                                 f"with {c}")
            samples.append(arr)
            continue
        else:
            raise TypeError(f"{name}: expected bytes (an encoded JPEG or PNG file), a file path "
                            f"or a NumPy array (H, W[, C]), got {type(item).__name__}")
        if len(data) == 0:
            raise ValueError(f"{name}: the encoded file is empty")
        if first_encoded is None:
            first_encoded = i
        samples.append(data)
    return SampleList(samples, channels or 0)


def _sample_list_parts(samples):
    """Parts of a serialised ImageList holding ``samples`` (a SampleList); and its length. The
    samples' bytes are referenced, not copied, until the final join."""
    parts = []
    total = 0
    if samples.channels:
        head = pb.ImageList(channels=samples.channels).SerializeToString()
        parts.append(head)
        total += len(head)
    for sample in samples.samples:
        if isinstance(sample, np.ndarray):
            inner, inner_len = _len_field(_SAMPLE_TENSOR, *_tensor_parts(sample))
        else:
            inner, inner_len = _len_field(_SAMPLE_ENCODED, [sample], len(sample))
        fparts, flen = _len_field(_LIST_SAMPLES, inner, inner_len)
        parts += fparts
        total += flen
    return parts, total


def encode_request(images, pipeline, *, aux=(), request_id="", device=pb.DEVICE_AUTO, seed=0,
                   sample_offset=0):
    """Serialises a ProcessRequest. ``images`` and aux arrays must come from as_wire_array, or be
    SampleLists (from as_sample_list), which go as ``image_list`` and ``AuxTensor.list``.

    ``aux`` is a sequence of (name, array or SampleList, interpolation_enum, fill). Returns bytes.
    """
    head = pb.ProcessRequest(request_id=request_id, pipeline=pipeline, device=device, seed=seed,
                             sample_offset=sample_offset).SerializeToString()
    parts = [head]
    if isinstance(images, SampleList):
        fparts, _ = _len_field(_REQ_IMAGE_LIST, *_sample_list_parts(images))
    else:
        fparts, _ = _len_field(_REQ_IMAGES, *_tensor_parts(images))
    parts += fparts
    for name, arr, interp, fill in aux:
        aux_head = pb.AuxTensor(name=name, interpolation=interp, fill=fill).SerializeToString()
        if isinstance(arr, SampleList):
            inner, inner_len = _len_field(_AUX_LIST, *_sample_list_parts(arr))
        else:
            inner, inner_len = _len_field(_AUX_TENSOR, *_tensor_parts(arr))
        fparts, _ = _len_field(_REQ_AUX, [aux_head] + inner, len(aux_head) + inner_len)
        parts += fparts
    return b"".join(parts)


# --- decoding -------------------------------------------------------------------------------------
# The decoder walks only what it must to find tensor bytes: the response's top level, each
# AuxTensor, and each Tensor. Every other field is copied out verbatim and parsed by the generated
# classes, so protobuf itself decides their values and validity (UTF-8, enums, unknown fields,
# repeated and merged fields). What the walk reads itself (keys, lengths, skipped values) is checked
# against the end of the message that holds it: a malformed or truncated response raises
# MalformedResponseError naming what was wrong and where, never IndexError or a view past the data.
#
# Protobuf merges repeated occurrences of a singular message field (the response's ``images``, an
# AuxTensor's ``tensor``); parsing the concatenation of the occurrences is that merge, and the last
# ``data`` field of all of them is the one protobuf keeps. The decoder does the same, so whatever it
# decodes equals what protobuf's own parser gives (tests/python/test_wire_decode.py checks this on
# random, truncated and corrupted messages). It is stricter in a few places protobuf allows and
# this API never produces: groups (wire types 3 and 4) in the walked messages, and two aux tensors
# with the same name (the result is a dict).

_MAX_VARINT_BYTES = 10  # a 64-bit value; protobuf rejects longer varints too
_MAX_TAG = (1 << 32) - 1  # tags are 32-bit: field number (29 bits) and wire type


class _Walk:
    """Reads keys and lengths of one serialised response; raises MalformedResponseError."""

    def __init__(self, buf):
        self.buf = buf
        self.size = len(buf)

    def error(self, what, pos, context):
        where = f" (at byte {pos})" if pos is not None else ""
        return MalformedResponseError(
            f"malformed response ({self.size} bytes), in {context}: {what}{where}")

    def varint(self, pos, end, context, what="varint"):
        buf = self.buf
        start = pos
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise self.error(f"truncated {what}, cut off by the end of the message at byte "
                                 f"{end}", start, context)
            if pos - start >= _MAX_VARINT_BYTES:
                raise self.error(f"{what} longer than {_MAX_VARINT_BYTES} bytes", start, context)
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, pos
            shift += 7

    def fields(self, start, end, context):
        """Yields (field number, wire type, field start, payload start, field end) of each field in
        buf[start:end]; for a length-delimited field the payload is its bytes, else its value."""
        pos = start
        while pos < end:
            field_start = pos
            key, pos = self.varint(pos, end, context, "field key")
            field, wire_type = key >> 3, key & 7
            if key > _MAX_TAG or field == 0:
                raise self.error(f"invalid field key {key} (field number {field})", field_start,
                                 context)
            if wire_type == _WIRE_VARINT:
                payload = pos
                _, pos = self.varint(pos, end, context, f"value of field {field}")
            elif wire_type in (_WIRE_I64, _WIRE_I32):
                payload = pos
                pos += 8 if wire_type == _WIRE_I64 else 4
                if pos > end:
                    raise self.error(f"truncated fixed-size value of field {field} (needs "
                                     f"{pos - payload} bytes, {end - payload} left)", payload,
                                     context)
            elif wire_type == _WIRE_LEN:
                length, payload = self.varint(pos, end, context, f"length of field {field}")
                if length > end - payload:
                    raise self.error(f"field {field} declares {length} bytes but only "
                                     f"{end - payload} are left", pos, context)
                pos = payload + length
            else:
                raise self.error(f"field {field} has wire type {wire_type}, which this API does "
                                 "not use", field_start, context)
            yield field, wire_type, field_start, payload, pos

    def parse(self, message_class, parts, context):
        """The generated class parses the fields the walk did not take."""
        try:
            return message_class.FromString(b"".join(parts))
        except _DecodeError as e:
            raise self.error(f"protobuf cannot parse the fields besides the tensors ({e})", None,
                             context) from None

    def tensor(self, spans, context):
        """The array held by the Tensor message whose occurrences are ``spans``: a read-only view
        into the buffer."""
        rest = []
        data = (0, 0)
        for start, end in spans:
            for field, wire_type, field_start, payload, field_end in self.fields(start, end,
                                                                                 context):
                if field == _TENSOR_DATA and wire_type == _WIRE_LEN:
                    data = (payload, field_end - payload)  # the last occurrence wins
                else:
                    rest.append(self.buf[field_start:field_end])
        meta = self.parse(pb.Tensor, rest, context)
        if meta.HasField("shm"):
            raise self.error(f"the tensor lies in shared-memory region {meta.shm.region!r}; "
                             "wire.decode_response reads tensors sent inside the message only",
                             None, context)
        dtype = _DTYPE_BY_ENUM.get(meta.dtype)
        if dtype is None:
            raise self.error(f"response tensor has unknown dtype {meta.dtype}", None, context)
        shape = list(meta.shape)
        if any(d < 0 for d in shape):
            raise self.error(f"response tensor has a negative dimension in shape {shape}", None,
                             context)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        if nbytes != data[1]:
            raise self.error(f"response tensor of shape {shape} x {dtype} needs {nbytes} bytes, "
                             f"got {data[1]}", None, context)
        try:
            return np.frombuffer(self.buf, dtype=dtype, count=nbytes // dtype.itemsize,
                                 offset=data[0]).reshape(shape)
        except ValueError as e:  # e.g. more dimensions than NumPy supports
            raise self.error(f"response tensor of shape {shape} cannot be an array ({e})", None,
                             context) from None

    def aux(self, start, end, context):
        rest = []
        spans = []
        for field, wire_type, field_start, payload, field_end in self.fields(start, end, context):
            if field == _AUX_TENSOR and wire_type == _WIRE_LEN:
                spans.append((payload, field_end))
            else:
                rest.append(self.buf[field_start:field_end])
        meta = self.parse(pb.AuxTensor, rest, context)
        return meta.name, self.tensor(spans, f"{context} ({meta.name!r})") if spans else None


@dataclasses.dataclass
class DecodedResponse:
    meta: "pb.ProcessResponse"  # every field but the tensors
    images: np.ndarray  # None when the response carries no images (an error on a stream)
    aux: dict  # name -> ndarray (None for an aux entry without a tensor), in response order


def decode_response(buf):
    """Parses a serialised ProcessResponse; tensors are read-only views into ``buf``.

    Raises MalformedResponseError (a DataLossError, and a ValueError) when the bytes are not a
    well-formed ProcessResponse or a tensor's bytes do not match its dtype and shape.
    """
    walk = _Walk(buf)
    rest = []
    images = []
    aux_spans = []
    for field, wire_type, field_start, payload, field_end in walk.fields(0, walk.size,
                                                                         "the response"):
        if wire_type == _WIRE_LEN and field == _RESP_IMAGES:
            images.append((payload, field_end))
        elif wire_type == _WIRE_LEN and field == _RESP_AUX:
            aux_spans.append((payload, field_end))
        else:
            rest.append(buf[field_start:field_end])
    meta = walk.parse(pb.ProcessResponse, rest, "the response")
    aux = {}
    for i, (start, end) in enumerate(aux_spans):
        name, array = walk.aux(start, end, f"aux entry {i}")
        if name in aux:
            raise walk.error(f"a second aux tensor named {name!r}", None, f"aux entry {i}")
        aux[name] = array
    images = walk.tensor(images, "images") if images else None
    return DecodedResponse(meta=meta, images=images, aux=aux)
