"""The shared-memory transport of the Python client.

Offline (no server): the slot allocator, the lifetime of arrays over slots, the request plans and
the client's transport decision against a fake ListOps/RegisterSharedMemory.

Against a real server started with --shm-prefix and --uds: shared-memory results equal inline
results bit for bit (random pipelines with aux tensors, every dtype, unary and stream); the
fallbacks; and hostile references sent through the generated stub, each answered with its code
while the server keeps serving.
"""

import gc
import itertools
import os
import secrets
import socket
import string
import threading

import grpc
import numpy as np
import pytest

import tensorprep as tp
from tensorprep import shm
from tensorprep._stubs import pb, pb_grpc
from tensorprep.wire import as_wire_array

DTYPES = [np.uint8, np.int32, np.float32, np.float16]
MB = 1 << 20


# --- helpers ------------------------------------------------------------------------------------
class FakeRpcError(grpc.RpcError):
    def __init__(self, code, details=""):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class LocalRegistrar:
    """Stands in for the server's registration on this host: checks the object the way the
    server does (its name, its mode, the nonce at its start) and hands out handles."""

    def __init__(self, prefix="/tensorprep-unit-"):
        self.prefix = prefix
        self.handles = {}
        self.unregistered = []
        self.in_use = {}

    def register(self, key, size, nonce):
        assert key.startswith(self.prefix)
        path = shm.object_path(key)
        st = os.stat(path)
        assert st.st_mode & 0o777 == 0o600 and st.st_size == size
        with open(path, "rb") as f:
            assert f.read(len(nonce)) == nonce
        handle = secrets.token_hex(16)
        self.handles[handle] = key
        return handle

    def unregister(self, handle):
        self.unregistered.append(handle)
        del self.handles[handle]

    def status(self, handles):
        return {h: self.in_use.get(h, 0) for h in handles}


def make_pool(initial=1 * MB, max_bytes=4 * MB, max_regions=4):
    reg = LocalRegistrar()
    pool = shm.Pool(reg.prefix, reg.register, reg.unregister, reg.status,
                    initial_bytes=initial, max_bytes=max_bytes, max_regions=max_regions).start()
    return pool, reg


def shm_objects(prefix):
    return [n for n in os.listdir(shm.SHM_DIR) if n.startswith(prefix.lstrip("/"))]


# --- the allocator ------------------------------------------------------------------------------
def test_arena_aligns_reuses_and_coalesces():
    arena = shm.Arena(1024)
    a = arena.alloc(1)
    b = arena.alloc(65)
    c = arena.alloc(64)
    assert (a, b, c) == (0, 64, 192)  # 1 -> 64 bytes, 65 -> 128 bytes, first fit
    assert arena.used == 256
    arena.free(b, 65)
    assert arena.alloc(100) == 64  # the hole is reused
    arena.free(64, 100)
    arena.free(a, 1)
    arena.free(c, 64)
    assert arena.free_blocks() == [(0, 1024)] and arena.used == 0
    with pytest.raises(ValueError, match="double free"):
        arena.free(0, 64)
    assert arena.alloc(1025) is None


def test_arena_random_sequence_never_overlaps_and_coalesces_back():
    rng = np.random.default_rng(3)
    arena = shm.Arena(64 * 1024)
    live = {}
    for _ in range(3000):
        if live and (rng.random() < 0.45 or len(live) > 60):
            off = list(live)[rng.integers(len(live))]
            arena.free(off, live.pop(off))
        else:
            n = int(rng.integers(1, 3000))
            off = arena.alloc(n)
            if off is None:
                assert arena.largest_free() < shm.Arena.round_up(n)
                continue
            assert off % shm.ALIGN == 0 and off + n <= arena.size
            for o, m in live.items():  # against every live block
                assert off + shm.Arena.round_up(n) <= o or o + shm.Arena.round_up(m) <= off
            live[off] = n
        assert arena.used == sum(shm.Arena.round_up(m) for m in live.values())
    for off, n in list(live.items()):
        arena.free(off, n)
    assert arena.free_blocks() == [(0, arena.size)]


