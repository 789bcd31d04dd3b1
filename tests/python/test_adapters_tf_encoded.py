"""The tf.data adapter with batches of encoded images, as a TFRecord input pipeline reads them,
against a real server: the output signature is learnt without the caller giving it, and the
values equal the source arrays cropped and flipped (PNG decodes exactly; the files and the
TFRecord are made here from synthetic arrays with Pillow and TensorFlow)."""

import io

import numpy as np
import pytest

import tensorprep as tp

tf = pytest.importorskip("tensorflow", reason="tensorflow-cpu is not installed in this "
                         "environment (scripts/python-env.sh installs it)")
tp_tf = pytest.importorskip("tensorprep.adapters.tensorflow")
Image = pytest.importorskip("PIL.Image", reason="Pillow is not installed (scripts/python-env.sh "
                            "installs it)")

RNG = np.random.default_rng(23)
N = 10
SIZES = [(int(RNG.integers(20, 60)), int(RNG.integers(20, 60))) for _ in range(N)]


def encode(arr, mode=None, palette=False):
    im = Image.fromarray(arr, "P" if palette else mode)
    if palette:
        im.putpalette(list(RNG.integers(0, 256, 768, dtype=np.uint8)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def data():
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]
    masks = [RNG.integers(0, 21, (h, w), dtype=np.uint8) for h, w in SIZES]
    return images, masks


@pytest.fixture(scope="module")
def records(data, tmp_path_factory):
    """A TFRecord file of tf.train.Examples with "image" and "mask" PNG bytes features."""
    path = tmp_path_factory.mktemp("tfrecord") / "train.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for img, mask in zip(*data):
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(img)])),
                "mask": tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[encode(mask, palette=True)])),
            }
            w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())
    return str(path)


FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
            "mask": tf.io.FixedLenFeature([], tf.string)}


def parse_pair(record):
    f = tf.io.parse_single_example(record, FEATURES)
    return f["image"], f["mask"]


def parse_image(record):
    return tf.io.parse_single_example(record, FEATURES)["image"]


def test_tfrecord_images_and_masks_to_dense_batches(server, records, data):
    source = tf.data.TFRecordDataset(records).map(parse_pair).batch(4)
    ds = tp_tf.dataset(server.address, source,
                       [tp.center_crop(12, 14), tp.flip("horizontal"), tp.cast("float32")],
                       inflight=2)
    assert ds.element_spec[0].shape.as_list() == [None, 12, 14, 3]
    assert ds.element_spec[0].dtype == tf.float32
    assert ds.element_spec[1].shape.as_list() == [None, 12, 14]
    assert ds.element_spec[1].dtype == tf.uint8
    got = list(ds.as_numpy_iterator())
    assert [g[0].shape[0] for g in got] == [4, 4, 2]
    images, masks = data
    want_i, want_m = [], []
    for img, mask in zip(images, masks):
        h, w = mask.shape
        top, left = int(round((h - 12) / 2.0)), int(round((w - 14) / 2.0))
        want_i.append(img[top:top + 12, left:left + 14][:, ::-1].astype(np.float32))
        want_m.append(mask[top:top + 12, left:left + 14][:, ::-1])
    np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), np.stack(want_i))
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), np.stack(want_m))


def test_images_only_random_ops_vary_per_epoch_and_repeat_with_a_seed(server, records):
    source = tf.data.TFRecordDataset(records).map(parse_image).batch(5)
    pipeline = [tp.random_resized_crop(8, 8, interpolation="nearest")]
    with tp.Client(server.address) as client:
        fixed = tp_tf.dataset(client, source, pipeline, seed=9, prefetch=0)
        assert fixed.element_spec.shape.as_list() == [None, 8, 8, 3]
        first = np.concatenate(list(fixed.as_numpy_iterator()))
        again = np.concatenate(list(fixed.as_numpy_iterator()))
        np.testing.assert_array_equal(first, again)
        # The same as one call on the whole list with that seed.
        files = [b for b in tf.data.TFRecordDataset(records).map(parse_image).as_numpy_iterator()]
        np.testing.assert_array_equal(first, client.process(files, pipeline, seed=9))
        fresh = tp_tf.dataset(client, source, pipeline)
        a = np.concatenate(list(fresh.as_numpy_iterator()))
        b = np.concatenate(list(fresh.as_numpy_iterator()))
        assert a.shape == b.shape == (N, 8, 8, 3) and not np.array_equal(a, b)


def test_grey_channels_in_a_training_loop(server, data):
    greys = [img[..., 1] for img in data[0]]
    source = tf.data.Dataset.from_tensor_slices([encode(g, "L") for g in greys]).batch(3)
    ds = tp_tf.dataset(server.address, source, [tp.crop(2, 3, 10, 10)], channels=1)
    assert ds.element_spec.shape.as_list() == [None, 10, 10, 1]

    @tf.function
    def total(dataset):
        s = tf.constant(0, tf.int64)
        for b in dataset:
            s += tf.reduce_sum(tf.cast(b, tf.int64))
        return s

    assert int(total(ds)) == sum(int(g[2:12, 3:13].sum()) for g in greys)


def test_callable_source_of_lists_of_bytes(server, data):
    files = [encode(img) for img in data[0]]
    batches = lambda: (files[i:i + 3] for i in range(0, N, 3))  # noqa: E731
    ds = tp_tf.dataset(server.address, batches, [tp.crop(0, 0, 6, 7)])
    assert ds.element_spec.shape.as_list() == [None, 6, 7, 3]
    for _ in range(2):  # the first pass reuses the batch peeked at; the second calls again
        got = np.concatenate(list(ds.as_numpy_iterator()))
        np.testing.assert_array_equal(got, np.stack([img[:6, :7] for img in data[0]]))


def test_unbatched_strings_and_bad_files_are_refused_when_made(server, records):
    with pytest.raises(ValueError, match=r"add \.batch\(n\)"):
        tp_tf.dataset(server.address, tf.data.TFRecordDataset(records).map(parse_image),
                      [tp.center_crop(8, 8)])
    bad = tf.data.Dataset.from_tensor_slices([b"not an image"] * 4).batch(2)
    with pytest.raises(tp.InvalidArgumentError, match=r"image_list\.samples\[0\]"):
        tp_tf.dataset(server.address, bad, [tp.center_crop(8, 8)])
    source = tf.data.TFRecordDataset(records).map(parse_image).batch(4)
    with pytest.raises(tp.InvalidArgumentError, match="fixed size"):
        tp_tf.dataset(server.address, source, [tp.flip("horizontal")])
