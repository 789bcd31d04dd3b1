"""The shape, colour and layout ops through a real server against torchvision's functions on the
same images (tensorprep.ops builders in, NumPy arrays out), so that a PyTorch user can replace
a torchvision transform with a tensorprep pipeline. The tolerance of each op is stated beside its
test and in docs/augmentations.md.

These run with Debian's torch 1.13 / torchvision 0.14, whose ``transforms.functional`` tensor
kernels are what ``transforms.v2.functional`` runs for these ops (v2 is not in 0.14);
scripts/torch-latest.sh runs this file against the newest PyTorch on PyPI. Note for newer
releases: torchvision >= 0.16 resizes uint8 natively with 16-bit fixed-point weights, so uint8
antialiased resizes may differ by 1 on more values there (the tolerance below already allows 1).
"""

import numpy as np
import pytest

import tensorprep as tp
from tensorprep import ops

torch = pytest.importorskip("torch")
TF = pytest.importorskip("torchvision.transforms.functional")
IM = pytest.importorskip("torchvision.transforms").InterpolationMode

RNG = np.random.default_rng(20261203)


@pytest.fixture(scope="module")
def client(server):
    with tp.Client(server.address, timeout=60) as c:
        yield c


def images(dtype, shape=(3, 37, 53, 3)):
    if dtype == np.uint8:
        return RNG.integers(0, 256, shape, dtype=np.uint8)
    return RNG.random(shape, dtype=np.float32)


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def run(client, x, *pipeline, seed=0):
    return np.asarray(client.process(x, list(pipeline), seed=seed))


def assert_close(got, want, atol, max_fraction=1.0):
    """|got - want| <= atol everywhere, and differing values at most ``max_fraction`` of all."""
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert diff.max() <= atol, f"max difference {diff.max()} over {atol}"
    fraction = np.count_nonzero(diff) / diff.size
    assert fraction <= max_fraction, f"{fraction:.4f} of values differ (allowed {max_fraction})"


# ---- resize: bilinear uint8 within 1 on at most 3% of values (torch interpolates in float32
# from float32 source positions and rounds; the warp takes positions in double, so sums near
# k + 0.5 round either way: 2.1% of values at 53 -> 20 columns), float32 within 1e-5; nearest
# exact.

@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("size", [(20, 25), (80, 61), (37, 20)])
def test_resize_bilinear_matches_torchvision(client, dtype, size):
    x = images(dtype)
    got = run(client, x, ops.resize(*size, antialias=False))
    want = nhwc(TF.resize(nchw(x), list(size), interpolation=IM.BILINEAR, antialias=False))
    if dtype == np.uint8:
        assert_close(got, want, 1, 0.03)
    else:
        assert_close(got, want, 1e-5)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("size", [(20, 25), (12, 40), (224, 224)])
def test_resize_antialias_matches_torchvision(client, dtype, size):
    x = images(dtype, (2, 256, 200, 3))
    got = run(client, x, ops.resize(*size, antialias=True))
    want = nhwc(TF.resize(nchw(x), list(size), interpolation=IM.BILINEAR, antialias=True))
    if dtype == np.uint8:
        assert_close(got, want, 1, 0.01)
    else:
        assert_close(got, want, 2e-5)


@pytest.mark.parametrize("size", [(20, 25), (80, 106)])
def test_resize_nearest_matches_torchvision(client, size):
    x = images(np.uint8)
    got = run(client, x, ops.resize(*size, interpolation="nearest"))
    want = nhwc(TF.resize(nchw(x), list(size), interpolation=IM.NEAREST))
    np.testing.assert_array_equal(got, want)


# ---- crop, center crop, pad: exact copies.

def test_crop_and_center_crop_match_torchvision(client):
    x = images(np.float32)
    np.testing.assert_array_equal(run(client, x, ops.crop(5, 7, 20, 30)),
                                  nhwc(TF.crop(nchw(x), 5, 7, 20, 30)))
    for size in [(20, 30), (21, 31), (50, 40), (37, 60)]:
        got = run(client, x, ops.center_crop(*size))
        np.testing.assert_array_equal(got, nhwc(TF.center_crop(nchw(x), list(size))),
                                      err_msg=str(size))