def test_pool_grows_to_its_caps_then_says_why():
    pool, reg = make_pool(initial=1 * MB, max_bytes=3 * MB, max_regions=4)
    try:
        assert shm_objects(reg.prefix) == []  # unlinked right after registration
        slots, reason = pool.alloc_many([MB // 2, MB // 2])
        assert reason is None and pool.region_count() == 1
        big, reason = pool.alloc_many([int(1.5 * MB)])  # does not fit: a second region of 2 MB
        assert reason is None and pool.region_count() == 2 and pool.mapped() == 3 * MB
        none, reason = pool.alloc_many([MB // 4, MB])  # all or nothing
        assert none is None and "pool is full" in reason and "3.0 MB in 2 regions" in reason
        assert pool.in_use() == 2 * MB + int(1.5 * MB) - MB  # nothing of the refused pair kept
        pool.free(slots)
        again, reason = pool.alloc_many([MB])
        assert reason is None and again[0].region is slots[0].region
        assert len(reg.handles) == 2 and shm_objects(reg.prefix) == []
    finally:
        pool.close()
    assert reg.handles == {} and len(reg.unregistered) == 2


def test_pool_threads_get_disjoint_slots():
    pool, _ = make_pool(initial=4 * MB, max_bytes=4 * MB)
    errors = []

    def worker(k):
        rng = np.random.default_rng(k)
        for i in range(200):
            n = int(rng.integers(1, 20000))
            slots, reason = pool.alloc_many([n])
            if slots is None:
                continue
            view = pool.scratch(slots[0], (n,), np.uint8)
            view[:] = (k * 7 + i) % 251
            if not (view == (k * 7 + i) % 251).all():
                errors.append((k, i))
            del view
            pool.free(slots)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and pool.in_use() == 0
    pool.close()


# --- lifetime -----------------------------------------------------------------------------------
def test_array_and_views_keep_their_slot_until_collected():
    pool, _ = make_pool()
    slots, _ = pool.alloc_many([4 * 6 * 4])
    arr, _ = pool.array(slots[0], (4, 6), np.float32)
    arr[...] = np.arange(24, dtype=np.float32).reshape(4, 6)
    assert arr.flags.writeable and pool.in_use() == 128
    view = arr[1:, ::2].T
    del arr
    gc.collect()
    assert pool.in_use() == 128  # the view holds the slot
    np.testing.assert_array_equal(view, np.arange(24, dtype=np.float32).reshape(4, 6)[1:, ::2].T)
    del view
    assert pool.in_use() == 0
    pool.close()


def test_arrays_stay_valid_after_close():
    pool, reg = make_pool()
    a = pool.empty((1000,), np.int32)
    a[:] = np.arange(1000)
    pool.close()
    assert reg.handles == {}
    assert int(a.sum()) == 999 * 1000 // 2  # still mapped: the array holds the map
    a[0] = 5
    del a
    gc.collect()


def test_quarantined_slots_return_only_when_the_region_is_idle():
    pool, reg = make_pool(initial=1 * MB, max_bytes=1 * MB, max_regions=1)
    slots, _ = pool.alloc_many([MB])
    handle = slots[0].region.handle
    pool.quarantine(slots)
    reg.in_use[handle] = 1  # the server still runs the abandoned request
    none, reason = pool.alloc_many([MB])
    assert none is None and "full" in reason and pool.quarantined() == 1
    reg.in_use[handle] = 0
    again, reason = pool.alloc_many([MB])
    assert reason is None and pool.quarantined() == 0
    pool.close()


def test_locate_finds_pool_arrays_only():
    pool, _ = make_pool()
    a = pool.empty((10, 8), np.float32)
    region, off = pool.locate(a)
    assert pool.locate(a[2:]) == (region, off + 2 * 8 * 4)
    assert pool.locate(a[:, 1:]) is None  # not contiguous
    assert pool.locate(np.zeros((10, 8), np.float32)) is None
    assert pool.locate(a.reshape(-1).view(np.uint8)[1:9].view(np.int32)) is None  # misaligned
    pool.close()


# --- request plans ------------------------------------------------------------------------------
def _fake_server_response(pool, plan, compute):
    """What a server would answer: writes compute(input) into each output slot."""
    resp = pb.ProcessResponse(request_id="r", device=pb.DEVICE_CPU)
    inputs = [plan.images] + [a for _, a, _, _ in plan.aux_items]
    tensors = [resp.images] + [resp.aux.add(name=n).tensor for n, _, _, _ in plan.aux_items]
    for arr, slot, dtype, t in zip(inputs, plan.out_slots, plan.out_dtypes, tensors):
        out = compute(arr).astype(dtype)
        view = pool.scratch(slot, out.shape, out.dtype)
        view[...] = out
        del view
        t.dtype = tp.ops.dtype_enum(dtype)
        t.shape.extend(out.shape)
        t.shm.CopyFrom(slot.ref(pb.SharedMemoryRef, out.nbytes))
    return resp


def test_plan_copies_inputs_once_and_returns_arrays_over_outputs():
    pool, _ = make_pool()
    rng = np.random.default_rng(0)
    images = as_wire_array((rng.random((3, 5, 4, 3)) * 200).astype(np.uint8))
    labels = pool.empty((3, 5, 4), np.int32)  # already in the pool: sent where it lies
    labels[...] = rng.integers(0, 9, labels.shape)
    aux = [("labels", labels, pb.INTERPOLATION_NEAREST, 0.0)]
    pipeline = tp.as_pipeline([tp.flip(), tp.cast("float16")])
    plan, reason = shm.plan_request(pool, images, aux, pipeline)
    assert reason is None and len(plan.copied) == 1 and plan.out_dtypes[0] == np.float16
    msg = pb.ProcessRequest.FromString(plan.message(pipeline, request_id="r", device=0, seed=1,
                                                    sample_offset=0))
    assert msg.images.data == b"" and msg.images.shm.byte_size == images.nbytes
    assert msg.images_output.byte_size == images.size * 2
    (a,) = msg.aux
    region, off = pool.locate(labels)
    assert (a.tensor.shm.region, a.tensor.shm.offset) == (region.handle, off)
    assert a.output.byte_size == labels.nbytes
    copied = pool.scratch(plan.copied[0], images.shape, images.dtype)
    np.testing.assert_array_equal(copied, images)
    del copied
    resp = _fake_server_response(pool, plan, lambda x: x[:, :, ::-1])
    out, outs = plan.result(resp)
    assert out.dtype == np.float16 and out.flags.writeable
    np.testing.assert_array_equal(out, images[:, :, ::-1].astype(np.float16))
    np.testing.assert_array_equal(outs["labels"], labels[:, :, ::-1])
    del out, outs, labels, aux, plan
    assert pool.in_use() == 0
    pool.close()


def test_plan_copy_result_frees_slots_at_once():
    pool, _ = make_pool()
    images = as_wire_array(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    pipeline = tp.as_pipeline([tp.add(1)])
    plan, _ = shm.plan_request(pool, images, [], pipeline)
    out, _ = plan.result(_fake_server_response(pool, plan, lambda x: x + 1), copy=True)
    assert pool.in_use() == 0 and out.flags.owndata
    np.testing.assert_array_equal(out, images + 1)
    pool.close()


def test_plan_rejects_a_response_naming_other_memory_and_frees_everything():
    pool, _ = make_pool()
    images = as_wire_array(np.zeros((2, 4, 4), np.float32))
    plan, _ = shm.plan_request(pool, images, [], tp.as_pipeline([tp.add(1)]))
    resp = _fake_server_response(pool, plan, lambda x: x)
    resp.images.shm.offset += 64
    with pytest.raises(ValueError, match="other than the request's output"):
        plan.result(resp)
    assert pool.in_use() == 0
    pool.close()


def test_plan_falls_back_when_the_pool_is_full():
    pool, _ = make_pool(initial=1 * MB, max_bytes=1 * MB, max_regions=1)
    images = as_wire_array(np.zeros((1, 512, 512), np.float32))  # 1 MB in + 1 MB out
    plan, reason = shm.plan_request(pool, images, [], tp.as_pipeline([tp.add(1)]))
    assert plan is None and "pool is full" in reason and pool.in_use() == 0
    pool.close()


def test_result_dtype_follows_casts_only():
    p = tp.as_pipeline([tp.cast("float32"), tp.divide(255), tp.cast("uint8"), tp.flip()])
    assert shm.result_dtype(p, np.float16) == np.uint8
    assert shm.result_dtype(tp.as_pipeline([tp.rotate(3)]), np.int32) == np.int32


# --- the transport decision, against a fake server ----------------------------------------------
class FakeStub:
    def __init__(self, enabled=True, register_error=None, list_error=None):
        self.enabled = enabled
        self.register_error = register_error
        self.list_error = list_error
        self.reg = LocalRegistrar("/tensorprep-fake-")
        self.calls = []

    def ListOps(self, req, timeout=None, metadata=None):
        self.calls.append("ListOps")
        if self.list_error is not None:
            raise self.list_error
        return pb.ListOpsResponse(shared_memory=pb.SharedMemoryInfo(
            enabled=self.enabled, key_prefix=self.reg.prefix if self.enabled else "",
            max_regions_per_client=4, max_mapped_bytes=64 * MB))

    def RegisterSharedMemory(self, req, timeout=None, metadata=None):
        self.calls.append("Register")
        if self.register_error is not None:
            raise self.register_error
        assert req.offset == 0 and len(req.expect_prefix) == shm.NONCE_BYTES
        return pb.RegisterSharedMemoryResponse(
            region=self.reg.register(req.key, req.byte_size, req.expect_prefix),
            byte_size=req.byte_size)

    def UnregisterSharedMemory(self, req, timeout=None, metadata=None):
        self.calls.append("Unregister")
        self.reg.unregister(req.region)
        return pb.UnregisterSharedMemoryResponse()

    def SharedMemoryStatus(self, req, timeout=None, metadata=None):
        return pb.SharedMemoryStatusResponse()


def fake_client(stub, **kw):
    client = tp.Client("127.0.0.1:9", metrics=False, shm_pool_mb=1, **kw)
    client._stub = stub
    return client


def test_decision_shm_when_the_server_sees_our_memory():
    stub = FakeStub()
    client = fake_client(stub)
    assert client.transport is None
    assert client.connect() is client
    assert (client.transport, client.shm_reason) == ("shm", None)
    assert stub.calls == ["ListOps", "Register"]
    assert shm_objects(stub.reg.prefix) == []  # unlinked after registration
    buf = client.empty((4, 16), np.float32)
    assert client._pool.locate(buf) is not None
    assert client.shm_stats["regions"] == 1 and client.shm_stats["in_use_bytes"] == 256
    client.close()
    assert stub.calls[-1] == "Unregister" and stub.reg.handles == {}
    buf[...] = 1  # still mapped


def test_decision_inline_when_shm_is_off_asks_nothing():
    stub = FakeStub()
    client = fake_client(stub, shm=False)
    assert client.transport == "inline" and "shm=False" in client.shm_reason
    client.connect()
    arr = client.empty((2, 3), np.uint8)
    assert stub.calls == [] and arr.shape == (2, 3) and client.shm_stats is None
    client.close()


def test_decision_inline_when_the_server_has_it_disabled():
    client = fake_client(FakeStub(enabled=False))
    client.connect()
    assert client.transport == "inline" and client.shm_reason == (
        "the server has shared memory disabled")
    client.close()
    with pytest.raises(tp.FailedPreconditionError, match="disabled"):
        fake_client(FakeStub(enabled=False), shm=True).connect()


@pytest.mark.parametrize("code,words", [
    (grpc.StatusCode.NOT_FOUND, "another host"),
    (grpc.StatusCode.FAILED_PRECONDITION, "does not see"),
    (grpc.StatusCode.PERMISSION_DENIED, "name"),
    (grpc.StatusCode.UNIMPLEMENTED, "does not support"),
])
def test_decision_inline_when_registration_is_refused(code, words):
    stub = FakeStub(register_error=FakeRpcError(code, "no"))
    client = fake_client(stub)
    client.connect()
    assert client.transport == "inline" and words in client.shm_reason
    assert code.name in client.shm_reason
    client.close()
    assert shm_objects(stub.reg.prefix) == []  # the refused object is gone too
    with pytest.raises(tp.FailedPreconditionError, match=words):
        fake_client(FakeStub(register_error=FakeRpcError(code, "no")), shm=True).connect()


def test_decision_waits_for_a_server_that_cannot_be_asked():
    stub = FakeStub(list_error=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down"))
    client = fake_client(stub)
    client._decide(None)
    assert client.transport is None  # undecided: the next call asks again
    with pytest.raises(tp.UnavailableError):
        client.connect()
    stub.list_error = None
    client.connect()
    assert client.transport == "shm"
    client.close()
    with pytest.raises(tp.UnavailableError):
        fake_client(FakeStub(list_error=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down")),
                    shm=True).connect()


def test_decision_inline_when_the_address_reaches_several_servers(monkeypatch):
    stub = FakeStub()
    client = fake_client(stub)
    client.address = "127.0.0.1:9,127.0.0.1:10"
    client.connect()
    assert client.transport == "inline" and "several servers" in client.shm_reason
    assert stub.calls == []  # not even asked
    client.close()
    from tensorprep import client as client_mod
    assert client_mod._several_servers("unix:/some/socket") is None
    assert client_mod._several_servers("127.0.0.1:50051") is None
    assert client_mod._several_servers("localhost:50051") is None  # loopback, however many
    real = socket.getaddrinfo

    def two_hosts(host, port, *a, **kw):  # documentation addresses (RFC 5737), not this machine
        if host == "svc.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 50051)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.2", 50051))]
        return real(host, port, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", two_hosts)
    assert "several" in client_mod._several_servers("dns:///svc.example:50051")
    assert client_mod._several_servers("dns:///localhost:50051") is None


def test_shm_argument_is_checked():
    with pytest.raises(ValueError, match="shm must be"):
        tp.Client("127.0.0.1:9", shm="yes")
    with pytest.raises(ValueError, match="shm_pool_mb"):
        tp.Client("127.0.0.1:9", shm_pool_mb=64, shm_max_mb=32)


# --- against a real server ----------------------------------------------------------------------
def _random_pipeline(rng, dtype):
    ops = []
    for _ in range(int(rng.integers(1, 5))):
        kind = rng.choice(["rotate", "flip", "random_flip", "random_rotate", "add", "multiply",
                           "clamp"])
        if kind == "rotate":
            ops.append(tp.rotate(float(rng.uniform(-180, 180)),
                                 interpolation=str(rng.choice(["nearest", "bilinear"])),
                                 border=str(rng.choice(["constant", "edge", "reflect",
                                                        "reflect_101", "wrap"])),
                                 fill=float(rng.integers(0, 5))))
        elif kind == "flip":
            ops.append(tp.flip(str(rng.choice(["horizontal", "vertical"]))))
        elif kind == "random_flip":
            ops.append(tp.random_flip(0.5, str(rng.choice(["horizontal", "vertical"]))))
        elif kind == "random_rotate":
            ops.append(tp.random_rotate(float(rng.uniform(1, 90)),
                                        interpolation=str(rng.choice(["nearest", "bilinear"]))))
        elif kind == "add":
            ops.append(tp.add(float(rng.integers(-3, 4))))
        elif kind == "multiply":
            ops.append(tp.multiply(float(rng.integers(1, 4))))
        else:
            ops.append(tp.clamp(0, 100))
    if rng.random() < 0.5:
        ops.append(tp.cast(str(np.dtype(DTYPES[int(rng.integers(len(DTYPES)))]))))
    return ops


def _random_batch(rng, dtype, n, h, w, c):
    shape = (n, h, w) if c == 0 else (n, h, w, c)
    if np.dtype(dtype).kind == "f":
        images = (rng.random(shape) * 100).astype(dtype)
    else:
        images = rng.integers(0, 200, shape).astype(dtype)
    labels = rng.integers(0, 21, (n, h, w)).astype(np.int32)
    mask = rng.integers(0, 2, (n, h, w)).astype(np.uint8)
    return images, {"labels": labels,
                    "mask": tp.AuxInput(mask, interpolation="nearest", fill=1)}


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8),
                                  np.ascontiguousarray(b).view(np.uint8))


def _outcome(client, images, pipeline, aux, seed):
    try:
        return client.call(images, pipeline, aux=aux, seed=seed)
    except tp.TensorprepError as e:
        return e.code


def assert_serving(address):
    with tp.Client(address, shm=False, metrics=False, timeout=30) as c:
        x = np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3)
        np.testing.assert_array_equal(c.process(x, [tp.flip()]), x[:, :, ::-1])


@pytest.fixture(scope="module")
def clients(shm_server):
    with tp.Client(shm_server.uds_address, shm=True, metrics=False, timeout=60) as s, \
            tp.Client(shm_server.address, shm=False, metrics=False, timeout=60) as i:
        yield s, i


def test_same_host_client_picks_shared_memory(shm_server):
    with tp.Client(shm_server.address, metrics=False, timeout=60) as client:
        client.connect()
        assert (client.transport, client.shm_reason) == ("shm", None)
        x = np.ones((2, 8, 8, 3), np.float32)
        y = np.zeros((2, 8, 8), np.int32)
        res = client.call(x, [tp.flip()], labels=y)
        assert res.transport == "shm" and res.transport_reason is None
        assert res.transfer == {"inline_bytes_in": 0, "inline_bytes_out": 0,
                                "shm_bytes_in": x.nbytes + y.nbytes,
                                "shm_bytes_out": x.nbytes + y.nbytes}
    assert shm_objects(shm_server.shm_prefix) == []


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_unary_shm_equals_inline_bit_for_bit(clients, dtype):
    via_shm, inline = clients
    rng = np.random.default_rng(100 + DTYPES.index(dtype))
    for case in range(6):
        n, h, w = int(rng.integers(1, 4)), int(rng.integers(1, 20)), int(rng.integers(1, 20))
        images, aux = _random_batch(rng, dtype, n, h, w, int(rng.choice([0, 1, 3, 4])))
        pipeline = _random_pipeline(rng, dtype)
        seed = int(rng.integers(0, 2**63))
        a = _outcome(via_shm, images, pipeline, aux, seed)
        b = _outcome(inline, images, pipeline, aux, seed)
        if not isinstance(a, tp.Result):
            assert a == b, (case, pipeline)
            continue
        assert a.transport == "shm" and b.transport == "inline"
        _same_bits(a.images, b.images)
        assert list(a.aux) == ["labels", "mask"] == list(b.aux)
        for name in a.aux:
            _same_bits(a.aux[name], b.aux[name])
        assert a.transfer["inline_bytes_in"] == 0 and a.transfer["shm_bytes_out"] > 0
        assert b.transfer["shm_bytes_in"] == 0 and b.transfer["inline_bytes_out"] > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_stream_shm_equals_inline_bit_for_bit(clients, dtype):
    via_shm, inline = clients
    rng = np.random.default_rng(200 + DTYPES.index(dtype))
    batches = [_random_batch(rng, dtype, int(rng.integers(1, 5)), 12, 10, 3)
               for _ in range(7)]
    pipeline = [tp.random_rotate(30, interpolation="bilinear"), tp.random_flip(0.5),
                tp.add(2)]
    got = list(via_shm.stream(batches, pipeline, inflight=3, seed=9, full=True))
    want = list(inline.stream(batches, pipeline, inflight=3, seed=9, full=True))
    assert len(got) == len(want) == 7
    for g, w in zip(got, want):
        assert g.transport == "shm" and w.transport == "inline"
        _same_bits(g.images, w.images)
        for name in ("labels", "mask"):
            _same_bits(g.aux[name], w.aux[name])


def test_stream_holds_at_most_inflight_batches_of_slots(clients):
    via_shm, _ = clients
    x = np.ones((4, 32, 32, 3), np.float32)
    base = via_shm.shm_stats["in_use_bytes"]
    peak = []

    def batches():
        for _ in range(10):
            peak.append(via_shm.shm_stats["in_use_bytes"] - base)
            yield x

    for out in via_shm.stream(batches(), [tp.add(1)], inflight=2):
        np.testing.assert_array_equal(out, x + 1)
        del out
    # Each batch: one input copy and one output slot. In flight at most 2, plus the one the
    # consumer holds, plus the one being read.
    assert max(peak) <= 4 * 2 * x.nbytes
    assert via_shm.shm_stats["in_use_bytes"] == base


def test_pool_arrays_are_sent_where_they_lie(clients):
    via_shm, inline = clients
    buf = via_shm.empty((3, 16, 16, 3), np.float32)
    buf[...] = np.random.default_rng(1).random(buf.shape)
    pipeline = tp.as_pipeline([tp.rotate(17, border="edge")])
    plan, _ = shm.plan_request(via_shm._pool, as_wire_array(buf), [], pipeline)
    assert plan.copied == []  # nothing to copy: the request names buf's own slot
    plan.discard()
    out = via_shm.process(buf, pipeline)
    _same_bits(out, inline.process(buf, pipeline))
    # A result is in the pool too: chained calls copy nothing.
    again = via_shm.process(out, [tp.flip()])
    _same_bits(again, inline.process(np.array(out), [tp.flip()]))


def test_result_lifetime_and_copy(clients):
    via_shm, _ = clients
    gc.collect()
    base = via_shm.shm_stats["in_use_bytes"]
    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    out = via_shm.process(x, [tp.add(1)])
    assert out.flags.writeable and via_shm.shm_stats["in_use_bytes"] == base + x.nbytes
    view = out[1]
    del out
    gc.collect()
    assert via_shm.shm_stats["in_use_bytes"] == base + x.nbytes  # the view keeps it
    np.testing.assert_array_equal(view, x[1] + 1)
    del view
    assert via_shm.shm_stats["in_use_bytes"] == base
    owned = via_shm.process(x, [tp.add(1)], copy=True)
    assert owned.flags.owndata and via_shm.shm_stats["in_use_bytes"] == base
    streamed = list(via_shm.stream([x, x], [tp.add(1)], copy=True))
    assert all(s.flags.owndata for s in streamed)
    assert via_shm.shm_stats["in_use_bytes"] == base


def test_threads_sharing_a_client_get_their_own_results(shm_server):
    errors = []
    with tp.Client(shm_server.uds_address, shm=True, metrics=False, timeout=60) as c:
        def worker(k):
            rng = np.random.default_rng(k)
            for i in range(8):
                x = rng.integers(0, 100, (2, 16, 12, 3)).astype(np.int32)
                y = rng.integers(0, 9, (2, 16, 12)).astype(np.uint8)
                out, labels = c.process(x, [tp.flip("vertical"), tp.add(k)], labels=y)
                if not (np.array_equal(out, x[:, ::-1] + k)
                        and np.array_equal(labels, y[:, ::-1])):
                    errors.append((k, i))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        gc.collect()
        assert c.shm_stats["in_use_bytes"] == 0


def test_a_call_that_does_not_fit_goes_inline(shm_server):
    x = np.ones((1, 512, 1024), np.float32)  # 2 MB in and 2 MB out
    with tp.Client(shm_server.uds_address, metrics=False, shm_pool_mb=1, shm_max_mb=1) as c:
        res = c.call(x, [tp.add(1)])
        assert c.transport == "shm"
        assert res.transport == "inline" and "pool is full" in res.transport_reason
        np.testing.assert_array_equal(res.images, x + 1)
        small = c.call(x[:, :64], [tp.add(1)])
        assert small.transport == "shm"
    with tp.Client(shm_server.uds_address, metrics=False, shm=True, shm_pool_mb=1,
                   shm_max_mb=1) as c:
        with pytest.raises(tp.ResourceExhaustedError, match="pool is full"):
            c.call(x, [tp.add(1)])
        assert c.process(x[:, :64], [tp.add(1)]).shape == (1, 64, 1024)


def test_slots_of_an_abandoned_stream_come_back_once_the_server_is_done(shm_server):
    x = np.ones((1, 128, 256), np.float32)  # 128 KB in and out: 4 batches fill a 1 MB pool
    with tp.Client(shm_server.uds_address, metrics=False, shm_pool_mb=1, shm_max_mb=1) as c:
        gen = c.stream(itertools.repeat(x), [tp.add(1)], inflight=3)
        next(gen)
        gen.close()  # requests still on the wire: their slots are quarantined, not reused
        assert c.transport == "shm"
        # Once the server reports the region idle the pool takes them back (checked when the
        # pool runs short); a call needing most of the pool then fits again.
        whole = np.ones((1, 256, 448), np.float32)
        for _ in range(200):  # bounded: each try is one call
            if c.call(whole, [tp.add(1)]).transport == "shm":
                break
        else:
            pytest.fail("quarantined slots never came back")
        assert c.shm_stats["quarantined_slots"] == 0


def test_client_recovers_when_the_server_restarts(start_server, tmp_path):
    """A restarted server knows none of the client's regions: the call that meets NOT_FOUND
    registers afresh and is sent again, on shared memory."""
    sock = tmp_path / "restart.sock"
    prefix = f"/tensorprep-test-{os.getpid()}-r-"
    first = start_server(shm_prefix=prefix, uds=str(sock))
    x = np.arange(12, dtype=np.float32).reshape(1, 2, 2, 3)
    with tp.Client(f"unix:{sock}", metrics=False, timeout=30) as c:
        assert c.call(x, [tp.add(1)]).transport == "shm"
        assert first.stop() == 0
        start_server(shm_prefix=prefix, uds=str(sock))
        c.wait_ready(30)
        res = c.call(x, [tp.add(1)])
        assert res.transport == "shm" and c.transport == "shm"
        np.testing.assert_array_equal(res.images, x + 1)


def test_server_with_shm_disabled(server):
    with tp.Client(server.address, metrics=False, timeout=30) as c:
        res = c.call(np.ones((1, 4, 4), np.float32), [tp.add(1)])
        assert c.transport == "inline" and "disabled" in c.shm_reason
        assert res.transport == "inline" and "disabled" in res.transport_reason
    with tp.Client(server.address, metrics=False, shm=True) as c:
        with pytest.raises(tp.FailedPreconditionError, match="disabled"):
            c.call(np.ones((1, 4, 4), np.float32), [tp.add(1)])
    # Through the stub: registration and references are FAILED_PRECONDITION.
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.PreprocessorStub(channel)
        obj = RawObject("/tensorprep-off-", 4096)
        try:
            with pytest.raises(grpc.RpcError) as e:
                stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
                    key=obj.key, byte_size=obj.size, expect_prefix=obj.nonce), timeout=30)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert obj.key not in e.value.details()
        finally:
            obj.close()
        with pytest.raises(grpc.RpcError) as e:
            stub.Process(_request("0" * 32, 0, 64, 128), timeout=30)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert_serving(server.address)


