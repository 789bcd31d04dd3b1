"""Builders for pipeline ops: each returns one ``Op`` message of the wire API.

    from tensorprep import ops
    pipeline = [ops.random_flip(p=0.5), ops.rotate(30, border="edge"), ops.normalize(0.5, 0.25)]
    imagenet = [ops.random_resized_crop(224), ops.random_flip(), ops.color_jitter(0.4, 0.4, 0.4,
                0.1), ops.cast("float32"), ops.divide(255), ops.normalize(MEAN, STD),
                ops.cast("float16"), ops.channels_first()]

There is a builder for every field of the wire API's ``Op`` (``OPS`` lists them), made from the
proto descriptor at import: its keyword arguments are the op message's fields, its docstring the
descriptor's (op) summary and (arg) descriptions, enums are taken by name, and a value that does
not fit raises ValueError naming "op.field". Some builders have positional and torchvision-style
arguments on top (``rotate(angle)``, ``resize``, ``random_resized_crop``, ``pad``, ``affine``,
``random_affine``, ``color_jitter``, ...); they build the same messages and still take the
message's fields as keywords (``pad(top=2, left=1)``). ``has_random`` reads the descriptor's
``random`` flag. ``python -m tensorprep.ops --markdown`` prints the table of ops (docs/ops.md).

Geometric ops (the descriptor's ``geometric``: rotate, flip, resize, crop, pad, affine and their
random variants) apply to the main batch and to every auxiliary tensor (labels, masks); the
others apply to the main batch only. Angles are degrees, positive counter-clockwise about
((w-1)/2, (h-1)/2), as in skimage.transform.rotate (torchvision's are clockwise).

Border names are the wire API's, which follow OpenCV: "constant", "edge", "reflect" (cba|abc|cba,
skimage's "symmetric"), "reflect_101" (cb|abc|ba, skimage's "reflect"), "wrap". "symmetric" is
accepted as an alias of "reflect". Builders raise ValueError on a name they do not know; the server
checks values (finite angles, p in [0, 1], non-zero divisors) and answers INVALID_ARGUMENT.
"""

import functools
import inspect
import numbers

import numpy as np
from google.protobuf import descriptor as _descriptor

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
    return build("rotate", angle_deg=angle, interpolation=interpolation, border=border, fill=fill)


def random_rotate(min_deg, max_deg=None, interpolation="bilinear", border="constant", fill=0.0):
    """Rotates each sample by an angle drawn uniformly from [min_deg, max_deg].

    With one argument, the range is [-min_deg, +min_deg].
    """
    lo, hi = (-abs(float(min_deg)), abs(float(min_deg))) if max_deg is None else (min_deg, max_deg)
    return build("random_rotate", min_deg=lo, max_deg=hi, interpolation=interpolation,
                 border=border, fill=fill)


def flip(axis="horizontal"):
    """Mirrors every sample: "horizontal" (left-right, np.fliplr) or "vertical" (np.flipud)."""
    return build("flip", axis=axis)


def random_flip(p=0.5, axis="horizontal"):
    """Mirrors each sample with probability ``p``, drawn per sample from the request's seed."""
    return build("random_flip", axis=axis, p=p)


def add(value):
    """x + value; a scalar or one value per channel."""
    return build("add", value=value)


def subtract(value):
    """x - value; a scalar or one value per channel."""
    return build("subtract", value=value)


def multiply(value):
    """x * value; a scalar or one value per channel."""
    return build("multiply", value=value)


def divide(value):
    """x / value; a scalar or one value per channel, non-zero."""
    return build("divide", value=value)


def normalize(mean, std):
    """(x - mean[c]) / std[c] on a floating batch; mean and std are scalars or per channel."""
    return build("normalize", mean=mean, std=std)


def clamp(min=None, max=None):  # noqa: A002 - the wire API's names
    """Limits values to [min, max]; a bound left as None does not limit."""
    return build("clamp", min=min, max=max)


