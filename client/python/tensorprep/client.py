"""The Python client: NumPy batches in, NumPy batches out.

    import tensorprep as tp
    with tp.Client("127.0.0.1:50051") as client:
        out = client.process(images, [tp.rotate(30, border="edge")])
        out, labels = client.process(images, [tp.random_flip(0.5)], labels=labels, seed=7)
        for out in client.stream(batches, [tp.flip("horizontal")], inflight=4):
            ...

Arrays come back as read-only views into the received message (no copy); call ``.copy()`` when
you need to write into one. Failed calls raise tensorprep.TensorprepError subclasses carrying the
server's status code and message.

Thread-safety: a Client may be shared by threads; each call is independent. ``stream`` returns a
generator that one thread consumes.
"""

import dataclasses
import itertools
import json
import secrets
import threading
import time

import grpc
import numpy as np

from . import metrics as _metrics
from ._stubs import pb, pb_grpc
from .errors import error_for, from_rpc_error
from .ops import as_pipeline, has_random, interpolation_enum
from .wire import AuxInput, as_wire_array, decode_response, encode_request

_SERVICE = pb.DESCRIPTOR.services_by_name["Preprocessor"].full_name
_DEVICES = {"auto": pb.DEVICE_AUTO, "cpu": pb.DEVICE_CPU, "cuda": pb.DEVICE_CUDA,
            "gpu": pb.DEVICE_CUDA}
_DEVICE_NAMES = {pb.DEVICE_AUTO: "auto", pb.DEVICE_CPU: "cpu", pb.DEVICE_CUDA: "cuda"}
LABELS = "labels"


_SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    # Picks only replicas whose grpc.health.v1 Watch says SERVING: a draining one drops out.
    "healthCheckConfig": {"serviceName": _SERVICE},
    "methodConfig": [{
        "name": [{"service": _SERVICE, "method": "Process"},
                 {"service": _SERVICE, "method": "ListOps"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.05s", "maxBackoff": "1s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]},
    }],
})


def _channel_target(address):
    """"h1:p1,h2:p2" -> "ipv4:h1:p1,h2:p2" (one target round_robin spreads over); anything else
    ("host:port", "dns:///name:port", ...) as it is."""
    if "," in address and "://" not in address and not address.startswith(("ipv4:", "ipv6:")):
        return "ipv4:" + address
    return address