# --- hostile references through the generated stub ---------------------------------------------
class RawObject:
    """A shared-memory object made by hand (for the hostile cases): ``fd`` kept open."""

    def __init__(self, prefix, size):
        self.key = shm.new_key(prefix)
        self.size = size
        self.fd, self.mm = shm.create_object(self.key, size)
        self.nonce = secrets.token_bytes(shm.NONCE_BYTES)
        self.mm[:len(self.nonce)] = self.nonce

    def unlink(self):
        try:
            os.unlink(shm.object_path(self.key))
        except FileNotFoundError:
            pass

    def close(self):
        self.unlink()
        try:
            self.mm.close()
        except BufferError:
            pass
        os.close(self.fd)


def _request(handle, in_off, out_off, size, n=1, h=4, w=4, rid="hostile"):
    """A float32 (n, h, w) add-1 request with input and output in region ``handle``."""
    req = pb.ProcessRequest(request_id=rid, pipeline=tp.as_pipeline([tp.add(1)]))
    req.images.dtype = pb.DTYPE_FLOAT32
    req.images.shape.extend([n, h, w])
    req.images.shm.CopyFrom(pb.SharedMemoryRef(region=handle, offset=in_off, byte_size=size))
    req.images_output.CopyFrom(pb.SharedMemoryRef(region=handle, offset=out_off, byte_size=size))
    return req