@pytest.mark.parametrize("border,mode", [("constant", "constant"), ("edge", "edge"),
                                         ("reflect_101", "reflect"),
                                         ("reflect", "symmetric")])
def test_pad_matches_torchvision(client, border, mode):
    x = images(np.float32)
    padding = [3, 1, 4, 2]  # left, top, right, bottom
    got = run(client, x, ops.pad(padding, border=border, fill=0.5))
    want = nhwc(TF.pad(nchw(x), padding, fill=0.5, padding_mode=mode))
    np.testing.assert_array_equal(got, want)


def test_pad_wrap_matches_numpy(client):
    x = images(np.uint8)
    got = run(client, x, ops.pad((2, 3), border="wrap"))
    np.testing.assert_array_equal(got, np.pad(x, ((0, 0), (3, 3), (2, 2), (0, 0)), mode="wrap"))


# ---- affine: nearest equal but for source positions within float rounding of a pixel boundary
# (torchvision computes its grid in float32): at most 0.5% of pixels, any value; bilinear within
# float32 rounding (1e-5 for values in [0, 1)) against torchvision's fill=None (grid_sample's
# zero padding, our constant border with fill 0). torchvision with a fill, even 0, multiplies the
# edge band by a bilinearly resampled mask once more (up to 0.24 here): docs/augmentations.md.

AFFINES = [dict(angle=30, translate=(3, -2), scale=1.2, shear=(10, 5)),
           dict(angle=-45, translate=(0, 0), scale=0.7, shear=(0, 0)),
           dict(angle=0, translate=(5, 4), scale=1.0, shear=(-20, 0))]


@pytest.mark.parametrize("args", AFFINES)
def test_affine_matches_torchvision(client, args):
    x = images(np.float32, (2, 40, 52, 3))
    tv = dict(angle=-args["angle"], translate=list(args["translate"]), scale=args["scale"],
              shear=list(args["shear"]))
    got = run(client, x, ops.affine(**args, interpolation="bilinear"))
    want = nhwc(TF.affine(nchw(x), interpolation=IM.BILINEAR, fill=None, **tv))
    assert_close(got, want, 1e-5)
    got = run(client, x, ops.affine(**args, interpolation="nearest"))
    want = nhwc(TF.affine(nchw(x), interpolation=IM.NEAREST, fill=None, **tv))
    assert_close(got, want, 1.0, 0.005)


# ---- colour: uint8 exact; float32 exact but contrast (the mean summed in double where torch
# sums in float32: 1e-6).

COLOUR = [("brightness", TF.adjust_brightness, 1.4), ("brightness", TF.adjust_brightness, 0.3),
          ("contrast", TF.adjust_contrast, 0.5), ("contrast", TF.adjust_contrast, 1.7),
          ("saturation", TF.adjust_saturation, 0.2), ("saturation", TF.adjust_saturation, 2.5),
          ("hue", TF.adjust_hue, 0.25), ("hue", TF.adjust_hue, -0.5)]


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("name,fn,factor", COLOUR)
def test_colour_matches_torchvision(client, dtype, name, fn, factor):
    x = images(dtype, (3, 31, 45, 3))
    got = run(client, x, getattr(ops, name)(factor))
    want = nhwc(fn(nchw(x), factor))
    if dtype == np.float32 and name == "contrast":
        assert_close(got, want, 1e-6)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("channels", [1, 3])
def test_grayscale_matches_torchvision(client, dtype, channels):
    x = images(dtype, (2, 17, 23, 3))
    got = run(client, x, ops.grayscale(channels))
    want = nhwc(TF.rgb_to_grayscale(nchw(x), num_output_channels=channels))
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_color_jitter_is_the_four_adjustments_in_a_drawn_order(client):
    """Degenerate ranges fix the factors; each sample must then be one of the 24 orders of
    torchvision's four functions, and over a batch more than one order occurs."""
    x = np.repeat(images(np.uint8, (1, 20, 24, 3)), 16, axis=0)
    got = run(client, x, ops.color_jitter((1.3, 1.3), (0.6, 0.6), (1.8, 1.8), (0.1, 0.1)), seed=4)
    fns = [lambda t: TF.adjust_brightness(t, 1.3), lambda t: TF.adjust_contrast(t, 0.6),
           lambda t: TF.adjust_saturation(t, 1.8), lambda t: TF.adjust_hue(t, 0.1)]
    import itertools
    candidates = {}
    for order in itertools.permutations(range(4)):
        t = nchw(x[:1])
        for k in order:
            t = fns[k](t)
        candidates[order] = nhwc(t)[0]
    seen = set()
    for i in range(len(x)):
        match = [o for o, c in candidates.items() if np.array_equal(c, got[i])]
        assert match, f"sample {i} is no order of the four adjustments"
        seen.add(match[0])
    assert len(seen) > 1


