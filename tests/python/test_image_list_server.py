"""Image lists through a real server on the wire itself (generated stubs, no client library):
the stream with encoded requests among dense ones and a corrupt file in the middle, the
``image_decode`` stage in the responses and in the Prometheus histograms, and the
``--max-image-megapixels`` limit read from a file's header."""

import io
import re
import struct
import urllib.request

import grpc
import numpy as np
import pytest
from PIL import Image

from tensorprep.v1 import tensorprep_pb2 as pb
from tensorprep.v1 import tensorprep_pb2_grpc as pb_grpc


def png(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def jpeg(array):
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=90)
    return out.getvalue()


def images(seed, sizes):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def center_crop_request(files, rid, size=16):
    r = pb.ProcessRequest(request_id=rid)
    for f in files:
        r.image_list.samples.add().encoded = f
    op = r.pipeline.ops.add()
    op.center_crop.height = size
    op.center_crop.width = size
    return r


def center_crop(a, size=16):
    top = int(round((a.shape[0] - size) / 2))
    left = int(round((a.shape[1] - size) / 2))
    return a[top:top + size, left:left + size]


def scrape(server):
    return urllib.request.urlopen(
        f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()


def value(text, series):
    m = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
    assert m, f"missing {series}"
    return float(m.group(1))


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield pb_grpc.PreprocessorStub(channel)


def test_stream_mixes_lists_and_dense_batches_and_survives_a_corrupt_file(server, stub):
    before = scrape(server)
    lists = [images(k, [(20 + k, 31), (40, 18 + k), (17, 17)]) for k in range(4)]
    files = [[png(a) for a in batch] for batch in lists]
    requests = [center_crop_request(f, f"list{k}") for k, f in enumerate(files)]
    broken = jpeg(lists[0][0])
    requests.insert(2, center_crop_request([files[0][0], broken[: len(broken) // 2]], "broken"))
    dense = pb.ProcessRequest(request_id="dense")
    dense.images.dtype = pb.DTYPE_UINT8
    dense.images.shape.extend([1, 2, 2, 1])
    dense.images.data = bytes([1, 2, 3, 4])
    dense.pipeline.ops.add().flip.axis = pb.FLIP_AXIS_HORIZONTAL
    requests.insert(4, dense)
    responses = {r.request_id: r for r in stub.ProcessStream(iter(requests), timeout=60)}
    assert set(responses) == {r.request_id for r in requests}

    err = responses["broken"].error
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "request 'broken': image_list.samples[1].encoded: corrupt JPEG file: Premature end " \
        "of JPEG file" in err.message
    assert list(responses["dense"].images.shape) == [1, 2, 2, 1]
    assert responses["dense"].images.data == bytes([2, 1, 4, 3])
    assert responses["dense"].timings.image_decode_ns == 0

    decode_ns = 0
    for k, batch in enumerate(lists):
        res = responses[f"list{k}"]
        assert not res.HasField("error")
        assert list(res.images.shape) == [3, 16, 16, 3]
        got = np.frombuffer(res.images.data, np.uint8).reshape(3, 16, 16, 3)
        for i, a in enumerate(batch):
            np.testing.assert_array_equal(got[i], center_crop(a))
        assert res.transfer.inline_bytes_in == sum(len(f) for f in files[k])
        assert res.timings.image_decode_ns > 0
        assert res.timings.total_ns >= res.timings.image_decode_ns + res.timings.kernel_ns
        decode_ns += res.timings.image_decode_ns

    after = scrape(server)
    series = 'tensorprep_stage_duration_seconds_{}{{device="cpu",stage="image_decode"}}'
    # Four lists decoded and answered; the broken one failed while decoding and is not observed.
    assert value(after, series.format("count")) - value(before, series.format("count")) == 4
    observed = value(after, series.format("sum")) - value(before, series.format("sum"))
    assert observed == pytest.approx(decode_ns * 1e-9, rel=1e-6, abs=1e-6)
    ok = 'tensorprep_requests_total{code="OK",rpc="ProcessStream"}'
    assert value(after, ok) - value(before, ok) == 5


def test_image_size_limit_is_a_server_flag_read_from_the_header(start_server):
    srv = start_server(max_image_megapixels=1)
    small = png(images(9, [(8, 8)])[0])
    # The IHDR's width and height, rewritten: 1100 x 1000 = 1.05 Mi pixels.
    bomb = small[:16] + struct.pack(">II", 1100, 1000) + small[24:]
    with grpc.insecure_channel(srv.address) as channel:
        stub = pb_grpc.PreprocessorStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            stub.Process(center_crop_request([small, bomb], "bomb"), timeout=30)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ("request 'bomb': image_list.samples[1].encoded: the PNG declares 1000x1100 = "
                "1100000 pixels, over the server's limit of 1048576 pixels per image; nothing was "
                "decoded" in e.value.details())
        ok = stub.Process(center_crop_request([small], "small", size=8), timeout=30)
        assert list(ok.images.shape) == [1, 8, 8, 3]
