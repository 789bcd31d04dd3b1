"""Streaming through a real server: order, backpressure, per-request errors, seeds across
batches, source exceptions and early close."""

import threading
import time

import numpy as np
import pytest

import refs
import tensorprep as tp

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def client(server):
    with tp.Client(server.address, timeout=120) as c:
        yield c


def test_results_come_back_in_request_order(client):
    # Sizes vary widely so that a small request can finish before a big one sent earlier.
    sizes = [16, 1, 8, 1, 1, 12, 2, 1, 16, 1, 3, 1]
    batches = [RNG.random((n, 64, 64, 3)).astype(np.float32) for n in sizes]
    outs = list(client.stream(batches, [tp.rotate(30, border="edge")], inflight=6))
    assert [o.shape[0] for o in outs] == sizes
    for x, out in zip(batches, outs):
        np.testing.assert_allclose(out, np.stack([refs.skimage_rotate(i, 30) for i in x]),
                                   atol=1e-4, rtol=0)


def test_labels_and_full_results(client):
    batches = []
    for _ in range(5):
        x = RNG.random((3, 9, 11, 3)).astype(np.float32)
        batches.append((x, RNG.integers(0, 9, (3, 9, 11)).astype(np.int32)))
    outs = list(client.stream(batches, [tp.flip("vertical")], inflight=2))
    for (x, y), (ox, oy) in zip(batches, outs):
        np.testing.assert_array_equal(ox, x[:, ::-1])
        np.testing.assert_array_equal(oy, y[:, ::-1])
    res = list(client.stream(iter(batches), [tp.flip()], full=True))
    assert [r.request_id for r in res] == [str(i) for i in range(5)]
    assert all(r.device == "cpu" and r.round_trip_s > 0 for r in res)
    np.testing.assert_array_equal(res[2].aux["labels"], batches[2][1][:, :, ::-1])


def test_seed_runs_across_batches_like_one_call(client):
    x = RNG.random((20, 8, 10, 3)).astype(np.float32)
    pipeline = [tp.random_flip(0.5), tp.random_rotate(15)]
    whole = client.process(x, pipeline, seed=11)
    parts = [x[:3], x[3:10], x[10:11], x[11:]]
    streamed = np.concatenate(list(client.stream(parts, pipeline, seed=11, inflight=3)))
    np.testing.assert_array_equal(streamed, whole)


def test_backpressure_bounds_batches_read_ahead(client):
    inflight = 3
    state = {"pulled": 0, "consumed": 0, "max_ahead": 0}
    lock = threading.Lock()
    x = RNG.random((2, 32, 32, 3)).astype(np.float32)

    def source():
        for _ in range(30):
            with lock:
                state["pulled"] += 1
                state["max_ahead"] = max(state["max_ahead"], state["pulled"] - state["consumed"])
            yield x

    for out in client.stream(source(), [tp.flip()], inflight=inflight):
        np.testing.assert_array_equal(out, x[:, :, ::-1])
        time.sleep(0.01)  # a slow training step
        with lock:
            state["consumed"] += 1
    assert state["consumed"] == 30
    # At most `inflight` unconsumed requests, plus the one the consumer holds.
    assert state["max_ahead"] <= inflight + 1, state
    assert state["max_ahead"] >= 2  # and it did pipeline


def test_inflight_one_is_lockstep(client):
    state = {"pulled": 0, "consumed": 0, "max_ahead": 0}
    x = np.ones((1, 4, 4), np.float32)

    def source():
        for _ in range(10):
            state["pulled"] += 1
            state["max_ahead"] = max(state["max_ahead"], state["pulled"] - state["consumed"])
            yield x

    for _ in client.stream(source(), [tp.add(1)], inflight=1):
        state["consumed"] += 1
    assert state["max_ahead"] <= 2 and state["consumed"] == 10


def test_per_request_error_raises_in_order_and_stream_stays_usable(client):
    good = RNG.random((2, 8, 8, 3)).astype(np.float32)
    bad = (good, np.zeros((2, 5, 8), np.int32))  # label height differs
    gen = client.stream([good, good, bad, good], [tp.flip()], inflight=4)
    np.testing.assert_array_equal(next(gen), good[:, :, ::-1])
    np.testing.assert_array_equal(next(gen), good[:, :, ::-1])
    with pytest.raises(tp.InvalidArgumentError) as info:
        next(gen)
    assert info.value.request_id == "2"
    # The client is still fine for new calls and streams.
    assert len(list(client.stream([good] * 3, [tp.flip()]))) == 3