@pytest.fixture(scope="module")
def raw(shm_server):
    """(stub, registered RawObject, handle) on the shm server."""
    channel = grpc.insecure_channel(shm_server.address)
    stub = pb_grpc.PreprocessorStub(channel)
    obj = RawObject(shm_server.shm_prefix, 1 * MB)
    resp = stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
        key=obj.key, byte_size=obj.size, expect_prefix=obj.nonce, name="hostile"), timeout=30)
    obj.unlink()
    assert resp.byte_size == obj.size and resp.region and obj.key not in resp.region
    yield stub, obj, resp.region
    try:
        stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(region=resp.region),
                                    timeout=30)
    except grpc.RpcError:
        pass
    obj.close()
    channel.close()


def _code(fn):
    with pytest.raises(grpc.RpcError) as e:
        fn()
    return e.value.code(), e.value.details()


def test_raw_references_work(raw, shm_server):
    stub, obj, handle = raw
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    view = np.frombuffer(obj.mm, np.float32, 16, 4096).reshape(1, 4, 4)
    view[...] = x
    resp = stub.Process(_request(handle, 4096, 8192, 64), timeout=30)
    assert resp.images.shm.offset == 8192 and resp.images.data == b""
    np.testing.assert_array_equal(np.frombuffer(obj.mm, np.float32, 16, 8192), x.ravel() + 1)
    del view


