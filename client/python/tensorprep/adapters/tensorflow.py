"""A tf.data source that streams batches through the service.

    ds = tensorprep.adapters.tensorflow.dataset(
        "127.0.0.1:50051", batches, [tp.rotate(30, border="edge")], inflight=4, prefetch=2)
    for images in ds: ...          # or (images, labels) when the source yields pairs

``batches`` is a tf.data.Dataset of batches (images, or (images, labels)), a callable returning an
iterable of NumPy batches (called once per epoch), or a one-shot iterable. Each batch is one
request on one bidirectional stream with ``inflight`` requests outstanding; the dataset then
prefetches ``prefetch`` processed batches. Python runs once per batch (tf.data's generator
bridge), never per sample.

Encoded images: ``batches`` may instead yield lists of encoded JPEG/PNG files, as a
tf.data pipeline that reads TFRecords has them:

    def parse(record):
        f = tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string),
                                                "mask": tf.io.FixedLenFeature([], tf.string)})
        return f["image"], f["mask"]
    source = tf.data.TFRecordDataset(files).map(parse).batch(64)   # (images, masks) strings
    ds = tensorprep.adapters.tensorflow.dataset(
        address, source, [tp.random_resized_crop(224), tp.random_flip(0.5)])
    for images, masks in ds: ...   # (64, 224, 224, 3) uint8 and (64, 224, 224) uint8

A batch is a 1-D tf.string tensor (images), or a pair of them (images, masks; a mask stored as
a palette PNG gives its indices); a callable or iterable source yields Python lists of bytes or
paths instead. The server decodes the files, and the pipeline must bring them to one size
(resize to both sides, crop, center_crop, random_resized_crop). ``channels`` sets the images'
decoded channels (None: 3, RGB; 1: grey). The output's shapes and dtypes are learnt by running
the first batch once when the dataset is made (one extra request, with the dataset's seed or 0).

Random ops: with ``seed=None`` every pass (epoch) draws a fresh seed; a fixed seed repeats the same
draws on every pass.

Transport: a Client made from an address uses shared memory when the server is on the same host
and allows it (``shm="auto"``; pass ``client_options={"shm": False}`` to turn it off), else
inline bytes. Each batch is copied once into shared memory; the results are not copied at all:
tf.data's generator bridge wraps the yielded NumPy array as the tensor's buffer and holds a
reference to it, so the array's shared-memory slot stays reserved for as long as TensorFlow uses
the tensor (prefetch buffers included) and returns to the pool when TensorFlow lets go.
"""

import itertools

import numpy as np
import tensorflow as tf

from ..client import LABELS, Client, _split_item
from ..ops import as_pipeline
from ..shm import result_dtype
from ..wire import is_sample_list


def _spec(shape, dtype):
    return tf.TensorSpec(shape=(None,) + tuple(shape[1:]), dtype=tf.as_dtype(np.dtype(dtype)))


def _string_batches(spec):
    """Whether a tf.data element spec is a batch of encoded files (1-D tf.string images)."""
    first = spec[0] if isinstance(spec, (tuple, list)) else spec
    if not isinstance(first, tf.TensorSpec) or first.dtype != tf.string:
        return False
    if first.shape.rank != 1:
        raise ValueError(f"dataset: encoded images come as batches, 1-D tf.string tensors; got "
                         f"shape {first.shape} (add .batch(n) to the source)")
    return True


def _as_lists(item):
    """A batch read from tf.data with its 1-D string arrays (NumPy object arrays of bytes) as
    Python lists of samples; other parts (a dense mask batch) as they are."""
    def listed(x):
        return list(x) if isinstance(x, np.ndarray) and x.dtype == object else x
    if isinstance(item, tuple):
        return tuple(listed(x) for x in item)
    return listed(item)


# Ops after which a batch keeps its height, width and channels (and its layout): with only these
# the output signature follows from the input's; any other op (resize, crop, pad, grayscale,
# channels_first, ...) has the first batch's result give it.
_SHAPE_KEEPING = frozenset({
    "rotate", "flip", "add", "subtract", "multiply", "divide", "normalize", "clamp", "cast",
    "random_flip", "random_rotate", "affine", "random_affine", "brightness", "contrast",
    "saturation", "hue", "color_jitter"})


def _keeps_shape(pipeline):
    return all(op.WhichOneof("kind") in _SHAPE_KEEPING for op in pipeline.ops)