def _device_enum(device):
    if isinstance(device, int):
        return device
    try:
        return _DEVICES[device.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown device {device!r}; expected 'auto', 'cpu' or 'cuda'") from None


@dataclasses.dataclass
class Result:
    """Everything a response carries."""
    images: np.ndarray
    aux: dict  # name -> ndarray
    device: str  # "cpu" or "cuda": the device that ran the kernels
    timings: dict  # server stage -> seconds: decode, queue, kernel, encode, total
    request_id: str
    round_trip_s: float  # client-side, from send to receipt


def _timings(t):
    return {"decode": t.decode_ns * 1e-9, "queue": t.queue_ns * 1e-9, "kernel": t.kernel_ns * 1e-9,
            "encode": t.encode_ns * 1e-9, "total": t.total_ns * 1e-9}


def _prepare_aux(labels, aux):
    """-> list of (name, array, interpolation enum, fill) and whether `labels` was given."""
    items = []
    if labels is not None:
        items.append((LABELS, labels))
    if aux:
        for name, value in aux.items():
            if name == LABELS and labels is not None:
                raise ValueError("aux has an entry named 'labels' and labels= is given too")
            items.append((name, value))
    out = []
    for name, value in items:
        if isinstance(value, AuxInput):
            arr, interp, fill = value.array, value.interpolation, value.fill
        else:
            arr, interp, fill = value, None, 0.0
        out.append((name, as_wire_array(arr, f"aux {name!r}"), interpolation_enum(interp),
                    float(fill)))
    return out


class Client:
    """A connection to a tensorprep server.

    Args:
      address: "host:port"; several joined by commas ("10.0.0.1:50051,10.0.0.2:50051"), or a
        DNS name with several records ("dns:///tensorprep-headless:50051"), are balanced
        round-robin, and Process/ListOps are retried on another replica on UNAVAILABLE.
      timeout: default deadline in seconds for each call (a stream's deadline covers the whole
        stream); None means no deadline.
      device: default device for calls: "auto", "cpu" or "cuda".
      max_message_mb: send and receive limit; the server's default is 256 MB.
      metrics: True (default registry, when prometheus_client is installed), False, or a
        prometheus_client CollectorRegistry.
      workload: default ``workload`` label of the client's latency histogram.
      credentials: grpc.ChannelCredentials for TLS, e.g.
        grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain) for
        mutual TLS; None for a plaintext channel.
      token: bearer token sent on every call as ``authorization: Bearer <token>`` metadata, for
        a server started with --auth-token-file; None sends none.
      options: extra gRPC channel options (e.g. ("grpc.ssl_target_name_override", name)).

    Nothing connects until the first call (or ``wait_ready``).
    """

    def __init__(self, address, *, timeout=None, device="auto", max_message_mb=256, metrics=True,
                 workload="default", credentials=None, token=None, options=()):
        self.address = address
        self.timeout = timeout
        self.device = _device_enum(device)
        limit = int(max_message_mb * 1024 * 1024)
        opts = [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]
        # Replicas: round_robin over every address, and retries of the idempotent calls on
        # UNAVAILABLE, and on CANCELLED, which a draining server answers to calls that reach it
        # after it stopped accepting (a client's own cancellation is never retried). The retry
        # buffer must hold a whole request or large ones are never retried.
        opts += [("grpc.lb_policy_name", "round_robin"), ("grpc.enable_retries", 1),
                 ("grpc.service_config", _SERVICE_CONFIG),
                 ("grpc.per_rpc_retry_buffer_size", limit)]
        opts += list(options)
        target = _channel_target(address)
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=opts)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=opts)
        # Raw bytes in and out: wire.py serialises and parses without extra tensor copies.
        self._unary = self._channel.unary_unary(f"/{_SERVICE}/Process")
        self._bidi = self._channel.stream_stream(f"/{_SERVICE}/ProcessStream")
        self._stub = pb_grpc.PreprocessorStub(self._channel)
        registry = metrics if metrics not in (True, False, None) else None
        self._metrics = _metrics.Recorder(registry, workload, enabled=bool(metrics))
        self._ids = itertools.count()
        self._closed = False
        self._call_metadata = (("authorization", f"Bearer {token}"),) if token else None

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self):
        """Closes the channel; calls in progress are cancelled. Idempotent."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_ready(self, timeout=10.0):
        """Blocks until the channel connects; raises UnavailableError after ``timeout`` s."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise error_for(grpc.StatusCode.UNAVAILABLE,
                            f"could not connect to {self.address} within {timeout} s") from None
        return self

    def _deadline(self, timeout):
        return self.timeout if timeout is None else timeout

    # --- calls -------------------------------------------------------------------------------
    def list_ops(self, timeout=None):
        """The server's ops and devices (a ListOpsResponse message)."""
        try:
            return self._stub.ListOps(pb.ListOpsRequest(), timeout=self._deadline(timeout),
                                      metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def call(self, images, pipeline, *, labels=None, aux=None, seed=None, sample_offset=0,
             device=None, timeout=None, request_id=None, workload=None):
        """Runs ``pipeline`` on one batch with a unary call; returns a Result.

        ``images``: (N, H, W) or (N, H, W, C) uint8 / int32 / float32 / float16.
        ``labels``: an array (N, H, W[, C]) that follows the geometric ops (nearest sampling);
        returned as aux["labels"]. ``aux``: more of them, {name: array or AuxInput}.
        ``seed``: for random ops; None draws a fresh one per call.
        Raises ValueError / TypeError for inputs the client can reject itself, TensorprepError
        for what the server rejects.
        """
        pipeline = as_pipeline(pipeline)
        images = as_wire_array(images)
        aux_items = _prepare_aux(labels, aux)
        if seed is None:
            seed = secrets.randbits(64) if has_random(pipeline) else 0
        rid = request_id if request_id is not None else f"u{next(self._ids)}"
        payload = encode_request(images, pipeline, aux=aux_items, request_id=rid,
                                 device=_device_enum(device) if device is not None else self.device,
                                 seed=int(seed), sample_offset=int(sample_offset))
        start = time.perf_counter()
        try:
            raw = self._unary(payload, timeout=self._deadline(timeout),
                              metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        elapsed = time.perf_counter() - start
        self._metrics.observe("remote_unary", elapsed, workload)
        return self._result(decode_response(raw), elapsed)

    def process(self, images, pipeline, labels=None, seed=None, device=None, *, aux=None,
                sample_offset=0, timeout=None, workload=None):
        """Like ``call`` but returns arrays: the images, or (images, labels) when labels are
        given, or (images, {name: array}) when aux is given."""
        res = self.call(images, pipeline, labels=labels, aux=aux, seed=seed,
                        sample_offset=sample_offset, device=device, timeout=timeout,
                        workload=workload)
        return _shape_output(res, labels is not None, aux)

    def stream(self, batches, pipeline, *, inflight=4, seed=None, device=None, timeout=None,
               full=False, workload=None, sample_offset=0, chunk_mb=4.0):
        """Sends each batch of ``batches`` on one bidirectional stream; yields results in order.

        ``batches`` yields arrays, (images, labels) pairs, or (images, {name: aux}) pairs; it is
        read lazily, from a gRPC thread, and never more than ``inflight`` batches ahead of what
        this generator has handed out (that bounds memory whatever the consumer's pace).

        A batch larger than ``chunk_mb`` megabytes is sent as several requests of whole samples
        (with their sample offsets, so random draws are unchanged) and reassembled: several
        megabyte-sized messages in flight cost much less per byte than one huge message, on both
        ends. At most ``inflight`` requests are on the wire at once. ``chunk_mb=None`` sends
        each batch as one request.

        Random ops draw from one seed for the whole stream with each batch's sample_offset
        following on from the last, so the result equals one call on the concatenated batch.

        Yields what ``process`` returns for each batch (or a Result with ``full=True``). A
        per-request error raises its TensorprepError at its place in the order, after the
        results before it; an exception raised by ``batches`` is re-raised likewise. Closing
        the generator early cancels the stream.
        """
        if inflight < 1:
            raise ValueError(f"inflight must be >= 1, got {inflight}")
        if chunk_mb is not None and chunk_mb <= 0:
            raise ValueError(f"chunk_mb must be > 0 or None, got {chunk_mb}")
        pipeline = as_pipeline(pipeline)
        if seed is None:
            seed = secrets.randbits(64) if has_random(pipeline) else 0
        device = _device_enum(device) if device is not None else self.device
        chunk_bytes = None if chunk_mb is None else int(chunk_mb * 1024 * 1024)
        ahead = threading.Semaphore(inflight)  # batches read but not yet handed out
        wire = threading.Semaphore(inflight)  # requests sent but not yet answered
        stop = threading.Event()
        sent_at = {}  # request id -> perf_counter at send
        batches_info = {}  # batch index -> (parts, labels given, aux given)
        state = {"batches": 0, "done": False, "error": None}

        def acquire(sem):
            while not sem.acquire(timeout=0.05):
                if stop.is_set():
                    return False
            return not stop.is_set()

        def requests():
            offset = int(sample_offset)
            it = iter(batches)
            for index in itertools.count():
                if not acquire(ahead):
                    return
                try:
                    item = next(it)
                except StopIteration:
                    break
                except BaseException as e:  # re-raised to the consumer in order
                    state["error"] = e
                    break
                try:
                    images, labels, aux = _split_item(item)
                    images = as_wire_array(images)
                    aux_items = _prepare_aux(labels, aux)
                    spans = _chunks(images, aux_items, chunk_bytes)
                except BaseException as e:
                    state["error"] = e
                    break
                batches_info[index] = (len(spans), labels is not None, aux)
                state["batches"] = index + 1
                for part, (lo, hi) in enumerate(spans):
                    if not acquire(wire):
                        return
                    rid = f"{index}" if len(spans) == 1 else f"{index}.{part}"
                    try:
                        payload = encode_request(
                            images[lo:hi], pipeline,
                            aux=[(n, a[lo:hi], i, f) for n, a, i, f in aux_items],
                            request_id=rid, device=device, seed=int(seed),
                            sample_offset=offset + lo)
                    except BaseException as e:
                        state["error"] = e
                        state["done"] = True
                        return
                    sent_at[rid] = time.perf_counter()
                    yield payload
                offset += images.shape[0]
            state["done"] = True

        try:
            call = self._bidi(requests(), timeout=self._deadline(timeout),
                              metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        pending = {}  # batch index -> {part: (decoded, rtt)}
        next_index = 0
        try:
            try:
                for raw in call:
                    now = time.perf_counter()
                    decoded = decode_response(raw)
                    rid = decoded.meta.request_id
                    rtt = now - sent_at.pop(rid, now)
                    wire.release()
                    self._metrics.observe("remote_stream", rtt, workload)
                    index, _, part = rid.partition(".")
                    pending.setdefault(int(index), {})[int(part or 0)] = (decoded, rtt)
                    while (next_index in pending and next_index in batches_info
                           and len(pending[next_index]) == batches_info[next_index][0]):
                        parts = pending.pop(next_index)
                        _, labels_given, aux_given = batches_info.pop(next_index)
                        batch_id = str(next_index)
                        next_index += 1
                        ahead.release()
                        res = self._assemble(parts, batch_id)
                        yield res if full else _shape_output(res, labels_given, aux_given)
            except grpc.RpcError as e:
                if state["error"] is not None:
                    raise state["error"]
                raise from_rpc_error(e) from None
            if state["error"] is not None:
                raise state["error"]
            if next_index != state["batches"] or not state["done"]:
                raise error_for(grpc.StatusCode.DATA_LOSS,
                                f"stream ended after {next_index} of {state['batches']} batches")
        finally:
            stop.set()
            call.cancel()

    def _assemble(self, parts, batch_id):
        """One Result from the responses to a batch's requests (raises the first error)."""
        ordered = [parts[k] for k in sorted(parts)]
        for decoded, _ in ordered:
            if decoded.meta.HasField("error"):
                err = decoded.meta.error
                raise error_for(err.code, err.message, batch_id)
        if len(ordered) == 1:
            res = self._result(*ordered[0])
            res.request_id = batch_id
            return res
        results = [self._result(d, rtt) for d, rtt in ordered]
        timings = {k: sum(r.timings[k] for r in results) for k in results[0].timings}
        return Result(images=np.concatenate([r.images for r in results]),
                      aux={name: np.concatenate([r.aux[name] for r in results])
                           for name in results[0].aux},
                      device=results[0].device, timings=timings, request_id=batch_id,
                      round_trip_s=max(r.round_trip_s for r in results))

    # --- helpers -----------------------------------------------------------------------------
    def _result(self, decoded, rtt):
        meta = decoded.meta
        return Result(images=decoded.images, aux=decoded.aux,
                      device=_DEVICE_NAMES.get(meta.device, str(meta.device)),
                      timings=_timings(meta.timings), request_id=meta.request_id, round_trip_s=rtt)


def _split_item(item):
    if isinstance(item, (tuple, list)):
        if len(item) != 2:
            raise ValueError(f"a stream item is an array or an (images, labels) pair; got "
                             f"{len(item)} elements")
        images, extra = item
        if isinstance(extra, dict):
            return images, None, extra
        return images, extra, None
    return item, None, None


def _chunks(images, aux_items, chunk_bytes):
    """[(lo, hi)] sample ranges of at most ``chunk_bytes`` each (at least one sample each)."""
    n = images.shape[0]
    if chunk_bytes is None or n <= 1:
        return [(0, n)]
    per_sample = (images.nbytes + sum(a.nbytes for _, a, _, _ in aux_items)) / n
    k = max(1, int(chunk_bytes // max(per_sample, 1)))
    if k >= n:
        return [(0, n)]
    return [(lo, min(n, lo + k)) for lo in range(0, n, k)]


def _shape_output(res, labels_given, aux_given):
    if labels_given and not aux_given:
        return res.images, res.aux.get(LABELS)
    if aux_given:
        return res.images, res.aux
    return res.images