# ---- random resized crop: the whole-image box is resize; a seed's result does not depend on
# the batch split; the box is a torchvision box (checked through the output's statistics).

def test_random_resized_crop_whole_box_is_resize(client):
    x = images(np.uint8, (2, 60, 80, 3))
    got = run(client, x, ops.random_resized_crop(30, 40, scale=(1, 1), ratio=(80 / 60, 80 / 60)))
    want = nhwc(TF.resize(nchw(x), [30, 40], interpolation=IM.BILINEAR, antialias=True))
    assert_close(got, want, 1, 0.01)


def test_random_ops_do_not_depend_on_the_batch_split(client):
    x = images(np.uint8, (6, 64, 64, 3))
    pipeline = [ops.random_resized_crop(32), ops.random_flip(), ops.color_jitter(0.4, 0.4, 0.4, 0.1),
                ops.random_affine(10, scale=(0.9, 1.1))]
    whole = client.process(x, pipeline, seed=11)
    parts = [client.process(x[i:i + 2], pipeline, seed=11, sample_offset=i) for i in (0, 2, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# ---- layout and masks.

def test_channels_first_is_the_transposed_result(client):
    x = images(np.uint8, (3, 40, 50, 3))
    body = [ops.random_resized_crop(24, 20), ops.random_flip(), ops.cast("float32"),
            ops.divide(255), ops.normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ops.cast("float16")]
    a = client.process(x, body, seed=2)
    b = client.process(x, body + [ops.channels_first()], seed=2)
    assert b.shape == (3, 3, 24, 20) and b.dtype == np.float16
    np.testing.assert_array_equal(b, a.transpose(0, 3, 1, 2))


def test_masks_follow_with_nearest_and_their_fill(client):
    """A mask of each pixel's index through resize (nearest), pad and center crop equals the
    image of the same indices through the same ops: one map for both, the mask's own fill."""
    n, h, w = 2, 30, 40
    index = np.arange(n * h * w, dtype=np.int32).reshape(n, h, w) % (h * w)
    img = index.astype(np.float32)[..., None]
    pipeline = [ops.resize(15, 20, interpolation="nearest"),
                ops.pad((3, 2), fill=-1), ops.center_crop(19, 22, fill=-1)]
    out, aux = client.process(img, pipeline, aux={"mask": tp.AuxInput(index, fill=-1)})
    assert out.shape == (2, 19, 22, 1) and aux["mask"].shape == (2, 19, 22)
    np.testing.assert_array_equal(aux["mask"], out[..., 0].astype(np.int32))
    want = TF.center_crop(TF.pad(TF.resize(torch.from_numpy(index[:, None]), [15, 20],
                                           interpolation=IM.NEAREST), [3, 2], fill=-1), [19, 22])
    np.testing.assert_array_equal(aux["mask"], want[:, 0].numpy())


# ---- bad input reaches the client as the server's INVALID_ARGUMENT naming the field.

@pytest.mark.parametrize("op,field", [
    (ops.crop(30, 0, 10, 10), "crop.top"),
    (ops.resize(0, 5), "resize.height"),
    (ops.random_resized_crop(8, scale=(0.9, 0.5)), "random_resized_crop.scale_max"),
    (ops.build("hue", factor=0.7), "hue.factor"),
    (ops.color_jitter(hue=(-0.6, 0.1)), "color_jitter.hue_min"),
])
def test_bad_arguments_name_the_field(client, op, field):
    with pytest.raises(tp.InvalidArgumentError, match=field.replace(".", r"\.")):
        client.process(images(np.uint8), [op])
