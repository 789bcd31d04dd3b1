"""The tf.data adapter with real TensorFlow against a real server."""

import numpy as np
import pytest

import tensorprep as tp

tf = pytest.importorskip("tensorflow", reason="tensorflow-cpu is not installed in this "
                         "environment (scripts/python-env.sh installs it)")
tp_tf = pytest.importorskip("tensorprep.adapters.tensorflow")

RNG = np.random.default_rng(5)


def test_dataset_from_tf_source_with_labels(server):
    x = RNG.random((24, 16, 20, 3)).astype(np.float32)
    y = RNG.integers(0, 10, (24, 16, 20)).astype(np.int32)
    source = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    ds = tp_tf.dataset(server.address, source, [tp.flip("horizontal"), tp.add(1)], inflight=2)
    assert ds.element_spec[0].shape.as_list() == [None, 16, 20, 3]
    assert ds.element_spec[1].dtype == tf.int32
    got = list(ds.as_numpy_iterator())
    assert len(got) == 3
    np.testing.assert_allclose(np.concatenate([g[0] for g in got]), x[:, :, ::-1] + 1, rtol=1e-6)
    np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y[:, :, ::-1])


def test_dataset_from_numpy_callable_repeats_each_epoch(server):
    x = (RNG.random((6, 8, 8, 3)) * 255).astype(np.uint8)
    batches = lambda: (x[i:i + 2] for i in range(0, 6, 2))  # noqa: E731
    with tp.Client(server.address) as client:
        ds = tp_tf.dataset(client, batches, [tp.cast("float32"), tp.divide(255)], prefetch=1)
        assert ds.element_spec.dtype == tf.float32
        for _ in range(2):  # two epochs through the same dataset
            got = np.concatenate(list(ds.as_numpy_iterator()))
            np.testing.assert_allclose(got, x.astype(np.float32) / 255, rtol=1e-6)


def test_dataset_in_a_tf_function_training_loop(server):
    x = RNG.random((16, 8, 8, 3)).astype(np.float32)
    source = tf.data.Dataset.from_tensor_slices(x).batch(4)
    ds = tp_tf.dataset(server.address, source, [tp.rotate(90, interpolation="nearest")])

    @tf.function
    def total(dataset):
        s = tf.constant(0.0)
        for b in dataset:
            s += tf.reduce_sum(b)
        return s

    np.testing.assert_allclose(total(ds).numpy(), np.rot90(x, axes=(1, 2)).sum(), rtol=1e-5)


def test_dataset_surfaces_server_errors(server):
    source = tf.data.Dataset.from_tensor_slices(np.zeros((4, 4, 4, 3), np.float32)).batch(2)
    ds = tp_tf.dataset(server.address, source, [tp.divide(0)])
    with pytest.raises(Exception, match="INVALID_ARGUMENT"):
        list(ds.as_numpy_iterator())


# --- on the shared-memory path ------------------------------------------------------------------
def test_dataset_on_shared_memory_keeps_earlier_batches_intact(shm_server):
    """TensorFlow wraps the yielded arrays without a copy; their slots must stay reserved for as
    long as the tensors live, even while later batches and epochs go through the pool."""
    x = RNG.random((24, 16, 20, 3)).astype(np.float32)
    y = RNG.integers(0, 10, (24, 16, 20)).astype(np.int32)
    source = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with tp.Client(shm_server.uds_address, shm=True) as client:
        ds = tp_tf.dataset(client, source, [tp.flip("horizontal"), tp.add(1)], inflight=2)
        first = list(ds)  # EagerTensors, held across the next epochs
        assert client.transport == "shm"
        for _ in range(2):
            again = list(ds)
            del again
        images = np.concatenate([b[0].numpy() for b in first])
        labels = np.concatenate([b[1].numpy() for b in first])
        np.testing.assert_array_equal(images, x[:, :, ::-1] + 1)
        np.testing.assert_array_equal(labels, y[:, :, ::-1])
        held = client.shm_stats["in_use_bytes"]
        assert held >= x.nbytes + y.nbytes  # the slots under `first`
        del first
        assert client.shm_stats["in_use_bytes"] < held


def test_dataset_from_an_address_uses_shared_memory(shm_server):
    x = (RNG.random((6, 8, 8, 3)) * 255).astype(np.uint8)
    batches = lambda: (x[i:i + 2] for i in range(0, 6, 2))  # noqa: E731
    ds = tp_tf.dataset(shm_server.address, batches, [tp.cast("float32"), tp.divide(255)],
                       client_options={"shm": True})  # would raise if shm were not possible
    got = np.concatenate(list(ds.as_numpy_iterator()))
    np.testing.assert_allclose(got, x.astype(np.float32) / 255, rtol=1e-6)


def test_dataset_through_ops_that_change_the_size_has_the_result_shapes(server):
    """resize, crop and channels_first change the output's shape: the signature is the result's
    (learnt from the first batch), so tf.data's shape checks pass and the values are right."""
    x = RNG.random((6, 16, 20, 3)).astype(np.float32)
    y = RNG.integers(0, 10, (6, 16, 20)).astype(np.int32)
    pipeline = [tp.ops.crop(2, 3, 10, 12), tp.ops.channels_first()]
    for source in (tf.data.Dataset.from_tensor_slices((x, y)).batch(3),
                   lambda: ((x[i:i + 3], y[i:i + 3]) for i in (0, 3))):
        ds = tp_tf.dataset(server.address, source, pipeline)
        assert ds.element_spec[0].shape.as_list() == [None, 3, 10, 12]
        assert ds.element_spec[1].shape.as_list() == [None, 10, 12]
        got = list(ds.as_numpy_iterator())
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]),
                                      x[:, 2:12, 3:15].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), y[:, 2:12, 3:15])
