"""Unary calls through a real server: labels and other aux tensors, seeds and random ops, errors
with their gRPC codes, deadlines, lifecycle, list_ops and the client-side metrics."""

import socket

import grpc
import numpy as np
import pytest

import refs
import tensorprep as tp
from tensorprep import metrics

RNG = np.random.default_rng(99)


@pytest.fixture(scope="module")
def client(server):
    with tp.Client(server.address, timeout=60) as c:
        yield c


def batch(n=8, h=12, w=16, c=3):
    return RNG.random((n, h, w, c)).astype(np.float32)


def labels_for(x):
    return RNG.integers(0, 20, x.shape[:3]).astype(np.int32)


# --- aux tensors --------------------------------------------------------------------------------
def test_labels_follow_rotation_with_nearest(client):
    x = batch(3, 15, 21)
    y = labels_for(x)
    out, out_y = client.process(x, [tp.rotate(30, border="constant")], labels=y)
    inv = refs.rotation_inverse(30, 15, 21)
    np.testing.assert_allclose(
        out, np.stack([refs.skimage_rotate(i, 30, "constant") for i in x]), atol=1e-4, rtol=0)
    # Labels keep their values (nearest) and their dtype; the border fill defaults to 0.
    assert out_y.dtype == np.int32
    np.testing.assert_array_equal(out_y,
                                  np.stack([refs.warp_nearest(l, inv, "constant", 0) for l in y]))


def test_aux_fill_and_interpolation(client):
    x = batch(2, 10, 14)
    mask = RNG.integers(0, 5, x.shape[:3]).astype(np.uint8)
    soft = RNG.random(x.shape[:3] + (2,)).astype(np.float32)
    out, aux = client.process(x, [tp.rotate(25)], aux={
        "mask": tp.AuxInput(mask, fill=255),
        "soft": tp.AuxInput(soft, interpolation="bilinear", fill=0.5)})
    inv = refs.rotation_inverse(25, 10, 14)
    assert list(aux) == ["mask", "soft"]
    np.testing.assert_array_equal(aux["mask"],
                                  np.stack([refs.warp_nearest(m, inv, "constant", 255)
                                            for m in mask]))
    np.testing.assert_allclose(aux["soft"],
                               np.stack([refs.skimage_rotate(s, 25, "constant", 0.5)
                                         for s in soft]),
                               atol=1e-4, rtol=0)


def test_labels_follow_flip_but_not_arithmetic(client):
    x = batch(4)
    y = labels_for(x)
    out, out_y = client.process(x, [tp.flip("vertical"), tp.add(1), tp.multiply(2)], labels=y)
    np.testing.assert_allclose(out, (x[:, ::-1] + np.float32(1)) * np.float32(2), rtol=1e-6)
    np.testing.assert_array_equal(out_y, y[:, ::-1])


# --- seeds and random ops -----------------------------------------------------------------------
def test_random_flip_draws_match_the_counter_based_generator(client):
    x = batch(64, 6, 8)
    y = labels_for(x)
    seed = 0x1234_5678_9ABC_DEF0
    out, out_y = client.process(x, [tp.add(0), tp.random_flip(0.5)], labels=y, seed=seed,
                                sample_offset=1000)
    flipped = [refs.uniform(seed, 1000 + i, 1) < 0.5 for i in range(64)]
    assert 10 < sum(flipped) < 54
    for i, f in enumerate(flipped):
        np.testing.assert_array_equal(out[i], x[i, :, ::-1] if f else x[i])
        np.testing.assert_array_equal(out_y[i], y[i, :, ::-1] if f else y[i])


def test_random_rotate_angles_match_the_counter_based_generator(client):
    x = batch(6, 13, 17)
    seed = 42
    out = client.process(x, [tp.random_rotate(-40, 25, border="edge")], seed=seed)
    for i in range(6):
        angle = -40 + refs.uniform(seed, i, 0) * 65
        np.testing.assert_allclose(out[i], refs.skimage_rotate(x[i], angle, "edge"), atol=1e-4,
                                   rtol=0)


def test_same_seed_same_result_and_split_invariance(client):
    x = batch(16)
    pipeline = [tp.random_flip(0.5), tp.random_rotate(20, border="reflect"),
                tp.random_flip(0.3, "vertical")]
    whole = client.process(x, pipeline, seed=7)
    np.testing.assert_array_equal(client.process(x, pipeline, seed=7), whole)
    first = client.process(x[:5], pipeline, seed=7)
    second = client.process(x[5:], pipeline, seed=7, sample_offset=5)
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    assert not np.array_equal(client.process(x, pipeline, seed=8), whole)


def test_random_flip_probability_extremes(client):
    x = batch(32, 4, 5)
    np.testing.assert_array_equal(client.process(x, [tp.random_flip(0.0)], seed=1), x)
    np.testing.assert_array_equal(client.process(x, [tp.random_flip(1.0)], seed=1), x[:, :, ::-1])


def test_unset_seed_draws_a_fresh_one_per_call(client):
    x = batch(64, 4, 6)
    a = client.process(x, [tp.random_flip(0.5)])
    b = client.process(x, [tp.random_flip(0.5)])
    assert not np.array_equal(a, b)  # equal with probability 2**-64