def _learn_signature(conn, first, pipeline, seed, device, timeout, channels):
    """The output signature of a dataset whose output size the pipeline decides (lists of
    samples, or dense batches through ops that change the size): the first batch is run once and
    its result read."""
    images, labels, aux = _split_item(first)
    if aux is not None:
        raise ValueError("dataset: a batch is images or (images, labels)")
    res = conn.call(images, pipeline, labels=labels, seed=0 if seed is None else seed,
                    device=device, timeout=timeout, channels=channels)
    specs = [_spec(res.images.shape, res.images.dtype)]
    if labels is not None:
        specs.append(_spec(res.aux[LABELS].shape, res.aux[LABELS].dtype))
    return specs[0] if len(specs) == 1 else tuple(specs)


def dataset(client, batches, pipeline, *, inflight=4, prefetch=2, seed=None, device=None,
            timeout=None, workload=None, client_options=None, channels=None):
    """Returns a tf.data.Dataset of processed batches (see the module doc).

    ``client`` is a Client or an address; with an address each pass opens its own Client with
    ``client_options`` (keyword arguments of Client, e.g. {"shm": False}).
    ``channels``: for batches of encoded images, the channels they decode to (None: 3).
    Errors from the service surface as exceptions when the dataset is iterated; for batches of
    encoded images, and for pipelines with an op that changes the size or layout (resize, crop,
    pad, grayscale, channels_first, ...), the first batch is run here to learn the output's shape,
    so an error in it is raised here.
    """
    client_options = dict(client_options or {})
    pipeline = as_pipeline(pipeline)
    is_tf = isinstance(batches, tf.data.Dataset)
    encoded = is_tf and _string_batches(batches.element_spec)

    def source():
        if is_tf:
            it = batches.as_numpy_iterator()
            return map(_as_lists, it) if encoded else it
        return iter(batches()) if callable(batches) else iter(batches)

    def connect():
        own = not isinstance(client, Client)
        return (Client(client, **client_options) if own else client), own

    # Output signature: from the source dataset's spec, else by peeking at the first batch; for
    # lists of samples, from the result of the first batch.
    first = None  # the batch peeked at, for a source that cannot be read twice
    probe = None  # the first batch, run once to learn the output signature
    learn = encoded or not _keeps_shape(pipeline)
    if is_tf and learn:
        try:
            probe = next(batches.take(1).as_numpy_iterator())
        except StopIteration:
            raise ValueError("dataset: the batch source is empty") from None
        probe = _as_lists(probe) if encoded else probe
    elif is_tf:
        spec = batches.element_spec
        if isinstance(spec, (tuple, list)):
            in_shapes = [(s.shape.as_list(), s.dtype.as_numpy_dtype) for s in spec]
        else:
            in_shapes = [(spec.shape.as_list(), spec.dtype.as_numpy_dtype)]
    else:
        first_iter = source()
        try:
            first = next(first_iter)
        except StopIteration:
            raise ValueError("dataset: the batch source is empty") from None
        items = list(first) if isinstance(first, (tuple, list)) else [first]
        encoded = is_sample_list(_split_item(first)[0])
        learn = learn or encoded
        if learn:
            probe = first
        else:
            in_shapes = [(np.shape(x), np.asarray(x).dtype) for x in items]
    if not encoded and channels is not None:
        raise ValueError("dataset: channels applies to batches of encoded images")
    if learn:
        conn, own = connect()
        try:
            signature = _learn_signature(conn, probe, pipeline, seed, device, timeout, channels)
        finally:
            if own:
                conn.close()
    else:
        if len(in_shapes) > 2:
            raise ValueError("dataset: a batch is images or (images, labels)")
        out_specs = [_spec(in_shapes[0][0], result_dtype(pipeline, in_shapes[0][1]))]
        if len(in_shapes) == 2:
            out_specs.append(_spec(*in_shapes[1]))
        signature = out_specs[0] if len(out_specs) == 1 else tuple(out_specs)

    first_pass = [first_iter] if first is not None else []

    def generator():
        if first_pass:
            it = itertools.chain([first], first_pass.pop())
        else:
            it = source()
        conn, own = connect()
        try:
            for out in conn.stream(it, pipeline, inflight=inflight, seed=seed, device=device,
                                   timeout=timeout, workload=workload, channels=channels):
                yield tuple(out) if isinstance(out, tuple) else out
        finally:
            if own:
                conn.close()

    ds = tf.data.Dataset.from_generator(generator, output_signature=signature)
    return ds.prefetch(prefetch) if prefetch else ds
