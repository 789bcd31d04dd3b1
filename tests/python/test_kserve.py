"""The KServe v2 / Triton protocol, spoken to a real server by the stock client from PyPI
(tritonclient[grpc]), with no code of ours on the client side.

A server is started with a pipeline file of two models: W2 ("rotate30": rotate 30 degrees,
bilinear, edge border, float32 256x256x3) and W3 ("flip_with_labels": random left-right flip of
float32 images together with their int32 labels). Results are checked against independent
references: skimage.transform.rotate for W2, and NumPy flips chosen by the counter-based draw
(tests/python/refs.py) for W3. The shared-memory test follows Triton's simple_grpc_shm_client
example step by step, with tritonclient.utils.shared_memory. Malformed requests each get their
gRPC code and a message naming the input.
"""

import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest

import refs

grpcclient = pytest.importorskip("tritonclient.grpc")
shm = pytest.importorskip("tritonclient.utils.shared_memory")
from tritonclient import utils  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

H, W = 256, 256

PIPELINES = {"pipelines": [
    {"name": "rotate30",
     "inputs": [{"name": "IMAGES", "datatype": "FP32", "shape": [-1, H, W, 3]}],
     "outputs": [{"name": "ROTATED", "source": "IMAGES"}],
     "pipeline": {"ops": [{"rotate": {"angleDeg": 30, "interpolation": "INTERPOLATION_BILINEAR",
                                      "border": "BORDER_EDGE"}}]}},
    {"name": "flip_with_labels", "max_batch_size": 64,
     "inputs": [{"name": "IMAGES", "datatype": "FP32", "shape": [-1, H, W, 3]},
                {"name": "LABELS", "datatype": "INT32", "shape": [-1, H, W],
                 "interpolation": "INTERPOLATION_NEAREST"}],
     "outputs": [{"name": "IMAGES_OUT", "source": "IMAGES"},
                 {"name": "LABELS_OUT", "source": "LABELS"}],
     "pipeline": {"ops": [{"randomFlip": {"axis": "FLIP_AXIS_HORIZONTAL", "p": 0.5}}]}},
]}


@pytest.fixture(scope="module")
def kserve_server(start_server, tmp_path_factory):
    path = tmp_path_factory.mktemp("kserve") / "pipelines.json"
    path.write_text(json.dumps(PIPELINES))
    prefix = f"/tensorprep-test-{os.getpid()}-kserve-"
    srv = start_server(pipelines=str(path), shm_prefix=prefix)
    srv.shm_prefix = prefix
    return srv


@pytest.fixture
def client(kserve_server):
    c = grpcclient.InferenceServerClient(kserve_server.address)
    yield c
    c.close()


def images(n, seed):
    return np.random.default_rng(seed).random((n, H, W, 3), dtype=np.float32)


def labels(n, seed):
    return np.random.default_rng(seed).integers(0, 21, (n, H, W), dtype=np.int32)


def server_binary():
    """The binary the fixtures start (as tests/conftest.py finds it; that module is not imported
    by name: tests/metrics has a conftest.py of its own)."""
    return pathlib.Path(os.environ.get(
        "TENSORPREP_SERVER_BIN",
        pathlib.Path(__file__).resolve().parents[2] / "build" / "server" / "tensorprep-server"))


def infer_input(name, array, datatype):
    i = grpcclient.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


def w2_reference(x):
    return np.stack([refs.skimage_rotate(img, 30, "edge") for img in x])


def w3_reference(x, y, seed):
    """The flips the service draws: sample i flips when its uniform draw for op 0 is < 0.5."""
    flip = np.array([refs.uniform(seed, i, 0) < 0.5 for i in range(len(x))])
    return (np.where(flip[:, None, None, None], x[:, :, ::-1], x),
            np.where(flip[:, None, None], y[:, :, ::-1], y), flip)


# --- health and metadata -------------------------------------------------------------------------
def test_health_and_server_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("rotate30")
    assert client.is_model_ready("flip_with_labels", "1")
    assert client.is_model_ready("tensorprep")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "tensorprep"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    assert "system_shared_memory" in meta["extensions"]
    assert "model_configuration" in meta["extensions"]


