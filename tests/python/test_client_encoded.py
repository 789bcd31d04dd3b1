"""Lists of samples through the Python client against a real server: encoded PNG and JPEG files
(as bytes, bytearray, memoryview, str and pathlib paths) and raw arrays of their own sizes in,
one dense batch out; masks as palette PNGs following the geometry; the errors, client-side ones
included; streams that split lists; and the image_decode timing.

The files are made here with Pillow from synthetic arrays. References are independent of the
service: the source array (which is what a PNG decodes to, exactly) or Pillow's decode of the same
JPEG bytes, then NumPy slicing and flipping, or torchvision's resize. PNG results are compared
exactly. JPEG results are compared with Pillow's decode within a small tolerance: the JPEG
standard does not fix decoding to the bit (the inverse DCT's precision and the chroma upsampling
are the decoder's choice), so two libjpeg builds or settings may differ by a level or two.
"""

import io
import pathlib

import numpy as np
import pytest

import tensorprep as tp

Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (scripts/python-env.sh "
                            "installs it)")

RNG = np.random.default_rng(17)
SIZES = [(37, 53), (64, 48), (20, 90), (33, 33)]  # (H, W), every one its own


def smooth_rgb(h, w, seed):
    """A smooth colour image: JPEG keeps it close to its source, unlike noise."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = np.random.default_rng(seed)
    fx, fy, ph = r.uniform(0.05, 0.2, 3), r.uniform(0.05, 0.2, 3), r.uniform(0, 6, 3)
    img = np.stack([127.5 + 100 * np.sin(fx[c] * x + fy[c] * y + ph[c]) for c in range(3)], -1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png(arr, mode=None):
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr, quality=92):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def palette_png(indices):
    """A mask stored as a palette ("P" mode) PNG: the file holds the class indices, the palette
    only colours them for a viewer."""
    im = Image.fromarray(indices.astype(np.uint8), "P")
    im.putpalette(list(RNG.integers(0, 256, 256 * 3, dtype=np.uint8)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def pil_decode(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def center_box(h, w, ch, cw):
    """torchvision's center_crop offsets (Python's round, ties to even)."""
    return int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))


@pytest.fixture(scope="module")
def client(server):
    with tp.Client(server.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def sources():
    return [smooth_rgb(h, w, i) for i, (h, w) in enumerate(SIZES)]


def test_png_bytes_center_crop_exact(client, sources):
    files = [png(a) for a in sources]
    res = client.call(files, [tp.center_crop(16, 24)])
    assert res.images.shape == (len(files), 16, 24, 3)
    assert res.images.dtype == np.uint8
    for got, src in zip(res.images, sources):
        top, left = center_box(*src.shape[:2], 16, 24)
        np.testing.assert_array_equal(got, src[top:top + 16, left:left + 24])
    assert res.transport == "inline"
    assert res.timings["image_decode"] > 0
    assert res.transfer["inline_bytes_in"] == sum(len(f) for f in files)


def test_every_kind_of_encoded_item_in_one_list(client, sources, tmp_path):
    files = [png(a) for a in sources]
    (tmp_path / "c.png").write_bytes(files[2])
    (tmp_path / "d.png").write_bytes(files[3])
    items = [bytearray(files[0]), memoryview(files[1]), str(tmp_path / "c.png"),
             pathlib.Path(tmp_path / "d.png")]
    out = client.process(tuple(items), [tp.crop(2, 3, 12, 15), tp.flip("horizontal")])
    for got, src in zip(out, sources):
        np.testing.assert_array_equal(got, src[2:14, 3:18][:, ::-1])


def test_raw_ragged_arrays_resize_float32_against_torchvision(client):
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    samples = [RNG.random((h, w, 3), dtype=np.float32) for h, w in SIZES]
    out = client.process(samples, [tp.resize(24, 20)])
    assert out.shape == (len(samples), 24, 20, 3) and out.dtype == np.float32
    for got, src in zip(out, samples):
        want = tvf.resize(torch.from_numpy(src).permute(2, 0, 1), [24, 20], antialias=True)
        np.testing.assert_allclose(got, want.permute(1, 2, 0).numpy(), atol=2e-5, rtol=0)


def test_raw_two_dimensional_samples_nearest_resize_exact(client):
    samples = [RNG.integers(0, 1000, (h, w), dtype=np.int32) for h, w in SIZES]
    out = client.process(samples, [tp.resize(10, 14, interpolation="nearest")])
    assert out.shape == (len(samples), 10, 14)  # (H, W) samples make an (N, H, W) batch
    for got, src in zip(out, samples):
        h, w = src.shape
        rows = np.floor(np.arange(10) * h / 10).astype(int)  # PyTorch's nearest
        cols = np.floor(np.arange(14) * w / 14).astype(int)
        np.testing.assert_array_equal(got, src[rows][:, cols])


# A crop as the first op lets the server decode only its box; a flip first needs the whole image.
@pytest.mark.parametrize("pipeline, view", [
    ([tp.crop(4, 5, 16, 16)], lambda a: a[4:20, 5:21]),
    ([tp.flip("horizontal"), tp.crop(4, 5, 16, 16)], lambda a: a[:, ::-1][4:20, 5:21]),
], ids=["crop-first", "flip-first"])
@pytest.mark.parametrize("quality", [75, 95])
def test_jpeg_matches_pillows_decode_within_tolerance(client, sources, pipeline, view, quality):
    files = [jpeg(a, quality) for a in sources]
    out = client.process(files, pipeline)
    assert out.shape == (len(files), 16, 16, 3)
    for got, data, src in zip(out, files, sources):
        diff = np.abs(got.astype(np.int16) - view(pil_decode(data)))
        # Decoders may differ by a level or two (see the module doc); with the same libjpeg-turbo
        # on both sides they agree exactly.
        assert diff.max() <= 2, f"max difference {diff.max()} from Pillow's decode"
        assert diff.mean() < 0.5
        # The bytes were decoded, not the source sent some other way: the coding loss shows.
        assert np.abs(got.astype(np.int16) - view(src)).max() > 0


def test_grey_png_with_one_channel(client):
    greys = [RNG.integers(0, 256, (h, w), dtype=np.uint8) for h, w in SIZES]
    out = client.process([png(g, "L") for g in greys], [tp.crop(0, 0, 8, 9)], channels=1)
    assert out.shape == (len(greys), 8, 9, 1)
    np.testing.assert_array_equal(out[..., 0], np.stack([g[:8, :9] for g in greys]))


def test_palette_png_masks_follow_a_crop_and_flip_exactly(client, sources):
    masks = [RNG.integers(0, 21, a.shape[:2], dtype=np.uint8) for a in sources]
    pipeline = [tp.crop(3, 1, 14, 17), tp.flip("vertical"), tp.cast("float32")]
    images, got_masks = client.process([png(a) for a in sources], pipeline,
                                       labels=[palette_png(m) for m in masks])
    assert images.dtype == np.float32 and got_masks.dtype == np.uint8
    assert got_masks.shape == (len(masks), 14, 17)  # one channel: (N, H, W)
    for img, m, src, msrc in zip(images, got_masks, sources, masks):
        np.testing.assert_array_equal(img, src[3:17, 1:18][::-1].astype(np.float32))
        np.testing.assert_array_equal(m, msrc[3:17, 1:18][::-1])


def test_random_geometry_moves_image_and_mask_together(client):
    # An image whose pixels name their own position and a mask of the same code: after a random
    # flip (nearest, whole pixels) each output pixel's image code equals its mask code.
    samples, masks = [], []
    for h, w in SIZES:
        code = (np.arange(h)[:, None] * 7 + np.arange(w)[None, :] * 3) % 251
        samples.append(np.repeat(code[:, :, None], 3, axis=2).astype(np.uint8))
        masks.append(code.astype(np.uint8))
    pipeline = [tp.center_crop(16, 16), tp.random_flip(0.5), tp.random_flip(0.5, "vertical")]
    images, got = client.process([png(s) for s in samples], pipeline,
                                 labels=[palette_png(m) for m in masks], seed=11)
    np.testing.assert_array_equal(images[..., 0], got)
    # The draws are per sample: the same list split with its sample offsets gives the same.
    tail = client.process([png(s) for s in samples[2:]], pipeline,
                          labels=[palette_png(m) for m in masks[2:]], seed=11, sample_offset=2)
    np.testing.assert_array_equal(tail[0], images[2:])
    np.testing.assert_array_equal(tail[1], got[2:])


def test_dense_mask_batch_goes_with_a_list_of_files(client):
    src = [smooth_rgb(24, 30, 40 + i) for i in range(3)]
    labels = RNG.integers(0, 5, (3, 24, 30), dtype=np.int32)
    images, got = client.process([png(a) for a in src], [tp.crop(1, 2, 10, 11)], labels=labels)
    np.testing.assert_array_equal(images, np.stack(src)[:, 1:11, 2:13])
    np.testing.assert_array_equal(got, labels[:, 1:11, 2:13])


def test_stream_splits_lists_and_keeps_the_draws(client, sources):
    files = [png(a) for a in sources] * 2
    pipeline = [tp.random_resized_crop(12, 12, interpolation="nearest"), tp.random_flip(0.5)]
    whole = client.process(files, pipeline, seed=5)
    batches = [files[:3], files[3:]]
    # chunk_mb below one file's size: every sample becomes its own request.
    got = list(client.stream(iter(batches), pipeline, seed=5, chunk_mb=1e-4, inflight=3))
    np.testing.assert_array_equal(np.concatenate(got), whole)
    full = list(client.stream(iter(batches), pipeline, seed=5, full=True))
    assert all(r.timings["image_decode"] > 0 for r in full)
    np.testing.assert_array_equal(np.concatenate([r.images for r in full]), whole)


def test_stream_pairs_of_file_lists(client, sources):
    masks = [RNG.integers(0, 9, a.shape[:2], dtype=np.uint8) for a in sources]
    items = [([png(a) for a in sources[:2]], [palette_png(m) for m in masks[:2]]),
             ([png(a) for a in sources[2:]], [palette_png(m) for m in masks[2:]])]
    out = list(client.stream(iter(items), [tp.crop(0, 0, 9, 9)]))
    assert [o[0].shape for o in out] == [(2, 9, 9, 3), (2, 9, 9, 3)]
    np.testing.assert_array_equal(np.concatenate([o[1] for o in out]),
                                  np.stack([m[:9, :9] for m in masks]))


def test_a_dense_array_keeps_todays_path(client):
    x = RNG.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    res = client.call(x, [tp.flip("horizontal")])
    np.testing.assert_array_equal(res.images, x[:, :, ::-1])
    assert res.timings["image_decode"] == 0


def test_lists_go_inline_on_a_shared_memory_server(shm_server, sources):
    with tp.Client(shm_server.uds_address, shm=True) as c:
        assert c.connect().transport == "shm"
        res = c.call([png(a) for a in sources], [tp.center_crop(8, 8)])
        assert res.transport == "inline" and "list of samples" in res.transport_reason
        dense = c.call(res.images.copy(), [tp.flip("horizontal")])
        assert dense.transport == "shm"
        np.testing.assert_array_equal(dense.images, res.images[:, :, ::-1])


# --- errors -------------------------------------------------------------------------------------
def test_corrupt_and_truncated_files_name_the_sample(client, sources):
    good = png(sources[0])
    with pytest.raises(tp.InvalidArgumentError, match=r"image_list\.samples\[2\]"):
        client.call([good, good, b"this is no image at all" * 4, good], [tp.center_crop(8, 8)])
    with pytest.raises(tp.InvalidArgumentError, match=r"image_list\.samples\[1\]"):
        client.call([good, good[:len(good) // 2]], [tp.center_crop(8, 8)])
    with pytest.raises(tp.InvalidArgumentError, match=r"image_list\.samples\[0\]"):
        client.call([jpeg(sources[0])[:200]], [tp.center_crop(8, 8)])


def test_a_pipeline_without_a_fixed_size_is_refused(client, sources):
    with pytest.raises(tp.InvalidArgumentError) as e:
        client.call([png(a) for a in sources], [tp.flip("horizontal")])
    assert "add an op that gives a fixed size" in str(e.value)
    assert "resize with both height and width" in str(e.value)


def test_cuda_is_refused_for_lists(client, sources):
    with pytest.raises(tp.FailedPreconditionError, match="image_list is decoded and run on the "
                       "CPU"):
        client.call([png(a) for a in sources], [tp.center_crop(4, 4)], device="cuda")


def test_a_mask_of_another_size_is_refused_naming_it(client, sources):
    masks = [palette_png(np.zeros(a.shape[:2], np.uint8)) for a in sources]
    masks[1] = palette_png(np.zeros((5, 5), np.uint8))
    with pytest.raises(tp.InvalidArgumentError,
                       match=r"aux\[0\]\.list\.samples\[1\]: expected 64x48 .* got 5x5"):
        client.call([png(a) for a in sources], [tp.center_crop(4, 4)], labels=masks)


@pytest.fixture(scope="module")
def offline():
    """A client whose address has nobody listening: whatever it raises was raised before
    sending."""
    with tp.Client("127.0.0.1:1", timeout=2) as c:
        yield c


@pytest.mark.parametrize("items, error, text", [
    ([b"\x89PNG...", np.zeros((4, 4, 3), np.uint8)], ValueError, r"images\[1\]: .*not both"),
    ([np.zeros((4, 4, 3), np.uint8), "x.png"], ValueError, r"images\[1\]: .*not both"),
    ([b"\x89PNG...", 7], TypeError, r"images\[1\]: expected bytes"),
    ([b"\x89PNG...", None], TypeError, r"images\[1\]"),
    ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 1), np.uint8)], ValueError,
     r"images\[1\]: raw samples .* share dtype and channels"),
    ([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)], ValueError,
     r"images\[1\]"),
    ([np.zeros((2, 4, 4, 3), np.uint8)], ValueError, r"images\[0\]: a raw sample is"),
    ([np.zeros((4, 4), np.float64)], ValueError, r"images\[0\]: dtype float64"),
    ([b"\x89PNG...", b""], ValueError, r"images\[1\]: the encoded file is empty"),
    ([], ValueError, "empty"),
])
def test_invalid_lists_raise_before_sending(offline, items, error, text):
    with pytest.raises(error, match=text):
        offline.call(items, [tp.center_crop(2, 2)])


def test_other_client_side_refusals(offline, tmp_path):
    one = [b"\x89PNG..."]
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: cannot read .*missing\.png"):
        offline.call([b"\x89PNG...", str(tmp_path / "missing.png")], [tp.center_crop(2, 2)])
    with pytest.raises(ValueError, match="labels has 2 samples, images have 1"):
        offline.call(one, [tp.center_crop(2, 2)], labels=[b"a", b"b"])
    with pytest.raises(ValueError, match="images must be one too"):
        offline.call(np.zeros((1, 4, 4, 3), np.uint8), [tp.flip()], labels=[b"a"])
    with pytest.raises(ValueError, match="channels= applies to a list"):
        offline.call(np.zeros((1, 4, 4, 3), np.uint8), [tp.flip()], channels=1)
    with pytest.raises(ValueError, match="channels must be"):
        offline.call(one, [tp.center_crop(2, 2)], channels=0)
    with pytest.raises(TypeError, match=r"aux\['mask'\]\[1\]"):
        offline.call(one * 2, [tp.center_crop(2, 2)], aux={"mask": [b"a", 1.5]})