def test_unknown_and_guessed_handles_are_not_found(raw, shm_server):
    stub, obj, handle = raw
    alphabet = (string.hexdigits[:16] if all(ch in string.hexdigits for ch in handle)
                else string.ascii_letters + string.digits + "-_")
    guessed = "".join(secrets.choice(alphabet) for _ in handle)
    for bad in ("no-such-region", guessed):
        code, details = _code(lambda: stub.Process(_request(bad, 4096, 8192, 64), timeout=30))
        assert code == grpc.StatusCode.NOT_FOUND, details
        code, _ = _code(lambda: stub.UnregisterSharedMemory(
            pb.UnregisterSharedMemoryRequest(region=bad), timeout=30))
        assert code == grpc.StatusCode.NOT_FOUND
    assert_serving(shm_server.address)


@pytest.mark.parametrize("in_off,out_off,size,why", [
    (MB - 32, 4096, 64, "input past the end"),
    (4096, MB, 64, "output past the end"),
    (2**64 - 64, 4096, 64, "input offset overflows"),
    (4096, 2**64 - 32, 64, "output offset overflows"),
    (4098, 8192, 64, "misaligned input"),
    (4096, 8192, 60, "wrong input size"),
    (4096, 4096 + 32, 64, "output overlaps input"),
    (4096, 4096, 64, "output is the input"),
])
def test_bad_ranges_are_invalid_argument(raw, shm_server, in_off, out_off, size, why):
    stub, obj, handle = raw
    req = _request(handle, in_off, out_off, size)
    if why == "wrong input size":
        req.images_output.byte_size = 64
    code, details = _code(lambda: stub.Process(req, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (why, details)
    assert obj.key not in details and shm_server.shm_prefix not in details
    assert_serving(shm_server.address)


def test_aux_output_overlapping_the_images_output_is_invalid(raw, shm_server):
    stub, obj, handle = raw
    req = _request(handle, 4096, 8192, 64)
    aux = req.aux.add(name="labels")
    aux.tensor.dtype = pb.DTYPE_FLOAT32
    aux.tensor.shape.extend([1, 4, 4])
    aux.tensor.shm.CopyFrom(pb.SharedMemoryRef(region=handle, offset=12288, byte_size=64))
    aux.output.CopyFrom(pb.SharedMemoryRef(region=handle, offset=8192 + 32, byte_size=64))
    code, details = _code(lambda: stub.Process(req, timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert_serving(shm_server.address)


def test_registration_is_checked(shm_server, raw):
    stub, _, _ = raw
    outside = RawObject("/tensorprep-elsewhere-", 4096)  # exists, but not under the prefix
    try:
        code, details = _code(lambda: stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
            key=outside.key, byte_size=4096, expect_prefix=outside.nonce), timeout=30))
        assert code == grpc.StatusCode.PERMISSION_DENIED and outside.key not in details
    finally:
        outside.close()
    missing = shm.new_key(shm_server.shm_prefix)
    code, details = _code(lambda: stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
        key=missing, byte_size=4096), timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND and missing not in details
    inside = RawObject(shm_server.shm_prefix, 4096)
    try:
        code, _ = _code(lambda: stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
            key=inside.key, byte_size=4096, expect_prefix=b"not what is there"), timeout=30))
        assert code == grpc.StatusCode.FAILED_PRECONDITION  # not the memory we wrote
        code, _ = _code(lambda: stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
            key=inside.key, byte_size=8192, expect_prefix=inside.nonce), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT  # larger than the object
    finally:
        inside.close()
    assert shm_objects(shm_server.shm_prefix) == []
    assert_serving(shm_server.address)