def cast(dtype):
    """Converts to ``dtype`` ("uint8", "int32", "float32", "float16" or a NumPy dtype),
    rounding to nearest and saturating."""
    return build("cast", dtype=dtype)


# ---- builders generated from the descriptor ---------------------------------------------------

_KIND = pb.Op.DESCRIPTOR.oneofs_by_name["kind"]
_FD = _descriptor.FieldDescriptor
_ENUM_NAMES = {
    "Interpolation": (_INTERPOLATION, "interpolation"),
    "Border": (_BORDER, "border"),
    "FlipAxis": (_AXIS, "flip axis"),
}


def op_options(name):
    """The (op) option of Op field ``name``: summary, geometric, random."""
    return pb.Op.DESCRIPTOR.fields_by_name[name].GetOptions().Extensions[pb.op]


def _arg_doc(field):
    return field.GetOptions().Extensions[pb.arg]


def _repeated(field):
    # protobuf >= 6 has is_repeated; older releases only the label.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == _FD.LABEL_REPEATED


def _optional(field):
    # A proto3 ``optional`` scalar: presence through a synthetic oneof of its own (protobuf's
    # Python descriptors do not say "synthetic", but such a oneof holds exactly that field).
    oneof = field.containing_oneof
    return (field.has_presence and field.message_type is None
            and (oneof is None or list(oneof.fields) == [field]))


def _type_name(field):
    if field.enum_type is not None:
        return field.enum_type.name
    if field.message_type is not None:
        return field.message_type.name
    names = {_FD.TYPE_DOUBLE: "double", _FD.TYPE_FLOAT: "float", _FD.TYPE_INT64: "int64",
             _FD.TYPE_INT32: "int32", _FD.TYPE_BOOL: "bool", _FD.TYPE_STRING: "string"}
    t = names.get(field.type, str(field.type))
    if _repeated(field):
        return "repeated " + t
    if _optional(field):
        return "optional " + t
    return t


def _enum_number(what, field, value):
    enum = field.enum_type
    if enum.name == "DType":
        try:
            return dtype_enum(value)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
    table, label = _ENUM_NAMES.get(enum.name, ({}, enum.name))
    if value is None:
        return 0
    if isinstance(value, str):
        key = value.lower()
        if key in table:
            return table[key]
        by_name = enum.values_by_name.get(value.upper())
        if by_name is not None:
            return by_name.number
        names = sorted(k for k in table if k is not None) or sorted(enum.values_by_name)
        raise ValueError(f"{what}: unknown {label} {value!r}; expected one of {names}")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) \
            and int(value) in enum.values_by_number:
        return int(value)
    raise ValueError(f"{what}: expected a {label} name or {enum.name} value, got {value!r}")


def _convert(op_name, field, value):
    """``value`` for ``field`` of op ``op_name``'s message; ValueError naming the argument
    ("resize.interpolation: ...") when it does not fit the field."""
    what = f"{op_name}.{field.name}"
    if field.enum_type is not None:
        return _enum_number(what, field, value)
    if _repeated(field):
        try:
            return _values(value, what)
        except TypeError as e:
            raise ValueError(f"{what}: expected numbers, got {value!r}") from e
    try:
        if field.type in (_FD.TYPE_INT64, _FD.TYPE_INT32):
            if isinstance(value, bool) or not float(value).is_integer():
                raise ValueError
            return int(value)
        if field.type == _FD.TYPE_BOOL:
            if not isinstance(value, (bool, np.bool_)) and value not in (0, 1):
                raise ValueError
            return bool(value)
        return float(value)
    except (TypeError, ValueError, OverflowError):
        kind = {_FD.TYPE_INT64: "an integer", _FD.TYPE_INT32: "an integer",
                _FD.TYPE_BOOL: "a bool"}.get(field.type, "a number")
        raise ValueError(f"{what}: expected {kind}, got {value!r}") from None