def test_model_metadata_config_and_index(client):
    meta = client.get_model_metadata("flip_with_labels", as_json=True)
    assert meta["name"] == "flip_with_labels" and meta["versions"] == ["1"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        ("IMAGES", "FP32", [-1, H, W, 3]), ("LABELS", "INT32", [-1, H, W])]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
        ("IMAGES_OUT", "FP32"), ("LABELS_OUT", "INT32")]

    config = client.get_model_config("flip_with_labels", as_json=True)["config"]
    assert config["name"] == "flip_with_labels"
    assert config["max_batch_size"] == 64
    # With a batch limit the dims leave the batch dimension out (Triton's convention).
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("IMAGES", "TYPE_FP32", [H, W, 3]), ("LABELS", "TYPE_INT32", [H, W])]
    assert [(t["name"], t["data_type"]) for t in config["output"]] == [
        ("IMAGES_OUT", "TYPE_FP32"), ("LABELS_OUT", "TYPE_INT32")]
    rot = client.get_model_config("rotate30", as_json=True)["config"]
    assert rot.get("max_batch_size", 0) == 0
    assert [int(d) for d in rot["input"][0]["dims"]] == [-1, H, W, 3]

    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"] for m in index} == {"rotate30", "flip_with_labels", "tensorprep"}
    assert all(m["state"] == "READY" for m in index)

    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("no_such_model")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in e.value.message()


# --- W2 and W3: infer and stream infer -----------------------------------------------------------
def test_w2_infer_matches_skimage(client):
    x = images(3, seed=1)
    result = client.infer("rotate30", [infer_input("IMAGES", x, "FP32")], request_id="w2")
    assert result.get_response().id == "w2"
    assert result.get_response().model_name == "rotate30"
    out = result.get_output("ROTATED")
    assert out.datatype == "FP32" and list(out.shape) == [3, H, W, 3]
    y = result.as_numpy("ROTATED")
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, w2_reference(x), atol=1e-4, rtol=0)


def test_w3_infer_flips_images_and_labels_together(client):
    x, y = images(16, seed=2), labels(16, seed=3)
    seed = 1234
    result = client.infer("flip_with_labels", [infer_input("IMAGES", x, "FP32"),
                                               infer_input("LABELS", y, "INT32")],
                          parameters={"seed": seed})
    got_x, got_y = result.as_numpy("IMAGES_OUT"), result.as_numpy("LABELS_OUT")
    want_x, want_y, flip = w3_reference(x, y, seed)
    assert 0 < flip.sum() < len(flip), "the draws should flip some samples and not others"
    np.testing.assert_array_equal(got_x, want_x)
    np.testing.assert_array_equal(got_y, want_y)
    assert got_y.dtype == np.int32
    # Consistency, independent of the draw: each label follows its own image.
    for i in range(len(x)):
        flipped = np.array_equal(got_x[i], x[i, :, ::-1])
        assert np.array_equal(got_y[i], y[i, :, ::-1] if flipped else y[i])


def test_requested_outputs_are_honoured_in_their_order(client):
    x, y = images(2, seed=4), labels(2, seed=5)
    inputs = [infer_input("IMAGES", x, "FP32"), infer_input("LABELS", y, "INT32")]
    result = client.infer("flip_with_labels", inputs, parameters={"seed": 7},
                          outputs=[grpcclient.InferRequestedOutput("LABELS_OUT")])
    assert [o.name for o in result.get_response().outputs] == ["LABELS_OUT"]
    np.testing.assert_array_equal(result.as_numpy("LABELS_OUT"), w3_reference(x, y, 7)[1])
    result = client.infer("flip_with_labels", inputs, parameters={"seed": 7},
                          outputs=[grpcclient.InferRequestedOutput("LABELS_OUT"),
                                   grpcclient.InferRequestedOutput("IMAGES_OUT")])
    assert [o.name for o in result.get_response().outputs] == ["LABELS_OUT", "IMAGES_OUT"]


