"""Builders for pipeline ops: each returns one ``Op`` message of the wire API.

    from tensorprep import ops
    pipeline = [ops.random_flip(p=0.5), ops.rotate(30, border="edge"), ops.normalize(0.5, 0.25)]

Geometric ops (rotate, flip, random_rotate, random_flip) apply to the main batch and to every
auxiliary tensor (labels, masks); the others apply to the main batch only. Angles are degrees,
positive counter-clockwise about ((w-1)/2, (h-1)/2), as in skimage.transform.rotate.

Border names are the wire API's, which follow OpenCV: "constant", "edge", "reflect" (cba|abc|cba,
skimage's "symmetric"), "reflect_101" (cb|abc|ba, skimage's "reflect"), "wrap". "symmetric" is
accepted as an alias of "reflect". Builders raise ValueError on a name they do not know; the server
checks values (finite angles, p in [0, 1], non-zero divisors) and answers INVALID_ARGUMENT.
"""

import numbers

import numpy as np

from ._stubs import pb

_INTERPOLATION = {
    None: pb.INTERPOLATION_UNSPECIFIED,
    "nearest": pb.INTERPOLATION_NEAREST,
    "bilinear": pb.INTERPOLATION_BILINEAR,
    "linear": pb.INTERPOLATION_BILINEAR,
}
_BORDER = {
    "constant": pb.BORDER_CONSTANT,
    "edge": pb.BORDER_EDGE,
    "replicate": pb.BORDER_EDGE,
    "reflect": pb.BORDER_REFLECT,
    "symmetric": pb.BORDER_REFLECT,
    "reflect_101": pb.BORDER_REFLECT_101,
    "wrap": pb.BORDER_WRAP,
}
_AXIS = {
    "horizontal": pb.FLIP_AXIS_HORIZONTAL,
    "left_right": pb.FLIP_AXIS_HORIZONTAL,
    "lr": pb.FLIP_AXIS_HORIZONTAL,
    "vertical": pb.FLIP_AXIS_VERTICAL,
    "up_down": pb.FLIP_AXIS_VERTICAL,
    "ud": pb.FLIP_AXIS_VERTICAL,
}
DTYPES = {
    np.dtype(np.uint8): pb.DTYPE_UINT8,
    np.dtype(np.int32): pb.DTYPE_INT32,
    np.dtype(np.float32): pb.DTYPE_FLOAT32,
    np.dtype(np.float16): pb.DTYPE_FLOAT16,
}


def _lookup(table, value, what):
    key = value.lower() if isinstance(value, str) else value
    if key not in table:
        names = sorted(k for k in table if k is not None)
        raise ValueError(f"unknown {what} {value!r}; expected one of {names}")
    return table[key]


def interpolation_enum(value):
    """"nearest" / "bilinear" / None (the server's default) -> Interpolation enum value."""
    return _lookup(_INTERPOLATION, value, "interpolation")


def dtype_enum(dtype):
    """A NumPy dtype or its name ("float32") -> DType enum value; ValueError if unsupported."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e
    if dt.byteorder == ">":
        dt = dt.newbyteorder("<")
    if dt not in DTYPES:
        raise ValueError(f"dtype {dt} is not supported; expected one of "
                         f"{sorted(str(d) for d in DTYPES)}")
    return DTYPES[dt]


def _values(value, what):
    if isinstance(value, numbers.Real):
        return [float(value)]
    values = [float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1)]
    if not values:
        raise ValueError(f"{what} needs a scalar or one value per channel, got an empty sequence")
    return values


def rotate(angle, interpolation="bilinear", border="constant", fill=0.0):
    """Rotates every sample by ``angle`` degrees counter-clockwise."""
    return pb.Op(rotate=pb.RotateOp(angle_deg=float(angle),
                                    interpolation=interpolation_enum(interpolation),
                                    border=_lookup(_BORDER, border, "border"), fill=float(fill)))


def random_rotate(min_deg, max_deg=None, interpolation="bilinear", border="constant", fill=0.0):
    """Rotates each sample by an angle drawn uniformly from [min_deg, max_deg].

    With one argument, the range is [-min_deg, +min_deg].
    """
    lo, hi = (-abs(float(min_deg)), abs(float(min_deg))) if max_deg is None else (min_deg, max_deg)
    return pb.Op(random_rotate=pb.RandomRotateOp(
        min_deg=float(lo), max_deg=float(hi), interpolation=interpolation_enum(interpolation),
        border=_lookup(_BORDER, border, "border"), fill=float(fill)))


def flip(axis="horizontal"):
    """Mirrors every sample: "horizontal" (left-right, np.fliplr) or "vertical" (np.flipud)."""
    return pb.Op(flip=pb.FlipOp(axis=_lookup(_AXIS, axis, "flip axis")))


def random_flip(p=0.5, axis="horizontal"):
    """Mirrors each sample with probability ``p``, drawn per sample from the request's seed."""
    return pb.Op(random_flip=pb.RandomFlipOp(axis=_lookup(_AXIS, axis, "flip axis"), p=float(p)))


def add(value):
    """x + value; a scalar or one value per channel."""
    return pb.Op(add=pb.ArithmeticOp(value=_values(value, "add")))


def subtract(value):
    """x - value; a scalar or one value per channel."""
    return pb.Op(subtract=pb.ArithmeticOp(value=_values(value, "subtract")))


def multiply(value):
    """x * value; a scalar or one value per channel."""
    return pb.Op(multiply=pb.ArithmeticOp(value=_values(value, "multiply")))


def divide(value):
    """x / value; a scalar or one value per channel, non-zero."""
    return pb.Op(divide=pb.ArithmeticOp(value=_values(value, "divide")))


def normalize(mean, std):
    """(x - mean[c]) / std[c] on a floating batch; mean and std are scalars or per channel."""
    return pb.Op(normalize=pb.NormalizeOp(mean=_values(mean, "normalize mean"),
                                          std=_values(std, "normalize std")))


def clamp(min=None, max=None):  # noqa: A002 - the wire API's names
    """Limits values to [min, max]; a bound left as None does not limit."""
    op = pb.ClampOp()
    if min is not None:
        op.min = float(min)
    if max is not None:
        op.max = float(max)
    return pb.Op(clamp=op)


def cast(dtype):
    """Converts to ``dtype`` ("uint8", "int32", "float32", "float16" or a NumPy dtype),
    rounding to nearest and saturating."""
    return pb.Op(cast=pb.CastOp(dtype=dtype_enum(dtype)))


def pipeline(*op_list):
    """A Pipeline message from ops (or one list of ops)."""
    if len(op_list) == 1 and not isinstance(op_list[0], pb.Op):
        op_list = tuple(op_list[0])
    return as_pipeline(list(op_list))


def as_pipeline(value):
    """Accepts a Pipeline message, one Op, or a sequence of Ops; returns a Pipeline message."""
    if isinstance(value, pb.Pipeline):
        return value
    if isinstance(value, pb.Op):
        return pb.Pipeline(ops=[value])
    ops = list(value)
    for i, op in enumerate(ops):
        if not isinstance(op, pb.Op):
            raise TypeError(
                f"pipeline[{i}] is {type(op).__name__}, expected an op from tensorprep.ops")
    return pb.Pipeline(ops=ops)


def has_random(pipeline_msg):
    """True when the pipeline draws random numbers (so an unset seed should be drawn per call)."""
    return any(op.WhichOneof("kind") in ("random_flip", "random_rotate") for op in pipeline_msg.ops)