# --- results ------------------------------------------------------------------------------------
def test_call_returns_device_and_timings(client):
    x = batch(4)
    res = client.call(x, [tp.rotate(10)], device="cpu")
    assert res.device == "cpu"
    t = res.timings
    assert t["total"] > 0 and t["kernel"] > 0
    assert t["decode"] + t["queue"] + t["kernel"] + t["encode"] <= t["total"] * 1.001 + 1e-6
    assert res.round_trip_s >= t["total"]


def test_list_ops_names_every_builder(client):
    resp = client.list_ops()
    names = {op.name for op in resp.ops}
    # Every op the server lists has a builder, and every builder's op is served.
    assert names == set(tp.ops.OPS)
    for name in names:
        assert callable(getattr(tp.ops, name)), name
    geometric = {op.name for op in resp.ops if op.geometric}
    assert geometric == {"rotate", "flip", "random_flip", "random_rotate", "resize", "crop",
                         "center_crop", "pad", "random_resized_crop", "affine", "random_affine"}
    cpu = [d for d in resp.devices if d.device == tp._stubs.pb.DEVICE_CPU]
    assert cpu and cpu[0].usable


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("pipeline,labels_shape,needle", [
    ([tp.rotate(float("nan"))], None, "angle"),
    ([tp.divide(0)], None, "divide"),
    ([tp.random_flip(1.5)], None, "p"),
    ([tp.add([1, 2])], None, "add"),  # 2 values for 3 channels
    ([tp.normalize(0, [1, 0, 1])], None, "std"),
    ([tp.flip()], (8, 11, 16), "aux"),  # label H differs from the batch's
    ([tp.random_rotate(10, 5)], None, "max_deg"),
])
def test_invalid_arguments_raise_with_code_and_field(client, pipeline, labels_shape, needle):
    x = batch()
    labels = np.zeros(labels_shape, np.int32) if labels_shape else None
    with pytest.raises(tp.InvalidArgumentError) as info:
        client.process(x, pipeline, labels=labels)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.details, info.value.details


def test_normalize_on_integers_is_rejected(client):
    with pytest.raises(tp.InvalidArgumentError, match="normalize"):
        client.process(np.zeros((1, 4, 4, 3), np.uint8), [tp.normalize(0, 1)])


def test_cuda_device(client):
    usable = any(d.usable for d in client.list_ops().devices
                 if d.device == tp._stubs.pb.DEVICE_CUDA)
    x = batch(2)
    if usable:
        np.testing.assert_allclose(client.process(x, [tp.flip()], device="cuda"), x[:, :, ::-1])
    else:
        with pytest.raises(tp.FailedPreconditionError):
            client.process(x, [tp.flip()], device="cuda")


def test_message_over_the_server_limit_is_resource_exhausted(start_server):
    small = start_server(max_message_mb=1)
    with tp.Client(small.address, timeout=30) as c:
        np.testing.assert_array_equal(c.process(np.ones((1, 64, 64, 3), np.float32), [tp.flip()]),
                                      np.ones((1, 64, 64, 3), np.float32))
        with pytest.raises(tp.ResourceExhaustedError):
            c.process(np.ones((4, 256, 256, 3), np.float32), [tp.flip()])  # 3 MB


def test_deadline_exceeded(client):
    x = RNG.random((32, 256, 256, 3)).astype(np.float32)
    with pytest.raises(tp.DeadlineExceededError):
        client.process(x, [tp.rotate(30)] * 4, timeout=0.001)
    # The client's default deadline applies too.
    with tp.Client(client.address, timeout=0.001) as c:
        with pytest.raises(tp.DeadlineExceededError):
            c.process(x, [tp.rotate(30)])


def test_unreachable_server_is_unavailable():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tp.Client(f"127.0.0.1:{port}", timeout=5) as c:
        with pytest.raises(tp.UnavailableError):
            c.process(batch(1), [tp.flip()])
        with pytest.raises(tp.UnavailableError):
            c.wait_ready(timeout=0.5)


def test_client_side_validation(client):
    with pytest.raises(ValueError, match="float64"):
        client.process(np.zeros((1, 2, 2)), [tp.flip()])
    with pytest.raises(ValueError, match="device"):
        client.process(batch(1), [tp.flip()], device="tpu")


def test_context_manager_closes_the_channel(server):
    with tp.Client(server.address) as c:
        c.wait_ready(10)
        x = batch(1, 2, 3)
        np.testing.assert_array_equal(c.process(x, [tp.flip(), tp.flip()]), x)
    with pytest.raises(ValueError):  # grpc refuses calls on a closed channel
        c.process(batch(1), [tp.flip()])


# --- metrics ------------------------------------------------------------------------------------
def test_client_observes_remote_calls(server):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    with tp.Client(server.address, metrics=registry, workload="W2") as c:
        x = batch(2)
        for _ in range(3):
            c.process(x, [tp.rotate(30)])
        c.process(x, [tp.flip()], workload="W3")
        list(c.stream([x] * 4, [tp.flip()]))
    get = registry.get_sample_value
    name = metrics.METRIC_NAME
    assert get(name + "_count", {"path": "remote_unary", "workload": "W2"}) == 3
    assert get(name + "_count", {"path": "remote_unary", "workload": "W3"}) == 1
    assert get(name + "_count", {"path": "remote_stream", "workload": "W2"}) == 4
    assert get(name + "_sum", {"path": "remote_unary", "workload": "W2"}) > 0