def test_stream_infer_w2_and_w3_with_an_error_in_between(client):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        batches = {f"w2-{k}": images(2, seed=10 + k) for k in range(3)}
        for rid, x in batches.items():
            client.async_stream_infer("rotate30", [infer_input("IMAGES", x, "FP32")],
                                      request_id=rid)
        bad = images(1, seed=20)
        client.async_stream_infer("no_such_model", [infer_input("IMAGES", bad, "FP32")],
                                  request_id="bad")
        x3, y3 = images(4, seed=21), labels(4, seed=22)
        client.async_stream_infer("flip_with_labels", [infer_input("IMAGES", x3, "FP32"),
                                                       infer_input("LABELS", y3, "INT32")],
                                  request_id="w3", parameters={"seed": 99})
        got, errors = {}, []
        for _ in range(5):
            result, error = answers.get(timeout=60)
            if error is not None:
                errors.append(error)
            else:
                got[result.get_response().id] = result
        # The failed request is answered with its error and the stream carries on.
        assert len(errors) == 1 and "no_such_model" in errors[0].message()
        assert set(got) == set(batches) | {"w3"}
        for rid, x in batches.items():
            np.testing.assert_allclose(got[rid].as_numpy("ROTATED"), w2_reference(x),
                                       atol=1e-4, rtol=0)
        want_x, want_y, _ = w3_reference(x3, y3, 99)
        np.testing.assert_array_equal(got["w3"].as_numpy("IMAGES_OUT"), want_x)
        np.testing.assert_array_equal(got["w3"].as_numpy("LABELS_OUT"), want_y)
    finally:
        client.stop_stream()


def test_builtin_model_takes_the_pipeline_as_a_parameter(client):
    x = images(2, seed=30)
    y = labels(2, seed=31)
    pipeline = json.dumps([{"flip": {"axis": "FLIP_AXIS_VERTICAL"}},
                           {"multiply": {"value": [2.0]}}])
    result = client.infer("tensorprep", [infer_input("IMAGES", x, "FP32"),
                                         infer_input("LABELS", y, "INT32")],
                          parameters={"pipeline": pipeline})
    np.testing.assert_array_equal(result.as_numpy("IMAGES"), x[:, ::-1] * np.float32(2))
    np.testing.assert_array_equal(result.as_numpy("LABELS"), y[:, ::-1])
    # Every datatype string: UINT8 in, cast to FP32 out; FP16 in and out.
    u8 = np.random.default_rng(32).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    result = client.infer("tensorprep", [infer_input("IMAGES", u8, "UINT8")],
                          parameters={"pipeline": '{"ops": [{"cast": {"dtype": "DTYPE_FLOAT32"}}]}'})
    assert result.get_output("IMAGES").datatype == "FP32"
    np.testing.assert_array_equal(result.as_numpy("IMAGES"), u8.astype(np.float32))
    f16 = np.random.default_rng(33).random((2, 8, 12), dtype=np.float32).astype(np.float16)
    result = client.infer("tensorprep", [infer_input("IMAGES", f16, "FP16")],
                          parameters={"pipeline": '[{"flip": {"axis": "FLIP_AXIS_HORIZONTAL"}}]'})
    assert result.get_output("IMAGES").datatype == "FP16"
    np.testing.assert_array_equal(result.as_numpy("IMAGES"), f16[:, :, ::-1])
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorprep", [infer_input("IMAGES", x, "FP32")])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "parameters.pipeline" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        client.infer("tensorprep", [infer_input("IMAGES", x, "FP32")],
                     parameters={"pipeline": json.dumps([{"rotate": {"angleDeg": "NaN"}}])})
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "pipeline" in e.value.message()