def build(name, **fields):
    """The Op ``name`` (a field of the wire API's Op, e.g. "random_resized_crop") with its
    message's ``fields`` set from the keywords, as given: a field left out keeps the message's
    default. Enums by name ("bilinear", "BORDER_EDGE") or value, DType as a NumPy dtype or its
    name; None leaves an ``optional`` field unset. ValueError for an unknown op or a value that
    does not fit its field (naming "op.field"), TypeError for a field the message does not have."""
    if name not in OPS:
        raise ValueError(f"unknown op {name!r}; expected one of {list(OPS)}")
    message_type = pb.Op.DESCRIPTOR.fields_by_name[name].message_type
    msg = getattr(pb, message_type.name)()
    for key, value in fields.items():
        f = message_type.fields_by_name.get(key)
        if f is None:
            raise TypeError(f"{name}() has no argument {key!r}; its arguments are "
                            f"{[x.name for x in message_type.fields]}")
        if value is None and _optional(f):
            continue
        converted = _convert(name, f, value)
        if _repeated(f):
            getattr(msg, key).extend(converted)
        else:
            setattr(msg, key, converted)
    return pb.Op(**{name: msg})


def _doc(name):
    o = op_options(name)
    message_type = pb.Op.DESCRIPTOR.fields_by_name[name].message_type
    lines = [o.summary + "."]
    flags = [w for w, on in (("geometric: follows aux tensors", o.geometric),
                             ("random: drawn per sample from the request's seed", o.random)) if on]
    if flags:
        lines += ["", "; ".join(flags).capitalize() + "."]
    if message_type.fields:
        lines += ["", "Arguments (the message's fields, taken as keywords):"]
        lines += [f"    {f.name} ({_type_name(f)}): {_arg_doc(f)}" for f in message_type.fields]
    return "\n".join(lines)


def _generated(name):
    def builder(**fields):
        return build(name, **fields)
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = _doc(name)
    return builder


OPS = tuple(f.name for f in _KIND.fields)


def _pair(value, what):
    """A number n -> (n, n); a (min, max) pair -> itself; ValueError naming ``what`` else."""
    if isinstance(value, numbers.Real):
        return float(value), float(value)
    try:
        lo, hi = value
        return float(lo), float(hi)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a number or a (min, max) pair, got {value!r}") \
            from None


def _hw(height, width):
    # Integers are checked by build(), which names the field.
    return height, height if width is None else width


# ---- torchvision-style builders of the new ops ------------------------------------------------

def resize(height, width=None, interpolation="bilinear", antialias=True):
    """torchvision's resize to height x width (square when width is None); ``antialias``
    (bilinear only) filters an axis that shrinks, as torchvision's antialias=True."""
    h, w = _hw(height, width)
    return build("resize", height=h, width=w, interpolation=interpolation, antialias=antialias)


def crop(top, left, height, width):
    """Keeps rows [top, top + height) and columns [left, left + width); the box must lie inside
    the image."""
    return build("crop", top=top, left=left, height=height, width=width)


def center_crop(height, width=None, fill=0.0):
    """torchvision's center_crop: a size larger than the image pads it with ``fill``."""
    h, w = _hw(height, width)
    return build("center_crop", height=h, width=w, fill=fill)


def pad(padding, border="constant", fill=0.0):
    """torchvision's pad: ``padding`` is one number (all sides), (left/right, top/bottom) or
    (left, top, right, bottom). Borders: "constant" (fill), "edge", "reflect_101" (torchvision's
    "reflect"), "reflect" (torchvision's "symmetric"), "wrap"."""
    if isinstance(padding, numbers.Integral):
        left = top = right = bottom = int(padding)
    elif len(padding) == 2:
        left = right = int(padding[0])
        top = bottom = int(padding[1])
    elif len(padding) == 4:
        left, top, right, bottom = (int(v) for v in padding)
    else:
        raise ValueError(f"pad.padding: expected 1, 2 or 4 numbers, got {padding!r}")
    return build("pad", top=top, bottom=bottom, left=left, right=right, border=border, fill=fill)