def test_truncated_object_fails_its_requests_and_the_server_keeps_serving(shm_server):
    with grpc.insecure_channel(shm_server.address) as channel:
        stub = pb_grpc.PreprocessorStub(channel)
        obj = RawObject(shm_server.shm_prefix, 1 * MB)
        try:
            handle = stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
                key=obj.key, byte_size=obj.size, expect_prefix=obj.nonce), timeout=30).region
            obj.unlink()
            stub.Process(_request(handle, 4096, 8192, 64), timeout=30)  # fine before
            os.ftruncate(obj.fd, 0)  # from here on neither side may touch the map
            for _ in range(2):
                code, details = _code(
                    lambda: stub.Process(_request(handle, 4096, 8192, 64), timeout=30))
                assert code == grpc.StatusCode.FAILED_PRECONDITION, details
                assert_serving(shm_server.address)
            status = stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest(regions=[handle]),
                                             timeout=30)
            assert status.regions[0].broken
            stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(region=handle),
                                        timeout=30)
        finally:
            obj.close()
    assert_serving(shm_server.address)
    # A fresh client still gets shared memory.
    with tp.Client(shm_server.uds_address, shm=True, metrics=False) as c:
        np.testing.assert_array_equal(c.process(np.ones((1, 3, 3), np.uint8), [tp.add(1)]),
                                      np.full((1, 3, 3), 2, np.uint8))