# --- shared memory, as Triton's simple_grpc_shm_client does it ------------------------------------
def test_shared_memory_flow_of_tritons_example(kserve_server, client):
    # To make sure no shared memory regions are registered with the server.
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()

    x, y = images(4, seed=40), labels(4, seed=41)
    input_byte_size = x.nbytes + y.nbytes
    output_byte_size = input_byte_size
    prefix = kserve_server.shm_prefix
    op_handle = shm.create_shared_memory_region("output_data", prefix + "output", output_byte_size)
    try:
        client.register_system_shared_memory("output_data", prefix + "output", output_byte_size)
        ip_handle = shm.create_shared_memory_region("input_data", prefix + "input",
                                                    input_byte_size)
        try:
            shm.set_shared_memory_region(ip_handle, [x])
            shm.set_shared_memory_region(ip_handle, [y], offset=x.nbytes)
            client.register_system_shared_memory("input_data", prefix + "input", input_byte_size)

            inputs = [grpcclient.InferInput("IMAGES", list(x.shape), "FP32"),
                      grpcclient.InferInput("LABELS", list(y.shape), "INT32")]
            inputs[0].set_shared_memory("input_data", x.nbytes)
            inputs[1].set_shared_memory("input_data", y.nbytes, offset=x.nbytes)
            outputs = [grpcclient.InferRequestedOutput("IMAGES_OUT"),
                       grpcclient.InferRequestedOutput("LABELS_OUT")]
            outputs[0].set_shared_memory("output_data", x.nbytes)
            outputs[1].set_shared_memory("output_data", y.nbytes, offset=x.nbytes)
            results = client.infer(model_name="flip_with_labels", inputs=inputs, outputs=outputs,
                                   parameters={"seed": 5})

            # Outputs in shared memory keep their place in raw_output_contents, empty.
            response = results.get_response()
            assert [o.name for o in response.outputs] == ["IMAGES_OUT", "LABELS_OUT"]
            assert list(response.raw_output_contents) == [b"", b""]
            out0 = results.get_output("IMAGES_OUT")
            out1 = results.get_output("LABELS_OUT")
            got_x = shm.get_contents_as_numpy(op_handle, utils.triton_to_np_dtype(out0.datatype),
                                              out0.shape)
            got_y = shm.get_contents_as_numpy(op_handle, utils.triton_to_np_dtype(out1.datatype),
                                              out1.shape, offset=x.nbytes)
            want_x, want_y, _ = w3_reference(x, y, 5)
            np.testing.assert_array_equal(got_x, want_x)
            np.testing.assert_array_equal(got_y, want_y)

            # The same request inline gives the same bytes.
            inline = client.infer("flip_with_labels", [infer_input("IMAGES", x, "FP32"),
                                                       infer_input("LABELS", y, "INT32")],
                                  parameters={"seed": 5})
            np.testing.assert_array_equal(inline.as_numpy("IMAGES_OUT"), got_x)

            status = client.get_system_shared_memory_status(as_json=True)["regions"]
            assert set(status) == {"input_data", "output_data"}
            assert status["input_data"]["key"] == prefix + "input"
            assert int(status["input_data"]["byte_size"]) == input_byte_size
            client.unregister_system_shared_memory()
            assert client.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
            assert len(shm.mapped_shared_memory_regions()) == 2
        finally:
            shm.destroy_shared_memory_region(ip_handle)
    finally:
        shm.destroy_shared_memory_region(op_handle)
    assert len(shm.mapped_shared_memory_regions()) == 0


def test_region_names_are_scoped_to_the_client(kserve_server, client):
    x = images(1, seed=50)
    key = kserve_server.shm_prefix + "scoped"
    handle = shm.create_shared_memory_region("mine", key, x.nbytes)
    # Another connection: gRPC shares one connection between channels of a process that have
    # the same arguments, and a shared connection is one client to the server (docs/kserve.md).
    other = grpcclient.InferenceServerClient(
        kserve_server.address, channel_args=[("grpc.use_local_subchannel_pool", 1)])
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory("mine", key, x.nbytes)
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory("mine", key, x.nbytes)
        assert e.value.status() == "StatusCode.ALREADY_EXISTS"
        # The other client neither sees nor uses the name; it may take the same name itself.
        assert other.get_system_shared_memory_status(as_json=True).get("regions", {}) == {}
        inp = grpcclient.InferInput("IMAGES", list(x.shape), "FP32")
        inp.set_shared_memory("mine", x.nbytes)
        with pytest.raises(InferenceServerException) as e:
            other.infer("rotate30", [inp])
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "'IMAGES'" in e.value.message() and "not registered" in e.value.message()
        other.register_system_shared_memory("mine", key, x.nbytes)
        np.testing.assert_allclose(other.infer("rotate30", [inp]).as_numpy("ROTATED"),
                                   w2_reference(x), atol=1e-4, rtol=0)
        # Unregistering all of one client's regions leaves the other's.
        other.unregister_system_shared_memory()
        assert set(client.get_system_shared_memory_status(as_json=True)["regions"]) == {"mine"}
    finally:
        client.unregister_system_shared_memory()
        other.close()
        shm.destroy_shared_memory_region(handle)


# --- malformed requests --------------------------------------------------------------------------
def _raw_input(name, shape, datatype, raw):
    i = grpcclient.InferInput(name, shape, datatype)
    i._raw_content = raw  # tritonclient checks sizes itself; the server must check them too
    return i


