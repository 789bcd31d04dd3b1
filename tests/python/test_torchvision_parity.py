"""The service's geometry against torchvision's, so that a PyTorch user can swap
``torchvision.transforms.functional`` calls for a tensorprep pipeline and get the same images.

torchvision works on NCHW tensors and the service on NHWC arrays; both rotate counter-clockwise
about ((w-1)/2, (h-1)/2). The comparisons run with Debian's torchvision 0.14 on the CPU.

Where the two may differ, and why the tests allow it:
- bilinear: torchvision computes its sampling grid in float32, the service in double, so values
  differ by float32 rounding (a few 1e-6 for inputs in [0, 1)).
- nearest: a source position that falls on a pixel boundary (x.5) in exact arithmetic can round
  either way in float32, so only output pixels whose exact source coordinate lies within 1e-4 of
  a tie may differ; every other pixel must be equal.
- torchvision blends a non-zero ``fill`` into bilinear borders as img*mask + (1-mask)*fill, with
  img already weighted by mask, which is not bilinear sampling of a constant border; the bilinear
  cases therefore use fill 0 (grid_sample's zero padding), where both are exact.
"""

import math

import numpy as np
import pytest

import refs
import tensorprep as tp

torch = pytest.importorskip("torch")
TF = pytest.importorskip("torchvision.transforms.functional")
IM = pytest.importorskip("torchvision.transforms").InterpolationMode

RNG = np.random.default_rng(20261125)
SHAPES = [(2, 32, 32, 3), (2, 31, 45, 3), (1, 64, 48, 1)]
ANGLES = [30, -17.5, 45, 90, 180, 333.3]


@pytest.fixture(scope="module")
def client(server):
    with tp.Client(server.address, timeout=60) as c:
        yield c


def to_torch(x):
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def from_torch(t):
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def tie_pixels(angle, h, w, tol=1e-4):
    """(h, w) mask of output pixels whose exact source x or y is within `tol` of a x.5 tie."""
    m = refs.rotation_inverse(angle, h, w)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]

    def near_tie(s):
        return np.abs((s - np.floor(s)) - 0.5) < tol

    return near_tie(sx) | near_tie(sy)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("angle", ANGLES)
def test_rotate_bilinear_matches_torchvision(client, shape, angle):
    x = RNG.random(shape, dtype=np.float32)
    ours = client.process(x, [tp.rotate(angle, interpolation="bilinear", border="constant")])
    theirs = from_torch(TF.rotate(to_torch(x), angle, interpolation=IM.BILINEAR))
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("angle", ANGLES)
@pytest.mark.parametrize("fill", [0.0, 0.25])
def test_rotate_nearest_matches_torchvision_off_ties(client, shape, angle, fill):
    x = RNG.random(shape, dtype=np.float32)
    ours = client.process(x, [tp.rotate(angle, interpolation="nearest", border="constant",
                                        fill=fill)])
    theirs = from_torch(TF.rotate(to_torch(x), angle, interpolation=IM.NEAREST, fill=fill))
    differ = np.any(ours != theirs, axis=(0, 3))
    allowed = tie_pixels(angle, shape[1], shape[2])
    assert not np.any(differ & ~allowed), (
        f"{int(np.sum(differ & ~allowed))} pixels differ away from rounding ties")
    # A right angle has no ties at all: the two must then be identical.
    if math.fmod(angle, 90) == 0:
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("angle", [30, -62])
def test_rotate_uint8_bilinear_within_one_of_torchvision(client, angle):
    x = RNG.integers(0, 256, size=(2, 40, 36, 3), dtype=np.uint8)
    ours = client.process(x, [tp.rotate(angle, interpolation="bilinear")])
    theirs = from_torch(TF.rotate(to_torch(x), angle, interpolation=IM.BILINEAR))
    assert ours.dtype == np.uint8
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    # torchvision rounds its float result back to uint8; both round to nearest, so only values
    # on a rounding boundary after float32 error may differ, and by one at most.
    assert diff.max() <= 1
    assert np.mean(diff > 0) < 0.01


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float16, np.int32])
def test_flips_equal_torchvision(client, dtype):
    x = (RNG.random((3, 19, 27, 3)) * 200).astype(dtype)
    t = to_torch(x)
    np.testing.assert_array_equal(client.process(x, [tp.flip("horizontal")]),
                                  from_torch(TF.hflip(t)))
    np.testing.assert_array_equal(client.process(x, [tp.flip("vertical")]),
                                  from_torch(TF.vflip(t)))


def test_torchvision_style_pipeline_matches(client):
    """hflip -> rotate(20) -> normalize, the way a torchvision user writes it, in one request."""
    x = RNG.random((4, 48, 40, 3), dtype=np.float32)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    ours = client.process(x, [tp.flip("horizontal"), tp.rotate(20), tp.normalize(mean, std)])
    t = TF.rotate(TF.hflip(to_torch(x)), 20, interpolation=IM.BILINEAR)
    theirs = from_torch(TF.normalize(t, mean, std))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