def random_resized_crop(height, width=None, scale=(0.08, 1.0), ratio=(3.0 / 4.0, 4.0 / 3.0),
                        interpolation="bilinear", antialias=True):
    """torchvision's RandomResizedCrop: a box of area scale x the image's and aspect ratio in
    ``ratio`` (log-uniform) drawn per sample, resized to height x width."""
    h, w = _hw(height, width)
    s_lo, s_hi = _pair(scale, "random_resized_crop.scale")
    r_lo, r_hi = _pair(ratio, "random_resized_crop.ratio")
    return build("random_resized_crop", height=h, width=w, scale_min=s_lo, scale_max=s_hi,
                 ratio_min=r_lo, ratio_max=r_hi, interpolation=interpolation,
                 antialias=antialias)


def affine(angle=0.0, translate=(0.0, 0.0), scale=1.0, shear=(0.0, 0.0),
           interpolation="bilinear", border="constant", fill=0.0):
    """torchvision's affine about the centre, except that ``angle`` is counter-clockwise (pass
    torchvision's angle negated). ``shear`` is degrees: one number (x) or (x, y)."""
    if isinstance(shear, numbers.Real):
        sx, sy = float(shear), 0.0
    else:
        sx, sy = _pair(shear, "affine.shear")
    tx, ty = _pair(translate, "affine.translate")
    return build("affine", angle_deg=angle, translate_x=tx, translate_y=ty, scale=scale,
                 shear_x_deg=sx, shear_y_deg=sy, interpolation=interpolation, border=border,
                 fill=fill)


def random_affine(degrees=0.0, translate=None, scale=None, shear=None, interpolation="bilinear",
                  border="constant", fill=0.0):
    """torchvision's RandomAffine: ``degrees`` a number d ([-d, d]) or a range (counter-clockwise
    here), ``translate`` (fx, fy) fractions of the size, ``scale`` a range, ``shear`` a number s
    (x in [-s, s]), (lo, hi) for x, or (x_lo, x_hi, y_lo, y_hi)."""
    if isinstance(degrees, numbers.Real):
        a_lo, a_hi = -abs(float(degrees)), abs(float(degrees))
    else:
        a_lo, a_hi = _pair(degrees, "random_affine.degrees")
    fx, fy = (0.0, 0.0) if translate is None else _pair(translate, "random_affine.translate")
    s_lo, s_hi = (0.0, 0.0) if scale is None else _pair(scale, "random_affine.scale")
    shx = shy = (0.0, 0.0)
    if shear is not None:
        if isinstance(shear, numbers.Real):
            shx = (-abs(float(shear)), abs(float(shear)))
        elif len(shear) == 2:
            shx = _pair(shear, "random_affine.shear")
        elif len(shear) == 4:
            shx, shy = (shear[0], shear[1]), (shear[2], shear[3])
        else:
            raise ValueError(
                f"random_affine.shear: expected a number, 2 or 4 numbers, got {shear!r}")
    return build("random_affine", angle_min_deg=a_lo, angle_max_deg=a_hi, max_translate_x=fx,
                 max_translate_y=fy, scale_min=s_lo, scale_max=s_hi, shear_x_min_deg=shx[0],
                 shear_x_max_deg=shx[1], shear_y_min_deg=shy[0], shear_y_max_deg=shy[1],
                 interpolation=interpolation, border=border, fill=fill)


def brightness(factor):
    """torchvision's adjust_brightness (RGB; factor >= 0, 1 = unchanged)."""
    return build("brightness", factor=factor)


def contrast(factor):
    """torchvision's adjust_contrast (RGB; factor >= 0, 1 = unchanged)."""
    return build("contrast", factor=factor)


def saturation(factor):
    """torchvision's adjust_saturation (RGB; factor >= 0, 1 = unchanged)."""
    return build("saturation", factor=factor)


def hue(factor):
    """torchvision's adjust_hue (RGB; factor in [-0.5, 0.5] turns, 0 = unchanged)."""
    return build("hue", factor=factor)


def grayscale(num_output_channels=1):
    """torchvision's rgb_to_grayscale: 1 channel, or 3 equal ones."""
    return build("grayscale", num_output_channels=num_output_channels)


