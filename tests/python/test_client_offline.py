"""Client parts that need no server: the wire codec against the generated message classes, the op
builders, the error mapping, the metrics helpers and the test references themselves."""

import grpc
import numpy as np
import pytest

import refs
import tensorprep as tp
from tensorprep import metrics, wire
from tensorprep._stubs import pb

prometheus_client = pytest.importorskip("prometheus_client")


# --- references ---------------------------------------------------------------------------------
def test_philox_known_answers():
    # Known-answer vectors published with Random123 for Philox4x32-10.
    assert refs.philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C,
                                                        0x9B00DBD8)
    assert refs.philox4x32_10((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2) == (0x408F276D, 0x41C83B0E,
                                                                        0xA20BC7C6, 0x6D5451FD)
    assert refs.philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
                              (0xA4093822, 0x299F31D0)) == (0xD16CFE09, 0x94FDCCEB, 0x5001E420,
                                                            0x24126EA1)


@pytest.mark.parametrize("border", ["constant", "edge", "reflect", "reflect_101", "wrap"])
def test_nearest_reference_matches_skimage(border):
    img = np.random.default_rng(1).random((17, 23, 3))
    ours = refs.warp_nearest(img, refs.rotation_inverse(30, 17, 23), border, 0.25)
    np.testing.assert_array_equal(ours, refs.skimage_rotate(img, 30, border, 0.25, order=0))


# --- wire codec ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 4), (3, 5, 4, 3), (1, 256, 256, 3)])
def test_encode_request_parses_as_process_request(dtype, shape):
    rng = np.random.default_rng(0)
    images = (rng.random(shape) * 100).astype(dtype)
    labels = rng.integers(0, 9, shape[:3]).astype(np.int32)
    pipeline = tp.as_pipeline([tp.rotate(30, border="edge"), tp.random_flip(0.5)])
    raw = wire.encode_request(wire.as_wire_array(images), pipeline,
                              aux=[("labels", labels, pb.INTERPOLATION_NEAREST, 255.0)],
                              request_id="r7", device=pb.DEVICE_CPU, seed=2**64 - 1,
                              sample_offset=12)
    msg = pb.ProcessRequest.FromString(raw)
    assert msg.request_id == "r7" and msg.seed == 2**64 - 1 and msg.sample_offset == 12
    assert msg.device == pb.DEVICE_CPU and msg.pipeline == pipeline
    assert list(msg.images.shape) == list(shape)
    assert msg.images.dtype == {np.uint8: pb.DTYPE_UINT8, np.int32: pb.DTYPE_INT32,
                                np.float32: pb.DTYPE_FLOAT32, np.float16: pb.DTYPE_FLOAT16}[dtype]
    assert msg.images.data == images.tobytes()
    (aux,) = msg.aux
    assert (aux.name, aux.interpolation, aux.fill) == ("labels", pb.INTERPOLATION_NEAREST, 255.0)
    assert list(aux.tensor.shape) == list(shape[:3]) and aux.tensor.data == labels.tobytes()
    # Byte-identical to the generated serialiser modulo field order: re-serialising the parse
    # gives the same length.
    assert len(msg.SerializeToString()) == len(raw)


def test_encode_request_takes_non_contiguous_and_big_endian():
    base = np.arange(2 * 4 * 6, dtype=">f4").reshape(2, 4, 6)
    view = base[:, :, ::2]
    msg = pb.ProcessRequest.FromString(
        wire.encode_request(wire.as_wire_array(view), pb.Pipeline()))
    got = np.frombuffer(msg.images.data, "<f4").reshape(msg.images.shape)
    np.testing.assert_array_equal(got, view.astype("<f4"))


def test_encode_request_rejects_unsupported_dtypes():
    with pytest.raises(ValueError, match="float64"):
        wire.as_wire_array(np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="scalar"):
        wire.as_wire_array(np.float32(1))


def test_decode_response_matches_generated_parser():
    rng = np.random.default_rng(3)
    images = rng.random((2, 5, 7, 3)).astype(np.float32)
    mask = rng.integers(0, 255, (2, 5, 7)).astype(np.uint8)
    resp = pb.ProcessResponse(
        request_id="abc",
        images=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=images.shape, data=images.tobytes()),
        aux=[pb.AuxTensor(name="mask", interpolation=pb.INTERPOLATION_NEAREST,
                          tensor=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=mask.shape,
                                           data=mask.tobytes()))],
        device=pb.DEVICE_CUDA,
        timings=pb.ServerTimings(decode_ns=1, queue_ns=2, kernel_ns=3, encode_ns=4, total_ns=10),
        error=pb.Error(code=3, message="bad"))
    got = wire.decode_response(resp.SerializeToString())
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.aux["mask"], mask)
    assert got.meta.request_id == "abc" and got.meta.device == pb.DEVICE_CUDA
    assert got.meta.timings.total_ns == 10 and got.meta.error.message == "bad"
    assert not got.images.flags.writeable  # a view into the received bytes


