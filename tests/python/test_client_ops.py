"""Every op through a real server, checked against NumPy and scikit-image."""

import numpy as np
import pytest

import refs
import tensorprep as tp

RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def client(server):
    with tp.Client(server.address, timeout=60) as c:
        yield c


def images(shape=(3, 17, 23, 3), dtype=np.float32, scale=1.0):
    return (RNG.random(shape) * scale).astype(dtype)


# --- rotate -------------------------------------------------------------------------------------
@pytest.mark.parametrize("border", ["constant", "edge", "reflect", "reflect_101", "wrap"])
@pytest.mark.parametrize("angle", [30, -47.5, 90, 180])
def test_rotate_bilinear_float32_matches_skimage(client, border, angle):
    x = images()
    out = client.process(x, [tp.rotate(angle, border=border, fill=0.75)])
    assert out.shape == x.shape and out.dtype == np.float32
    ref = np.stack([refs.skimage_rotate(img, angle, border, 0.75) for img in x])
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_rotate_256_edge_matches_skimage_interior_and_edges(client):
    # The W2 workload: 256x256x3 float32 by 30 degrees, bilinear, edge border.
    x = images((2, 256, 256, 3))
    out = client.process(x, [tp.rotate(30, border="edge")])
    ref = np.stack([refs.skimage_rotate(img, 30, "edge") for img in x])
    np.testing.assert_allclose(out[:, 64:192, 64:192], ref[:, 64:192, 64:192], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("border", ["constant", "edge", "reflect", "reflect_101", "wrap"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_rotate_nearest_matches_reference(client, border, dtype):
    x = images((2, 15, 20, 3), dtype, 200)
    out = client.process(x, [tp.rotate(33, interpolation="nearest", border=border, fill=7)])
    inv = refs.rotation_inverse(33, 15, 20)
    ref = np.stack([refs.warp_nearest(img, inv, border, 7) for img in x])
    np.testing.assert_array_equal(out, ref)


def test_rotate_uint8_bilinear_rounds(client):
    x = images((2, 16, 16, 3), np.uint8, 255)
    out = client.process(x, [tp.rotate(20, border="edge")])
    ref = np.stack([refs.skimage_rotate(img, 20, "edge") for img in x])
    # Exact bilinear then round-to-nearest: within one step of skimage's float result.
    assert out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - ref).max() <= 0.5 + 1e-6


def test_rotate_90_is_rot90_on_square_images(client):
    x = images((2, 8, 8, 3))
    out = client.process(x, [tp.rotate(90, interpolation="nearest")])
    np.testing.assert_array_equal(out, np.rot90(x, k=1, axes=(1, 2)))
    out = client.process(x, [tp.rotate(90)])  # bilinear at exact positions
    np.testing.assert_allclose(out, np.rot90(x, k=1, axes=(1, 2)), atol=1e-6)


def test_rotate_nhw_batch(client):
    x = images((2, 11, 13))
    out = client.process(x, [tp.rotate(15, border="edge")])
    ref = np.stack([refs.skimage_rotate(img, 15, "edge") for img in x])
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


# --- flips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("axis", ["horizontal", "vertical"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 7, 3), (3, 4, 9), (1, 6, 5, 4)])
def test_flip_matches_numpy(client, axis, dtype, shape):
    x = images(shape, dtype, 100)
    np.testing.assert_array_equal(client.process(x, [tp.flip(axis)]), refs.flip_nhwc(x, axis))


def test_two_flips_compose(client):
    x = images((2, 5, 6, 3))
    out = client.process(x, [tp.flip("horizontal"), tp.flip("vertical"), tp.flip("horizontal")])
    np.testing.assert_array_equal(out, x[:, ::-1])


# --- arithmetic ---------------------------------------------------------------------------------
def test_float32_arithmetic_scalar_and_per_channel(client):
    x = images((2, 4, 5, 3), scale=10)
    f = np.float32
    cases = [
        ([tp.add(1.5)], x + f(1.5)),
        ([tp.add([1, 2, 3])], x + np.array([1, 2, 3], f)),
        ([tp.subtract(0.25)], x - f(0.25)),
        ([tp.multiply([2, -1, 0.5])], x * np.array([2, -1, 0.5], f)),
    ]
    for pipeline, ref in cases:
        np.testing.assert_array_equal(client.process(x, pipeline), ref.astype(f))
    np.testing.assert_allclose(client.process(x, [tp.divide([4, 2, 8])]),
                               x / np.array([4, 2, 8], f), rtol=1e-6)
    np.testing.assert_allclose(client.process(x, [tp.divide(3)]), x / f(3), rtol=1e-6)


def test_normalize(client):
    x = images((2, 6, 6, 3))
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    out = client.process(x, [tp.normalize(mean, std)])
    ref = (x.astype(np.float64) - mean) / std
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    out = client.process(x, [tp.normalize(0.5, 0.25)])
    np.testing.assert_allclose(out, (x.astype(np.float64) - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_integer_arithmetic_rounds_half_even_and_saturates(client):
    x = np.array([0, 1, 2, 3, 100, 250, 255], np.uint8).reshape(1, 1, 7)
    out = client.process(x, [tp.add(1.5)])
    np.testing.assert_array_equal(out, refs.saturate_cast(x.astype(np.float64) + 1.5, np.uint8))
    out = client.process(x, [tp.multiply(0.5)])
    np.testing.assert_array_equal(out, refs.saturate_cast(x * 0.5, np.uint8))  # 0.5 -> 0, 1.5 -> 2
    out = client.process(x, [tp.subtract(3)])
    np.testing.assert_array_equal(out, refs.saturate_cast(x.astype(np.float64) - 3, np.uint8))
    y = np.array([-2**31, -7, 7, 2**31 - 1], np.int32).reshape(1, 1, 4)
    out = client.process(y, [tp.multiply(3)])
    np.testing.assert_array_equal(out, refs.saturate_cast(y.astype(np.float64) * 3, np.int32))
    out = client.process(y, [tp.divide(2)])
    np.testing.assert_array_equal(out, refs.saturate_cast(y / 2.0, np.int32))


def test_clamp(client):
    x = np.array([-5, 0.5, np.nan, 3, 10], np.float32).reshape(1, 1, 5)
    np.testing.assert_array_equal(client.process(x, [tp.clamp(0, 4)]),
                                  np.array([0, 0.5, np.nan, 3, 4], np.float32).reshape(1, 1, 5))
    np.testing.assert_array_equal(client.process(x, [tp.clamp(min=1)]),
                                  np.array([1, 1, np.nan, 3, 10], np.float32).reshape(1, 1, 5))
    np.testing.assert_array_equal(client.process(x, [tp.clamp(max=1)]),
                                  np.array([-5, 0.5, np.nan, 1, 1], np.float32).reshape(1, 1, 5))


@pytest.mark.parametrize("target", ["uint8", "int32", "float16", "float32"])
def test_cast_from_float32_rounds_and_saturates(client, target):
    vals = np.array([-1e10, -300, -5, -0.5, 0.5, 1.5, 2.5, 254.5, 255.5, 300, 7e4, 3e9, np.nan],
                    np.float32).reshape(1, 1, 13)
    out = client.process(vals, [tp.cast(target)])
    assert out.dtype == np.dtype(target)
    np.testing.assert_array_equal(out, refs.saturate_cast(vals, target))


def test_cast_from_integers(client):
    x = np.array([-2**31, -1, 0, 255, 256, 2**31 - 1], np.int32).reshape(1, 1, 6)
    np.testing.assert_array_equal(client.process(x, [tp.cast("uint8")]),
                                  refs.saturate_cast(x, np.uint8))
    np.testing.assert_array_equal(client.process(x, [tp.cast("float32")]), x.astype(np.float32))
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    np.testing.assert_array_equal(client.process(u, [tp.cast("float16")]), u.astype(np.float16))


def test_float16_arithmetic(client):
    x = images((2, 4, 4, 3), np.float16, 4)
    out = client.process(x, [tp.multiply(1.5), tp.add(0.25)])
    ref = (x.astype(np.float32) * np.float32(1.5) + np.float32(0.25)).astype(np.float16)
    assert out.dtype == np.float16
    np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), rtol=1e-3)


def test_typical_augmentation_pipeline(client):
    x = images((4, 32, 32, 3), np.uint8, 255)
    pipeline = [tp.cast("float32"), tp.divide(255), tp.rotate(30, border="edge"),
                tp.flip("horizontal"), tp.normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])]
    out = client.process(x, pipeline)
    rot = np.stack([refs.skimage_rotate(img.astype(np.float32) / np.float32(255), 30, "edge")
                    for img in x])
    ref = (refs.flip_nhwc(rot, "horizontal") - 0.5) / 0.25
    np.testing.assert_allclose(out, ref, atol=1e-4 / 0.25, rtol=0)