def _bad_requests(prefix):
    x = images(1, seed=60)
    y = labels(1, seed=61)
    good_x = infer_input("IMAGES", x, "FP32")
    good_y = infer_input("LABELS", y, "INT32")
    shm_in = grpcclient.InferInput("IMAGES", list(x.shape), "FP32")
    shm_in.set_shared_memory("never_registered", x.nbytes)
    past_end = grpcclient.InferInput("IMAGES", list(x.shape), "FP32")
    past_end.set_shared_memory("small_region", x.nbytes, offset=64)
    return {
        "unknown model": ("no_such_model", [good_x], "NOT_FOUND", "no_such_model"),
        "wrong datatype": ("rotate30", [_raw_input("IMAGES", list(x.shape), "UINT8",
                                                   x.astype(np.uint8).tobytes())],
                           "INVALID_ARGUMENT", "'IMAGES'"),
        "unsupported datatype": ("rotate30", [_raw_input("IMAGES", list(x.shape), "FP64",
                                                         x.astype(np.float64).tobytes())],
                                 "INVALID_ARGUMENT", "'IMAGES'"),
        "wrong shape": ("rotate30", [_raw_input("IMAGES", [1, H, W - 1, 3], "FP32",
                                                x[:, :, 1:].tobytes())],
                        "INVALID_ARGUMENT", "'IMAGES'"),
        "missing input": ("flip_with_labels", [good_x], "INVALID_ARGUMENT", "'LABELS'"),
        "unknown input": ("rotate30", [good_x, good_y], "INVALID_ARGUMENT", "'LABELS'"),
        "byte size mismatch": ("flip_with_labels",
                               [good_x, _raw_input("LABELS", list(y.shape), "INT32",
                                                   y.tobytes()[:-4])],
                               "INVALID_ARGUMENT", "'LABELS'"),
        "unregistered region": ("rotate30", [shm_in], "INVALID_ARGUMENT", "'IMAGES'"),
        "out-of-range region": ("rotate30", [past_end], "INVALID_ARGUMENT", "'IMAGES'"),
    }


BAD = list(_bad_requests("").keys())


@pytest.mark.parametrize("case", BAD)
def test_malformed_requests_get_their_code_and_name_the_input(kserve_server, client, case):
    x = images(1, seed=60)
    key = kserve_server.shm_prefix + "small"
    handle = shm.create_shared_memory_region("small_region", key, x.nbytes)
    try:
        client.register_system_shared_memory("small_region", key, x.nbytes)
        model, inputs, code, named = _bad_requests(kserve_server.shm_prefix)[case]
        for call in ("unary", "stream"):
            if call == "unary":
                with pytest.raises(InferenceServerException) as e:
                    client.infer(model, inputs)
                assert e.value.status() == f"StatusCode.{code}", (case, e.value.message())
                message = e.value.message()
            else:
                answers = queue.Queue()
                client.start_stream(callback=lambda result, error: answers.put((result, error)))
                try:
                    client.async_stream_infer(model, inputs, request_id="bad")
                    client.async_stream_infer("rotate30", [infer_input("IMAGES", x, "FP32")],
                                              request_id="good")
                    got = [answers.get(timeout=60) for _ in range(2)]
                finally:
                    client.stop_stream()
                errors = [err for _, err in got if err is not None]
                results = [res for res, _ in got if res is not None]
                assert len(errors) == 1 and len(results) == 1, case
                assert results[0].get_response().id == "good"
                message = errors[0].message()
            assert named in message, (case, call, message)
    finally:
        client.unregister_system_shared_memory("small_region")
        shm.destroy_shared_memory_region(handle)
    # The server keeps serving.
    assert client.is_server_ready()


