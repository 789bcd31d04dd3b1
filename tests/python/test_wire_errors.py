"""Bytes that are not a ProcessRequest, sent through raw gRPC calls: the server answers
INVALID_ARGUMENT naming the message, answers what came before it on a stream, and keeps serving.
"""

import grpc
import numpy as np
import pytest

import tensorprep as tp
from tensorprep._stubs import pb

PROCESS = "/tensorprep.v1.Preprocessor/Process"
STREAM = "/tensorprep.v1.Preprocessor/ProcessStream"
GARBAGE = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"


def identity(b):
    return b


def flip_request(request_id):
    img = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    r = pb.ProcessRequest(request_id=request_id,
                          images=pb.Tensor(dtype=pb.DTYPE_UINT8, shape=img.shape,
                                           data=img.tobytes()))
    r.pipeline.ops.append(tp.flip("horizontal"))
    return r.SerializeToString(), img[:, :, ::-1, :]


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def responses(channel, messages):
    """Sends `messages` on one stream; returns (parsed responses, the RpcError or None)."""
    call = channel.stream_stream(STREAM, request_serializer=identity,
                                 response_deserializer=pb.ProcessResponse.FromString)
    got = []
    try:
        for r in call(iter(messages), timeout=30):
            got.append(r)
    except grpc.RpcError as e:
        return got, e
    return got, None


@pytest.mark.parametrize("data", [GARBAGE, b"\x12\xff\xff\xff\xff\x0f"], ids=["varint", "length"])
def test_unary_garbage_is_invalid_argument(channel, data):
    call = channel.unary_unary(PROCESS, request_serializer=identity,
                               response_deserializer=identity)
    with pytest.raises(grpc.RpcError) as e:
        call(data, timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == (
        f"the request is not a valid tensorprep.v1.ProcessRequest message ({len(data)} bytes "
        "that protobuf cannot parse); check that the client sends messages of this API")


def test_truncated_message_is_invalid_argument(channel):
    whole, _ = flip_request("t")
    call = channel.unary_unary(PROCESS, request_serializer=identity,
                               response_deserializer=identity)
    with pytest.raises(grpc.RpcError) as e:
        call(whole[:-7], timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a valid tensorprep.v1.ProcessRequest" in e.value.details()


def test_stream_answers_what_came_before_and_ends_at_the_bad_message(channel):
    first, want = flip_request("first")
    third, _ = flip_request("third")
    got, error = responses(channel, [first, GARBAGE, third])
    assert [r.request_id for r in got] == ["first"]
    out = np.frombuffer(got[0].images.data, np.uint8).reshape(want.shape)
    np.testing.assert_array_equal(out, want)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "message 2 of this stream is not a valid tensorprep.v1.ProcessRequest message (11 bytes")


def test_stream_with_a_bad_first_message_answers_nothing(channel):
    ok, _ = flip_request("never")
    got, error = responses(channel, [GARBAGE, ok])
    assert got == []
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("message 1 of this stream is not a valid")


def test_server_keeps_serving_after_bad_messages(server, channel):
    responses(channel, [GARBAGE])
    with tp.Client(server.address, timeout=30) as c:
        x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
        np.testing.assert_array_equal(c.process(x, [tp.flip("vertical")]), x[:, ::-1])
        got = list(c.stream([x, x], [tp.flip("vertical")]))
        assert len(got) == 2