def _jitter_range(value, center, what):
    if isinstance(value, numbers.Real):
        if value < 0:
            raise ValueError(f"color_jitter.{what}: expected a non-negative number, got {value}")
        if value == 0:
            return 0.0, 0.0
        return (max(0.0, center - value), center + value) if center else (-value, value)
    return _pair(value, f"color_jitter.{what}")


def color_jitter(brightness=0, contrast=0, saturation=0, hue=0):  # noqa: F811 - the op's names
    """torchvision's ColorJitter: a number b is the factor range [max(0, 1 - b), 1 + b] (hue h:
    [-h, h]), a pair is the range itself, 0 leaves the adjustment out; factors and the order of
    the four are drawn per sample."""
    b = _jitter_range(brightness, 1.0, "brightness")
    c = _jitter_range(contrast, 1.0, "contrast")
    s = _jitter_range(saturation, 1.0, "saturation")
    h = _jitter_range(hue, 0.0, "hue")
    return build("color_jitter", brightness_min=b[0], brightness_max=b[1], contrast_min=c[0],
                 contrast_max=c[1], saturation_min=s[0], saturation_max=s[1], hue_min=h[0],
                 hue_max=h[1])


def channels_first():
    """Writes the main batch (N, C, H, W), as PyTorch models take it; the last op only."""
    return build("channels_first")


def _with_fields(name, fn):
    """``fn`` (a hand-written builder of op ``name``) that also takes the op message's fields as
    keywords: a call naming a field that is not one of ``fn``'s own parameters (pad(top=2),
    affine(angle_deg=30), color_jitter(hue_min=-0.1, hue_max=0.1)) builds the message from its
    keywords alone, as ``build`` does; such a call with positional arguments or with ``fn``'s own
    torchvision-style names is a TypeError. Other calls go to ``fn`` unchanged."""
    fields = [f.name for f in pb.Op.DESCRIPTOR.fields_by_name[name].message_type.fields]
    own = set(inspect.signature(fn).parameters)
    fields_only = set(fields) - own

    @functools.wraps(fn)
    def builder(*args, **kwargs):
        if not fields_only.intersection(kwargs):
            return fn(*args, **kwargs)
        others = sorted(set(kwargs) - set(fields))
        if args or others:
            raise TypeError(f"{name}(): the message's fields {fields} are keywords that do not mix "
                            f"with positional arguments or {sorted(own - set(fields))}; got "
                            f"{len(args)} positional and {others}")
        return build(name, **kwargs)
    builder.__doc__ = (fn.__doc__ or "").rstrip() + "\n\n" + _doc(name)
    return builder


# Every Op field without a hand-written builder above gets the generated one; the hand-written
# ones also take the message's fields and carry the descriptor's documentation below their own.
for _name in OPS:
    _existing = globals().get(_name)
    globals()[_name] = _generated(_name) if _existing is None else _with_fields(_name, _existing)
del _name, _existing


def markdown():
    """The table of ops (docs/ops.md), from the descriptor."""
    lines = ["# Ops", "",
             "Generated from the wire API's descriptor by `python -m tensorprep.ops --markdown`"
             " (a test checks that this file is current). [augmentations.md](augmentations.md)"
             " says what the newer ops compute and how they compare with torchvision.", "",
             "| op | what it does | geometric | random | arguments |", "|---|---|---|---|---|"]
    for name in OPS:
        o = op_options(name)
        message_type = pb.Op.DESCRIPTOR.fields_by_name[name].message_type
        args = "<br>".join(f"`{f.name}` ({_type_name(f)}): {_arg_doc(f)}"
                           for f in message_type.fields) or "none"
        lines.append(f"| `{name}` | {o.summary} | {'yes' if o.geometric else ''} | "
                     f"{'yes' if o.random else ''} | {args.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"


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
    return any(op_options(op.WhichOneof("kind")).random for op in pipeline_msg.ops
               if op.WhichOneof("kind") is not None)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m tensorprep.ops --markdown")
    sys.stdout.write(markdown())