def test_exception_in_source_is_reraised_after_earlier_results(client):
    x = np.ones((1, 4, 4, 1), np.float32)

    def source():
        yield x
        yield x
        raise KeyError("source broke")

    got = []
    with pytest.raises(KeyError, match="source broke"):
        for out in client.stream(source(), [tp.add(1)]):
            got.append(out)
    assert len(got) == 2 and all((g == 2).all() for g in got)


def test_client_side_rejection_in_stream(client):
    with pytest.raises(ValueError, match="float64"):
        list(client.stream([np.ones((1, 2, 2), np.float32), np.ones((1, 2, 2))], [tp.flip()]))


def test_early_close_cancels_an_endless_stream(client):
    x = RNG.random((4, 64, 64, 3)).astype(np.float32)
    pulled = [0]

    def endless():
        while True:
            pulled[0] += 1
            yield x

    gen = client.stream(endless(), [tp.rotate(5)], inflight=4)
    for i, _ in enumerate(gen):
        if i == 2:
            break
    gen.close()
    before = pulled[0]
    time.sleep(0.3)
    assert pulled[0] == before <= 3 + 4 + 1  # nothing read after close
    np.testing.assert_array_equal(client.process(x, [tp.flip()]), x[:, :, ::-1])


def test_stream_deadline(client):
    x = RNG.random((16, 256, 256, 3)).astype(np.float32)
    with pytest.raises(tp.DeadlineExceededError):
        list(client.stream([x] * 20, [tp.rotate(30)], timeout=0.05))


def test_inflight_must_be_positive(client):
    with pytest.raises(ValueError, match="inflight"):
        next(client.stream([], [tp.flip()], inflight=0))


def test_empty_source_yields_nothing(client):
    assert list(client.stream([], [tp.flip()])) == []


def test_client_reorders_responses_that_arrive_out_of_order():
    # A server that answers every pair of requests in reverse order (which the service is allowed
    # to do), so the client's reordering is exercised whatever the real server's timing.
    from concurrent import futures

    import grpc
    from tensorprep._stubs import pb

    arrivals = []

    def process_stream(request_iterator, context):
        held = None
        for req in request_iterator:
            resp = pb.ProcessResponse(request_id=req.request_id, images=req.images,
                                      device=pb.DEVICE_CPU)
            if held is None:
                held = resp
                continue
            arrivals.extend([resp.request_id, held.request_id])
            yield resp
            yield held
            held = None
        if held is not None:
            arrivals.append(held.request_id)
            yield held

    handler = grpc.method_handlers_generic_handler("tensorprep.v1.Preprocessor", {
        "ProcessStream": grpc.stream_stream_rpc_method_handler(
            process_stream, request_deserializer=pb.ProcessRequest.FromString,
            response_serializer=pb.ProcessResponse.SerializeToString)})
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        batches = [np.full((1, 2, 2), i, np.float32) for i in range(7)]
        with tp.Client(f"127.0.0.1:{port}", timeout=30) as c:
            outs = list(c.stream(batches, [tp.flip()], inflight=2))
        assert arrivals[:4] == ["1", "0", "3", "2"]
        assert [int(o[0, 0, 0]) for o in outs] == list(range(7))
    finally:
        srv.stop(0)


def test_large_batches_are_chunked_and_reassembled(client):
    x = RNG.random((16, 32, 32, 3)).astype(np.float32)  # 192 KiB
    y = RNG.integers(0, 9, (16, 32, 32)).astype(np.int32)
    pipeline = [tp.random_flip(0.5), tp.random_rotate(20, border="edge")]
    whole = client.process(x, pipeline, labels=y, seed=5)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]
    # 40 KiB chunks: 2 samples per request, 8 requests, more than `inflight` for one batch.
    res = list(client.stream(batches, pipeline, seed=5, inflight=2, chunk_mb=40 / 1024,
                             full=True))
    assert [r.request_id for r in res] == ["0", "1"]
    np.testing.assert_array_equal(np.concatenate([r.images for r in res]), whole[0])
    np.testing.assert_array_equal(np.concatenate([r.aux["labels"] for r in res]), whole[1])
    assert all(r.timings["kernel"] > 0 for r in res)
    # Unchunked gives the same.
    plain = list(client.stream(batches, pipeline, seed=5, chunk_mb=None))
    np.testing.assert_array_equal(np.concatenate([p[0] for p in plain]), whole[0])


def test_chunked_stream_error_names_the_batch(client):
    x = RNG.random((8, 16, 16, 3)).astype(np.float32)
    gen = client.stream([x, (x, np.zeros((8, 15, 16), np.int32))], [tp.add(1)],
                        chunk_mb=8 / 1024)
    np.testing.assert_allclose(next(gen), x + 1, rtol=1e-6)
    with pytest.raises(tp.InvalidArgumentError) as info:
        next(gen)
    assert info.value.request_id == "1"