def test_unregister_while_a_stream_is_in_flight(shm_server):
    """Requests that were running when their region was unregistered finish correctly; later
    ones naming the handle are NOT_FOUND; the server keeps serving."""
    n, h, w, c = 16, 256, 256, 3  # slow enough to be seen in use
    nbytes = n * h * w * c * 4
    rng = np.random.default_rng(4)
    x = rng.random((n, h, w, c), dtype=np.float32)
    pipeline = tp.as_pipeline([tp.rotate(30, border="edge"), tp.normalize(0.5, 0.25)])
    with tp.Client(shm_server.address, shm=False, metrics=False, timeout=120) as inline:
        want = inline.process(x, pipeline)
    with grpc.insecure_channel(shm_server.address) as channel:
        stub = pb_grpc.PreprocessorStub(channel)
        for attempt in range(5):
            obj = RawObject(shm_server.shm_prefix, 4 * nbytes)
            try:
                handle = stub.RegisterSharedMemory(pb.RegisterSharedMemoryRequest(
                    key=obj.key, byte_size=obj.size, expect_prefix=obj.nonce), timeout=30).region
                obj.unlink()
                np.frombuffer(obj.mm, np.float32, x.size, 0)[:] = x.ravel()

                def req(i):
                    r = pb.ProcessRequest(request_id=str(i), pipeline=pipeline)
                    r.images.dtype = pb.DTYPE_FLOAT32
                    r.images.shape.extend(x.shape)
                    r.images.shm.CopyFrom(pb.SharedMemoryRef(region=handle, offset=0,
                                                             byte_size=nbytes))
                    r.images_output.CopyFrom(pb.SharedMemoryRef(
                        region=handle, offset=(i + 1) * nbytes, byte_size=nbytes))
                    return r

                more = threading.Event()

                def requests():
                    yield req(0)
                    yield req(1)
                    more.wait(60)
                    yield req(2)

                call = stub.ProcessStream(requests(), timeout=120)
                seen = None
                for _ in range(2000):  # bounded poll for the server to have them in use
                    st = stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest(regions=[handle]),
                                                 timeout=30)
                    if st.regions and st.regions[0].requests_in_use >= 1:
                        seen = st.regions[0].requests_in_use
                        break
                stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(region=handle),
                                            timeout=30)
                more.set()
                responses = {r.request_id: r for r in call}
                assert set(responses) == {"0", "1", "2"}
                assert responses["2"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
                if seen is None:
                    continue  # both finished before the poll saw them: try again
                for i in ("0", "1"):
                    r = responses[i]
                    if r.HasField("error"):  # it had not started when the region went
                        assert r.error.code == grpc.StatusCode.NOT_FOUND.value[0]
                        continue
                    got = np.frombuffer(obj.mm, np.float32, x.size, (int(i) + 1) * nbytes)
                    _same_bits(got.reshape(x.shape), want)
                    del got
                break
            finally:
                obj.close()
        else:
            pytest.fail("the server never reported the requests in use")
    assert_serving(shm_server.address)


def test_a_handle_given_away_works_for_its_holder(raw, shm_server):
    """A handle is a capability: another connection that holds it may use the region (this is
    why the client never shows its handles). A guessed one is NOT_FOUND (above)."""
    stub, obj, handle = raw
    view = np.frombuffer(obj.mm, np.float32, 16, 16384)
    view[:] = 7
    with grpc.insecure_channel(shm_server.uds_address) as other:
        resp = pb_grpc.PreprocessorStub(other).Process(_request(handle, 16384, 20480, 64),
                                                       timeout=30)
    assert resp.images.shm.region == handle
    np.testing.assert_array_equal(np.frombuffer(obj.mm, np.float32, 16, 20480), 8)
    del view
