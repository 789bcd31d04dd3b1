"""A tf.data source that streams batches through the service.

    ds = tensorprep.adapters.tensorflow.dataset(
        "127.0.0.1:50051", batches, [tp.rotate(30, border="edge")], inflight=4, prefetch=2)
    for images in ds: ...          # or (images, labels) when the source yields pairs

``batches`` is a tf.data.Dataset of batches (images, or (images, labels)), a callable returning an
iterable of NumPy batches (called once per epoch), or a one-shot iterable. Each batch is one
request on one bidirectional stream with ``inflight`` requests outstanding; the dataset then
prefetches ``prefetch`` processed batches. Python runs once per batch (tf.data's generator
bridge), never per sample.

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

from ..client import Client
from ..ops import as_pipeline
from ..shm import result_dtype


def _spec(shape, dtype):
    return tf.TensorSpec(shape=(None,) + tuple(shape[1:]), dtype=tf.as_dtype(np.dtype(dtype)))


def dataset(client, batches, pipeline, *, inflight=4, prefetch=2, seed=None, device=None,
            timeout=None, workload=None, client_options=None):
    """Returns a tf.data.Dataset of processed batches (see the module doc).

    ``client`` is a Client or an address; with an address each pass opens its own Client with
    ``client_options`` (keyword arguments of Client, e.g. {"shm": False}).
    Errors from the service surface as exceptions when the dataset is iterated.
    """
    client_options = dict(client_options or {})
    pipeline = as_pipeline(pipeline)
    is_tf = isinstance(batches, tf.data.Dataset)

    def source():
        if is_tf:
            return batches.as_numpy_iterator()
        return iter(batches()) if callable(batches) else iter(batches)

    # Output signature: from the source dataset's spec, else by peeking at the first batch.
    first = None
    if is_tf:
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
        in_shapes = [(np.shape(x), np.asarray(x).dtype) for x in items]
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
        own = not isinstance(client, Client)
        conn = Client(client, **client_options) if own else client
        try:
            for out in conn.stream(it, pipeline, inflight=inflight, seed=seed, device=device,
                                   timeout=timeout, workload=workload):
                yield tuple(out) if isinstance(out, tuple) else out
        finally:
            if own:
                conn.close()

    ds = tf.data.Dataset.from_generator(generator, output_signature=signature)
    return ds.prefetch(prefetch) if prefetch else ds