def test_decode_response_rejects_inconsistent_tensor():
    resp = pb.ProcessResponse(images=pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2, 2],
                                               data=b"\0" * 12))
    with pytest.raises(ValueError, match="needs 16 bytes, got 12"):
        wire.decode_response(resp.SerializeToString())


# --- op builders --------------------------------------------------------------------------------
def test_op_builders_fill_the_wire_messages():
    assert tp.rotate(30, border="edge") == pb.Op(rotate=pb.RotateOp(
        angle_deg=30, interpolation=pb.INTERPOLATION_BILINEAR, border=pb.BORDER_EDGE))
    assert tp.rotate(-5, interpolation="nearest", border="constant", fill=2).rotate.fill == 2
    assert tp.flip("vertical").flip.axis == pb.FLIP_AXIS_VERTICAL
    assert tp.random_flip(p=0.25).random_flip == pb.RandomFlipOp(axis=pb.FLIP_AXIS_HORIZONTAL,
                                                                 p=0.25)
    rr = tp.random_rotate(10).random_rotate
    assert (rr.min_deg, rr.max_deg) == (-10, 10)
    assert list(tp.add([1, 2, 3]).add.value) == [1, 2, 3]
    assert list(tp.divide(np.float32(2)).divide.value) == [2]
    n = tp.normalize([0.5, 0.4, 0.3], 0.2).normalize
    assert list(n.mean) == pytest.approx([0.5, 0.4, 0.3]) and list(n.std) == pytest.approx([0.2])
    c = tp.clamp(max=1).clamp
    assert not c.HasField("min") and c.max == 1
    assert tp.cast("float16").cast.dtype == pb.DTYPE_FLOAT16
    assert tp.cast(np.uint8).cast.dtype == pb.DTYPE_UINT8
    assert tp.rotate(1, border="symmetric").rotate.border == pb.BORDER_REFLECT
    assert tp.rotate(1, border="reflect_101").rotate.border == pb.BORDER_REFLECT_101
    assert len(tp.pipeline(tp.flip(), tp.add(1)).ops) == 2


def test_op_builders_reject_unknown_names():
    with pytest.raises(ValueError, match="border"):
        tp.rotate(30, border="mirror")
    with pytest.raises(ValueError, match="flip axis"):
        tp.flip("diagonal")
    with pytest.raises(ValueError, match="float64"):
        tp.cast("float64")
    with pytest.raises(TypeError, match=r"pipeline\[1\]"):
        tp.as_pipeline([tp.flip(), "rotate"])


# --- errors -------------------------------------------------------------------------------------
def test_errors_map_codes_to_classes():
    e = tp.errors.error_for(3, "images: bad", "5")
    assert isinstance(e, tp.InvalidArgumentError) and e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.details == "images: bad" and e.request_id == "5" and "INVALID_ARGUMENT" in str(e)
    assert isinstance(tp.errors.error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
                      tp.ResourceExhaustedError)
    assert type(tp.errors.error_for(12, "x")) is tp.TensorprepError  # UNIMPLEMENTED


# --- metrics ------------------------------------------------------------------------------------
def test_timed_callback_observes_python_callback_path():
    registry = prometheus_client.CollectorRegistry()
    calls = []

    @tp.timed_callback(workload="W9", registry=registry)
    def callback(x):
        calls.append(x)
        return x + 1

    assert callback(1) == 2 and callback.__name__ == "callback"
    with pytest.raises(ZeroDivisionError):
        tp.timed_callback(lambda: 1 / 0, workload="W9", registry=registry)()
    labels = {"path": "python_callback", "workload": "W9"}
    assert registry.get_sample_value(metrics.METRIC_NAME + "_count", labels) == 2
    # Buckets run from 50 us to 30 s.
    assert registry.get_sample_value(metrics.METRIC_NAME + "_bucket",
                                     dict(labels, le="5e-05")) is not None
    assert registry.get_sample_value(metrics.METRIC_NAME + "_bucket",
                                     dict(labels, le="30.0")) == 2


def test_tune_malloc_applies_on_glibc():
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("tune_malloc needs glibc's mallopt")
    assert tp.tune_malloc() is True
    big = np.ones(40 << 20, np.uint8)  # larger than any mmap threshold: now from the heap
    assert bytes(memoryview(big)[-3:]) == b"\x01\x01\x01"