# --- statistics and metrics ----------------------------------------------------------------------
def test_statistics_and_metrics_per_model_and_protocol(kserve_server, client):
    before = client.get_inference_statistics("rotate30", as_json=True)["model_stats"][0]
    x = images(5, seed=70)
    client.infer("rotate30", [infer_input("IMAGES", x, "FP32")])
    after = client.get_inference_statistics("rotate30", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 5
    assert int(after["execution_count"]) - int(before.get("execution_count", 0)) == 1
    ok = after["inference_stats"]["success"]
    assert int(ok["count"]) >= 1 and int(ok["ns"]) > 0
    assert int(after["last_inference"]) > 0

    text = urllib.request.urlopen(
        f"http://127.0.0.1:{kserve_server.metrics_port}/metrics", timeout=10).read().decode()

    def value(series):
        m = re.search(r"^" + re.escape(series) + r" (\S+)$", text, re.M)
        assert m, f"missing {series}"
        return float(m.group(1))

    labels = 'model="rotate30",protocol="kserve_v2"'
    assert value(f'tensorprep_model_requests_total{{code="OK",{labels}}}') >= 1
    assert value(f"tensorprep_model_samples_total{{{labels}}}") >= 5
    assert value(f'tensorprep_requests_total{{code="OK",rpc="ModelInfer"}}') >= 1
    assert value(f'tensorprep_requests_total{{code="NOT_FOUND",rpc="ModelInfer"}}') >= 1
    # tensorprep.v1's series are still there under their own names.
    assert value('tensorprep_requests_total{code="OK",rpc="Process"}') >= 0


# --- start-up and shutdown -----------------------------------------------------------------------
def test_server_refuses_to_start_on_a_bad_pipeline_file(tmp_path):
    bad = json.loads(json.dumps(PIPELINES))
    bad["pipelines"][1]["outputs"][1]["source"] = "MASKS"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    run = subprocess.run([str(server_binary()), "--host", "127.0.0.1", "--port", "0",
                          "--metrics-port", "0", "--pipelines", str(path)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert f"{path}: pipelines[1] 'flip_with_labels': outputs[1].source:" in run.stderr
    assert "'MASKS'" in run.stderr
    assert "ready on" not in run.stdout


def test_not_ready_once_draining(start_server):
    srv = start_server(drain_delay_seconds=30)
    c = grpcclient.InferenceServerClient(srv.address)
    try:
        assert c.is_server_ready() and c.is_model_ready("tensorprep")
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while c.is_server_ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not c.is_server_ready()
        assert c.is_server_live()
        assert not c.is_model_ready("tensorprep")
    finally:
        c.close()
        srv.proc.send_signal(signal.SIGTERM)  # ends the drain delay


def test_bearer_token_is_required_except_for_liveness_and_readiness(start_server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    srv = start_server(auth_token_file=str(token_file))
    c = grpcclient.InferenceServerClient(srv.address)
    x = images(1, seed=80)
    pipeline = '[{"flip": {"axis": "FLIP_AXIS_VERTICAL"}}]'
    try:
        assert c.is_server_live() and c.is_server_ready()
        for call in (lambda h: c.get_model_metadata("tensorprep", headers=h),
                     lambda h: c.infer("tensorprep", [infer_input("IMAGES", x, "FP32")],
                                       parameters={"pipeline": pipeline}, headers=h)):
            with pytest.raises(InferenceServerException) as e:
                call(None)
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as e:
                call({"authorization": "Bearer wrong"})
            assert e.value.status() == "StatusCode.UNAUTHENTICATED"
        result = c.infer("tensorprep", [infer_input("IMAGES", x, "FP32")],
                         parameters={"pipeline": pipeline},
                         headers={"authorization": "Bearer s3cret-token"})
        np.testing.assert_array_equal(result.as_numpy("IMAGES"), x[:, ::-1])
    finally:
        c.close()


def test_stream_answers_many_requests_beyond_its_window(client):
    """More requests than the per-stream window (--stream-inflight, 8): reading pauses and
    resumes as responses are written; every request is answered once, with its own result."""
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = {}
    try:
        for k in range(40):
            x = np.random.default_rng(100 + k).random((2, 16, 24, 3), dtype=np.float32)
            sent[f"r{k}"] = x
            client.async_stream_infer(
                "tensorprep", [infer_input("IMAGES", x, "FP32")], request_id=f"r{k}",
                parameters={"pipeline": '[{"add": {"value": [%d]}}]' % k})
        got = {}
        for _ in range(40):
            result, error = answers.get(timeout=60)
            assert error is None, error
            rid = result.get_response().id
            assert rid not in got
            got[rid] = result.as_numpy("IMAGES")
    finally:
        client.stop_stream()
    assert set(got) == set(sent)
    for rid, x in sent.items():
        np.testing.assert_array_equal(got[rid], x + np.float32(int(rid[1:])))
