"""The op builders (tensorprep.ops) are generated from the wire API's descriptor: one per Op
field, with the descriptor's arguments and documentation; torchvision-style conveniences build
the same messages; docs/ops.md is the descriptor's table. Offline: no server."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from tensorprep import ops
from tensorprep._stubs import pb

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_every_op_field_has_a_builder_documented_from_the_descriptor():
    fields = [f.name for f in pb.Op.DESCRIPTOR.oneofs_by_name["kind"].fields]
    assert list(ops.OPS) == fields
    for name in fields:
        builder = getattr(ops, name)
        assert ops.op_options(name).summary in builder.__doc__, name
        for f in pb.Op.DESCRIPTOR.fields_by_name[name].message_type.fields:
            assert f.name in builder.__doc__, (name, f.name)
            assert f.GetOptions().Extensions[pb.arg] in builder.__doc__, (name, f.name)


def test_build_sets_fields_and_names_bad_arguments():
    op = ops.build("random_affine", angle_min_deg=-10, angle_max_deg=10, border="reflect_101")
    assert op.WhichOneof("kind") == "random_affine"
    assert op.random_affine.angle_max_deg == 10
    assert op.random_affine.border == pb.BORDER_REFLECT_101
    assert ops.build("resize", height=4, width=5, interpolation="INTERPOLATION_NEAREST") == \
        pb.Op(resize=pb.ResizeOp(height=4, width=5, interpolation=pb.INTERPOLATION_NEAREST))
    with pytest.raises(TypeError, match="heigth"):
        ops.build("resize", heigth=3)
    with pytest.raises(ValueError, match=r"pad\.border: unknown border 'bogus'"):
        ops.pad(1, border="bogus")
    with pytest.raises(ValueError, match=r"crop\.top: expected an integer"):
        ops.crop(1.5, 0, 2, 2)
    with pytest.raises(ValueError, match="unknown op"):
        ops.build("sharpen")


def _sample_fields(message_type):
    """A value for every field of ``message_type`` as a caller writes it, and the value the
    message must hold: distinct numbers, enums by their full name, DType as a NumPy dtype."""
    given, want = {}, {}
    for i, f in enumerate(message_type.fields):
        if f.enum_type is not None and f.enum_type.name == "DType":
            given[f.name], want[f.name] = np.float16, pb.DTYPE_FLOAT16
        elif f.enum_type is not None:
            last = f.enum_type.values[-1]
            given[f.name], want[f.name] = last.name.lower(), last.number
        elif getattr(f, "is_repeated", None) or getattr(f, "label", None) == 3:  # repeated
            given[f.name] = want[f.name] = [0.25 + i, 0.5, 0.75]
        elif f.type in (f.TYPE_INT64, f.TYPE_INT32):
            given[f.name] = want[f.name] = i + 2
        elif f.type == f.TYPE_BOOL:
            given[f.name] = want[f.name] = True
        else:
            given[f.name] = want[f.name] = 0.125 * (i + 3)
    return given, want


@pytest.mark.parametrize("name", ops.OPS)
def test_every_builder_takes_its_message_fields_as_keywords(name):
    message_type = pb.Op.DESCRIPTOR.fields_by_name[name].message_type
    given, want = _sample_fields(message_type)
    expected = pb.Op(**{name: getattr(pb, message_type.name)(**want)})
    assert getattr(ops, name)(**given) == expected
    assert ops.build(name, **given) == expected
    assert getattr(ops, name).__name__ == name


@pytest.mark.parametrize("name,field", [
    (name, f.name) for name in ops.OPS
    for f in pb.Op.DESCRIPTOR.fields_by_name[name].message_type.fields if f.enum_type is not None])
def test_a_bad_enum_name_raises_naming_the_argument(name, field):
    given, _ = _sample_fields(pb.Op.DESCRIPTOR.fields_by_name[name].message_type)
    given[field] = "bicubic"
    with pytest.raises(ValueError, match=rf"^{name}\.{field}: .*'bicubic'"):
        getattr(ops, name)(**given)


def test_torchvision_style_enum_arguments_name_the_field():
    for call, what in [(lambda: ops.resize(8, interpolation="bicubic"), "resize.interpolation"),
                       (lambda: ops.random_resized_crop(8, interpolation="area"),
                        "random_resized_crop.interpolation"),
                       (lambda: ops.rotate(30, border="mirror"), "rotate.border"),
                       (lambda: ops.random_affine(5, border="mirror"), "random_affine.border"),
                       (lambda: ops.random_flip(axis="diagonal"), "random_flip.axis"),
                       (lambda: ops.cast("float64"), "cast.dtype"),
                       (lambda: ops.resize(7.5), "resize.height"),
                       (lambda: ops.random_resized_crop(8, scale="large"),
                        "random_resized_crop.scale")]:
        with pytest.raises(ValueError, match="^" + what.replace(".", r"\.")):
            call()


def test_existing_signatures_build_the_same_messages():
    assert ops.rotate(30, "nearest", "edge", 2) == pb.Op(rotate=pb.RotateOp(
        angle_deg=30, interpolation=pb.INTERPOLATION_NEAREST, border=pb.BORDER_EDGE, fill=2))
    assert ops.rotate(angle_deg=30) == pb.Op(rotate=pb.RotateOp(angle_deg=30))
    assert ops.random_rotate(10).random_rotate == pb.RandomRotateOp(
        min_deg=-10, max_deg=10, interpolation=pb.INTERPOLATION_BILINEAR,
        border=pb.BORDER_CONSTANT)
    assert ops.random_flip(p=0.3, axis="vertical") == pb.Op(random_flip=pb.RandomFlipOp(
        axis=pb.FLIP_AXIS_VERTICAL, p=0.3))
    assert ops.normalize([0.5, 0.4, 0.3], 0.2) == pb.Op(normalize=pb.NormalizeOp(
        mean=[0.5, 0.4, 0.3], std=[0.2]))
    assert ops.add(np.array([1, 2, 3])).add.value == [1, 2, 3]
    c = ops.clamp(max=1).clamp
    assert not c.HasField("min") and c.HasField("max") and c.max == 1
    assert ops.cast("float16").cast.dtype == pb.DTYPE_FLOAT16
    assert ops.flip("ud").flip.axis == pb.FLIP_AXIS_VERTICAL


def test_field_keywords_do_not_mix_with_torchvision_style_ones():
    assert ops.pad(top=2, left=1) == pb.Op(pad=pb.PadOp(top=2, left=1))
    with pytest.raises(TypeError, match="padding"):
        ops.pad(1, top=2)
    with pytest.raises(TypeError, match="scale"):
        ops.random_resized_crop(scale=(0.5, 1), scale_min=0.5)
    with pytest.raises(TypeError, match="size"):
        ops.center_crop(size=3)


def test_torchvision_style_arguments():
    assert ops.color_jitter(0.4, 0.4, 0.4, 0.1).color_jitter == pb.ColorJitterOp(
        brightness_min=0.6, brightness_max=1.4, contrast_min=0.6, contrast_max=1.4,
        saturation_min=0.6, saturation_max=1.4, hue_min=-0.1, hue_max=0.1)
    assert ops.color_jitter(brightness=1.5).color_jitter.brightness_min == 0.0
    assert ops.color_jitter(contrast=(0.2, 0.3)).color_jitter.contrast_max == 0.3
    rrc = ops.random_resized_crop(224).random_resized_crop
    assert (rrc.height, rrc.width, rrc.scale_min, rrc.scale_max) == (224, 224, 0.08, 1.0)
    assert rrc.antialias and rrc.interpolation == pb.INTERPOLATION_BILINEAR
    p = ops.pad((1, 2, 3, 4)).pad
    assert (p.left, p.top, p.right, p.bottom) == (1, 2, 3, 4)
    p = ops.pad((5, 6)).pad
    assert (p.left, p.right, p.top, p.bottom) == (5, 5, 6, 6)
    a = ops.random_affine(15, translate=(0.1, 0.2), scale=(0.8, 1.2), shear=5).random_affine
    assert (a.angle_min_deg, a.angle_max_deg, a.max_translate_y, a.scale_min) == (-15, 15, 0.2, 0.8)
    assert (a.shear_x_min_deg, a.shear_x_max_deg, a.shear_y_max_deg) == (-5, 5, 0)
    assert ops.grayscale().grayscale.num_output_channels == 1
    assert ops.channels_first().WhichOneof("kind") == "channels_first"


def test_has_random_reads_the_descriptor():
    for name in ops.OPS:
        assert ops.op_options(name).random == name.startswith(("random_", "color_jitter")), name
    assert ops.has_random(ops.pipeline(ops.resize(8), ops.color_jitter(0.1)))
    assert not ops.has_random(ops.pipeline(ops.resize(8), ops.hue(0.1)))


def test_docs_ops_md_is_the_generated_table():
    out = subprocess.run([sys.executable, "-m", "tensorprep.ops", "--markdown"], check=True,
                         capture_output=True, text=True).stdout
    assert out == (REPO / "docs" / "ops.md").read_text(), (
        "docs/ops.md is stale: python -m tensorprep.ops --markdown > docs/ops.md")
    assert "| `random_resized_crop` |" in out
