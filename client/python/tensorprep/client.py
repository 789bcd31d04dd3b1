"""The Python client: NumPy batches in, NumPy batches out.

    import tensorprep as tp
    with tp.Client("127.0.0.1:50051") as client:
        out = client.process(images, [tp.rotate(30, border="edge")])
        out, labels = client.process(images, [tp.random_flip(0.5)], labels=labels, seed=7)
        for out in client.stream(batches, [tp.flip("horizontal")], inflight=4):
            ...
        # Encoded files (or raw arrays of their own sizes) in, one dense batch out:
        out = client.process([jpeg_bytes, "b.png", pathlib.Path("c.jpg")],
                             [tp.random_resized_crop(224), tp.cast("float32")])

Transport: on the same host as a server that allows it, tensors travel through shared memory
(tensorprep.shm) and requests only name them; otherwise as bytes inside the gRPC messages. The
client decides by itself (``shm="auto"``), on the first call or ``connect()``; ``client.transport``
and ``client.shm_reason`` say what it chose and why, and each Result says which way it went.

Lists of samples (``images=[...]``: encoded JPEG/PNG files as bytes or paths, or NumPy arrays
each of its own size) are decoded and run on the server's CPU, and must be brought to one size by
the pipeline; they always travel inline (wire.as_sample_list says what a list may hold).

Arrays come back as views, no copy: over the received message (read-only) on the inline path,
over a shared-memory slot (writable) on the shared-memory path. A slot stays reserved as long as
its array or any view of it is referenced, and returns to the pool when they are collected.
``copy=True`` returns ordinary arrays instead. Failed calls raise tensorprep.TensorprepError
subclasses carrying the server's status code and message.

Thread-safety: a Client may be shared by threads; each call is independent. ``stream`` returns a
generator that one thread consumes.
"""

import dataclasses
import ipaddress
import itertools
import json
import os
import secrets
import socket
import threading
import time

import grpc
import numpy as np

from . import metrics as _metrics
from . import shm as _shm
from ._stubs import pb, pb_grpc
from .errors import TensorprepError, error_for, from_rpc_error
from .ops import as_pipeline, has_random, interpolation_enum
from .wire import (AuxInput, SampleList, as_sample_list, as_wire_array, decode_response,
                   encode_request, is_encoded_item, is_sample_list)

_SERVICE = pb.DESCRIPTOR.services_by_name["Preprocessor"].full_name
_DEVICES = {"auto": pb.DEVICE_AUTO, "cpu": pb.DEVICE_CPU, "cuda": pb.DEVICE_CUDA,
            "gpu": pb.DEVICE_CUDA}
_DEVICE_NAMES = {pb.DEVICE_AUTO: "auto", pb.DEVICE_CPU: "cpu", pb.DEVICE_CUDA: "cuda"}
LABELS = "labels"
_SHM_MODES = ("auto", True, False)
# Codes with which the server itself refused a request, having done no work that could still be
# writing into its output slots (so they can be reused at once); any other failure may have left
# the request running, and its slots are quarantined.
_REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OUT_OF_RANGE}
# A response to a shared-memory request holds no tensor bytes; anything larger is inline.
_SMALL_RESPONSE = 64 * 1024
# Why registration failed, by the server's code: the reason recorded in client.shm_reason.
_REGISTER_REFUSED = {
    grpc.StatusCode.NOT_FOUND: "the server cannot open this client's shared memory (it runs on "
                               "another host or in another IPC namespace)",
    grpc.StatusCode.FAILED_PRECONDITION: "the server does not see this client's shared memory "
                                         "(another host or IPC namespace, or shared memory "
                                         "disabled)",
    grpc.StatusCode.PERMISSION_DENIED: "the server refused the shared-memory object's name",
    grpc.StatusCode.UNIMPLEMENTED: "the server does not support shared memory",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the server has no room for this client's shared memory",
    grpc.StatusCode.INVALID_ARGUMENT: "the server refused the shared-memory region",
}
# Why a request with a list of samples went inline whatever the transport.
_LIST_INLINE = "a list of samples is sent inline (shared memory carries dense tensors only)"


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


def _several_servers(address):
    """None when ``address`` reaches one server, else why it may reach several. Shared memory
    is registered with one server: round-robin over several would send requests to servers that
    never saw the registration. Several addresses that are all this machine's own are one server
    (a port on one host is one listener)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return None
    if "," in address:
        return "the address names several servers"
    target = address
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme):]
            break
    if "/" in target:  # dns://authority/name:port
        target = target.rsplit("/", 1)[1]
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host:
        return None
    try:
        infos = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return None  # the call itself will say what is wrong with the address
    addrs = {info[4][0].split("%")[0] for info in infos}
    if len(addrs) <= 1 or all(_is_local(a) for a in addrs):
        return None
    return "the address resolves to several servers"


def _is_local(addr):
    try:
        if ipaddress.ip_address(addr).is_loopback:
            return True
    except ValueError:
        return False
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))  # succeeds only for an address of this machine
        return True
    except OSError:
        return False


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
    # server stage -> seconds: decode, queue, kernel, encode, total, and image_decode (decoding
    # the encoded samples of a list; 0 for a dense batch)
    timings: dict
    request_id: str
    round_trip_s: float  # client-side, from send to receipt
    transport: str = "inline"  # "shm" or "inline": how this result's tensors travelled
    transport_reason: str = None  # on "inline": why not shared memory (None when never tried)
    # Tensor bytes moved, from the response: inline_bytes_in/out, shm_bytes_in/out.
    transfer: dict = dataclasses.field(default_factory=dict)


def _transfer(t):
    return {"inline_bytes_in": t.inline_bytes_in, "inline_bytes_out": t.inline_bytes_out,
            "shm_bytes_in": t.shm_bytes_in, "shm_bytes_out": t.shm_bytes_out}


def _timings(t):
    return {"decode": t.decode_ns * 1e-9, "queue": t.queue_ns * 1e-9, "kernel": t.kernel_ns * 1e-9,
            "encode": t.encode_ns * 1e-9, "total": t.total_ns * 1e-9,
            "image_decode": t.image_decode_ns * 1e-9}


def _prepare_inputs(images, labels, aux, channels):
    """(images as an array or SampleList, aux items) checked and ready for the wire."""
    if is_sample_list(images):
        images = as_sample_list(images, "images", channels)
    else:
        if channels is not None:
            raise ValueError("channels= applies to a list of samples (encoded files or arrays "
                             "of their own sizes), not to a dense batch")
        images = as_wire_array(images)
    return images, _prepare_aux(labels, aux, images)


def _batch_len(images):
    return len(images) if isinstance(images, SampleList) else images.shape[0]


def _rows(x, lo, hi):
    return x.slice(lo, hi) if isinstance(x, SampleList) else x[lo:hi]


def _prepare_aux(labels, aux, images=None):
    """-> list of (name, array or SampleList, interpolation enum, fill).

    With a list of samples as ``images``, an aux tensor may be a list (one sample per image) or a
    dense batch (N, H, W[, C]), sent as N samples; with a dense batch it must be dense too."""
    items = []
    if labels is not None:
        items.append((LABELS, labels))
    if aux:
        for name, value in aux.items():
            if name == LABELS and labels is not None:
                raise ValueError("aux has an entry named 'labels' and labels= is given too")
            items.append((name, value))
    listed = isinstance(images, SampleList)
    out = []
    for name, value in items:
        if isinstance(value, AuxInput):
            arr, interp, fill, channels = (value.array, value.interpolation, value.fill,
                                           value.channels)
        else:
            arr, interp, fill, channels = value, None, 0.0, None
        what = name if name == LABELS else f"aux[{name!r}]"
        if is_sample_list(arr):
            if not listed:
                raise ValueError(f"{what} is a list of samples, so images must be one too "
                                 "(a list of encoded files or arrays)")
            arr = as_sample_list(arr, what, channels)
        elif listed:
            arr = as_wire_array(arr, what)
            if arr.ndim not in (3, 4):
                raise ValueError(f"{what}: expected a list of samples or a batch (N, H, W[, C]), "
                                 f"got shape {arr.shape}")
            arr = SampleList(list(arr), channels or 0)
        else:
            if channels is not None:
                raise ValueError(f"{what}: channels applies to a list of samples")
            arr = as_wire_array(arr, f"aux {name!r}")
        if listed and len(arr) != len(images):
            raise ValueError(f"{what} has {len(arr)} samples, images have {len(images)}")
        out.append((name, arr, interpolation_enum(interp), float(fill)))
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
      shm: "auto" (default): tensors through shared memory when the server allows it and sees
        this client's memory (same host), else inline bytes, silently; True: require shared
        memory (``connect`` and calls raise FailedPreconditionError with the reason when it is
        not possible, ResourceExhaustedError when a call does not fit the pool); False: inline
        bytes only. "unix:PATH" addresses (the server's --uds socket) suit it best. An address
        that reaches several servers stays inline (regions are registered with one server); a
        call that meets NOT_FOUND (a restarted server) registers afresh and is sent again.
      shm_pool_mb: size of the first shared-memory region; more are registered as needed.
      shm_max_mb: all of this client's regions together (default 2048, at least shm_pool_mb;
        also capped by the server's limits).
        A call that does not fit goes inline (with shm="auto") and says so in its Result.

    Nothing connects until the first call (or ``wait_ready`` / ``connect``).

    Attributes: ``transport`` ("shm" or "inline"; None until decided), ``shm_reason`` (None on
    shared memory, else why inline).
    """

    def __init__(self, address, *, timeout=None, device="auto", max_message_mb=256, metrics=True,
                 workload="default", credentials=None, token=None, options=(), shm="auto",
                 shm_pool_mb=256, shm_max_mb=None):
        if shm not in _SHM_MODES:
            raise ValueError(f"shm must be 'auto', True or False, got {shm!r}")
        if shm_max_mb is None:
            shm_max_mb = max(2048, shm_pool_mb)
        if not 0 < shm_pool_mb <= shm_max_mb:
            raise ValueError(f"need 0 < shm_pool_mb <= shm_max_mb, got {shm_pool_mb} and "
                             f"{shm_max_mb}")
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
        self._shm_mode = shm
        self._shm_pool_bytes = int(shm_pool_mb * 1024 * 1024)
        self._shm_max_bytes = int(shm_max_mb * 1024 * 1024)
        self._decide_lock = threading.Lock()
        self._pool = None
        self.transport = None
        self.shm_reason = None
        if shm is False:
            self.transport = "inline"
            self.shm_reason = "shared memory is turned off (shm=False)"

    # --- lifecycle ---------------------------------------------------------------------------
    def close(self):
        """Unregisters the shared-memory regions and closes the channel; calls in progress are
        cancelled. Result arrays over shared memory stay valid (their memory is unmapped when
        the last of them is collected). Idempotent."""
        if not self._closed:
            self._closed = True
            with self._decide_lock:
                pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()
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

    # --- shared memory -----------------------------------------------------------------------
    def connect(self, timeout=None):
        """Decides the transport now instead of on the first call (see ``transport``); returns
        self. With shm=True raises FailedPreconditionError when shared memory is not possible."""
        self._decide(timeout)
        if self.transport is None:  # the server could not be asked; shm="auto" only
            raise error_for(grpc.StatusCode.UNAVAILABLE, self._undecided_reason)
        return self

    def empty(self, shape, dtype):
        """An uninitialised writable array in this client's shared memory: fill it and send it,
        and the request names it where it lies (no copy). It owns its slot like a result does.
        An ordinary array when shared memory is not in use or the pool is full."""
        self._decide(None)
        pool = self._pool
        arr = pool.empty(shape, dtype) if pool is not None else None
        if arr is None:
            if self._shm_mode is True and self.transport == "shm":
                raise error_for(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                "client.empty: the shared-memory pool is full")
            arr = np.empty(shape, dtype)
        return arr

    @property
    def shm_stats(self):
        """{"mapped_bytes", "in_use_bytes", "regions", "quarantined_slots"} of the pool, or None."""
        pool = self._pool
        if pool is None:
            return None
        return {"mapped_bytes": pool.mapped(), "in_use_bytes": pool.in_use(),
                "regions": pool.region_count(), "quarantined_slots": pool.quarantined()}

    _undecided_reason = None

    def _decide(self, timeout):
        """Sets transport/shm_reason (and the pool) once. With shm="auto", a server that cannot
        be asked now leaves it undecided (this call goes inline, the next one asks again)."""
        if self.transport is not None:
            return
        with self._decide_lock:
            if self.transport is not None or self._closed:
                return
            transport, reason, pool = self._probe_shm(timeout)
            if transport is None:
                if self._shm_mode is True:
                    raise error_for(grpc.StatusCode.UNAVAILABLE, reason)
                self._undecided_reason = reason
                return
            if transport == "inline" and self._shm_mode is True:
                raise error_for(grpc.StatusCode.FAILED_PRECONDITION,
                                f"shared memory was required (shm=True) but {reason}")
            self._pool = pool
            self.shm_reason = reason
            self.transport = transport

    def _probe_shm(self, timeout):
        """-> (transport or None when undecided, reason, pool)."""
        if not _shm.supported():
            return "inline", "this machine has no POSIX shared memory (/dev/shm)", None
        several = _several_servers(self.address)
        if several is not None:
            return "inline", f"{several} (shared memory is registered with one)", None
        try:
            info = self.list_ops(timeout=timeout).shared_memory
        except TensorprepError as e:
            return None, f"could not ask the server about shared memory ({e})", None
        if not info.enabled:
            return "inline", "the server has shared memory disabled", None
        max_bytes = self._shm_max_bytes
        if info.max_mapped_bytes:
            max_bytes = min(max_bytes, info.max_mapped_bytes)
        max_regions = min(16, info.max_regions_per_client or 16)
        pool = _shm.Pool(info.key_prefix, self._register_region, self._unregister_region,
                         self._region_use, initial_bytes=min(self._shm_pool_bytes, max_bytes),
                         max_bytes=max_bytes, max_regions=max_regions)
        try:
            pool.start()
        except _shm.SetupError as e:
            return "inline", f"shared memory cannot be set up here: {e}", None
        except TensorprepError as e:
            refused = _REGISTER_REFUSED.get(e.code)
            if refused is None:
                return None, f"could not register shared memory ({e})", None
            return "inline", f"{refused}: {e}", None
        return "shm", None, pool

    def _control_timeout(self):
        return self.timeout if self.timeout is not None else 30.0

    def _register_region(self, key, byte_size, nonce):
        req = pb.RegisterSharedMemoryRequest(key=key, offset=0, byte_size=byte_size,
                                             expect_prefix=nonce, name=f"python pid {os.getpid()}")
        try:
            return self._stub.RegisterSharedMemory(req, timeout=self._control_timeout(),
                                                   metadata=self._call_metadata).region
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _unregister_region(self, handle):
        # At close: bounded, and a failure only means the server forgets it with the connection.
        self._stub.UnregisterSharedMemory(pb.UnregisterSharedMemoryRequest(region=handle),
                                          timeout=min(self._control_timeout(), 5.0),
                                          metadata=self._call_metadata)

    def _region_use(self, handles):
        resp = self._stub.SharedMemoryStatus(pb.SharedMemoryStatusRequest(regions=handles),
                                             timeout=self._control_timeout(),
                                             metadata=self._call_metadata)
        return {r.region: r.requests_in_use for r in resp.regions}

    def _forget_shm(self, pool):
        """The server no longer knows this client's regions (it restarted, or the connection
        now reaches another server): retire the pool; the next call decides afresh."""
        with self._decide_lock:
            if self._pool is not pool or pool is None:
                return
            self._pool = None
            self.transport = None
            self.shm_reason = None
        pool.close(unmap=False)  # requests on other threads may still finish into it

    def _plan(self, images, aux_items, pipeline, timeout):
        """(ShmRequest, None) for the shared-memory path, or (None, why inline)."""
        if isinstance(images, SampleList):
            return None, _LIST_INLINE
        self._decide(timeout)
        pool = self._pool
        if self.transport != "shm" or pool is None:
            return None, self.shm_reason or self._undecided_reason
        plan, reason = _shm.plan_request(pool, images, aux_items, pipeline)
        if plan is None and self._shm_mode is True:
            raise error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
        return plan, reason

    def _shm_result(self, plan, response, rtt, copy):
        images, aux = plan.result(response, copy=copy)
        return Result(images=images, aux=aux,
                      device=_DEVICE_NAMES.get(response.device, str(response.device)),
                      timings=_timings(response.timings), request_id=response.request_id,
                      round_trip_s=rtt, transport="shm", transfer=_transfer(response.transfer))

    # --- calls -------------------------------------------------------------------------------
    def list_ops(self, timeout=None):
        """The server's ops and devices (a ListOpsResponse message)."""
        try:
            return self._stub.ListOps(pb.ListOpsRequest(), timeout=self._deadline(timeout),
                                      metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def call(self, images, pipeline, *, labels=None, aux=None, seed=None, sample_offset=0,
             device=None, timeout=None, request_id=None, workload=None, copy=False,
             channels=None):
        """Runs ``pipeline`` on one batch with a unary call; returns a Result.

        ``images``: (N, H, W) or (N, H, W, C) uint8 / int32 / float32 / float16; or a list (or
        tuple) of samples, each of its own size: encoded JPEG or PNG files as ``bytes`` /
        ``bytearray`` / ``memoryview`` or as paths (``str`` / ``os.PathLike``, read here), or
        NumPy arrays (H, W) or (H, W, C) (one kind per list). The server decodes a list (to
        uint8) and runs it on its CPU; the pipeline must give a fixed size (resize to both
        sides, crop, center_crop or random_resized_crop), else INVALID_ARGUMENT. The result is
        one dense batch, and errors name the sample ("image_list.samples[3]: ..."). A list of
        arrays is a list of samples even when they share a size (np.stack them for a dense
        batch, which any pipeline, device and shared memory take).
        ``channels``: for a list, the channels decoded files get: None (3, RGB) or 1 (grey).
        ``labels``: an array (N, H, W[, C]) that follows the geometric ops (nearest sampling);
        returned as aux["labels"]. ``aux``: more of them, {name: array or AuxInput}. With a list
        of images, each may be a list too (a mask per image, e.g. palette PNGs, which give their
        indices; AuxInput's ``channels`` picks otherwise), or a dense batch of N.
        ``seed``: for random ops; None draws a fresh one per call.
        ``copy``: return ordinary (writable, owning) arrays; a shared-memory slot is then freed
        at once. Otherwise arrays are views (see the module doc for their lifetime).
        Raises ValueError / TypeError for inputs the client can reject itself, TensorprepError
        for what the server rejects.
        """
        pipeline = as_pipeline(pipeline)
        images, aux_items = _prepare_inputs(images, labels, aux, channels)
        if seed is None:
            seed = secrets.randbits(64) if has_random(pipeline) else 0
        rid = request_id if request_id is not None else f"u{next(self._ids)}"
        device = _device_enum(device) if device is not None else self.device
        try:
            return self._call_once(images, pipeline, aux_items, seed, sample_offset, device,
                                   timeout, rid, workload, copy)
        except _StaleRegions:
            # The server forgot our regions (a restart): once more, after deciding afresh.
            return self._call_once(images, pipeline, aux_items, seed, sample_offset, device,
                                   timeout, rid, workload, copy, retry=False)

    def _call_once(self, images, pipeline, aux_items, seed, sample_offset, device, timeout, rid,
                   workload, copy, retry=True):
        plan, reason = self._plan(images, aux_items, pipeline, timeout)
        try:
            if plan is not None:
                payload = plan.message(pipeline, request_id=rid, device=device, seed=int(seed),
                                       sample_offset=int(sample_offset))
            else:
                payload = encode_request(images, pipeline, aux=aux_items, request_id=rid,
                                         device=device, seed=int(seed),
                                         sample_offset=int(sample_offset))
        except BaseException:
            if plan is not None:
                plan.discard()  # never sent
            raise
        start = time.perf_counter()
        try:
            raw = self._unary(payload, timeout=self._deadline(timeout),
                              metadata=self._call_metadata)
        except grpc.RpcError as e:
            if plan is not None:
                plan.discard() if e.code() in _REFUSED else plan.abandon()
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    self._forget_shm(plan.pool)
                    if retry:
                        raise _StaleRegions() from None
            raise from_rpc_error(e) from None
        except BaseException:
            if plan is not None:
                plan.abandon()
            raise
        elapsed = time.perf_counter() - start
        self._metrics.observe("remote_unary", elapsed, workload)
        if plan is not None:
            return self._shm_result(plan, pb.ProcessResponse.FromString(raw), elapsed, copy)
        res = self._result(decode_response(raw), elapsed, reason)
        return _copied(res) if copy else res

    def process(self, images, pipeline, labels=None, seed=None, device=None, *, aux=None,
                sample_offset=0, timeout=None, workload=None, copy=False, channels=None):
        """Like ``call`` but returns arrays: the images, or (images, labels) when labels are
        given, or (images, {name: array}) when aux is given."""
        res = self.call(images, pipeline, labels=labels, aux=aux, seed=seed,
                        sample_offset=sample_offset, device=device, timeout=timeout,
                        workload=workload, copy=copy, channels=channels)
        return _shape_output(res, labels is not None, aux)

    def stream(self, batches, pipeline, *, inflight=4, seed=None, device=None, timeout=None,
               full=False, workload=None, sample_offset=0, chunk_mb=4.0, copy=False,
               channels=None):
        """Sends each batch of ``batches`` on one bidirectional stream; yields results in order.

        ``batches`` yields arrays, (images, labels) pairs, or (images, {name: aux}) pairs; it is
        read lazily, from a gRPC thread, and never more than ``inflight`` batches ahead of what
        this generator has handed out (that bounds memory whatever the consumer's pace).
        A batch may be a list of samples as ``call`` takes them (``channels`` applies to those).
        A list or tuple of two is read as a pair unless it holds an encoded file or a path, so a
        batch of exactly two raw arrays goes as ``([a, b], None)``.

        A batch larger than ``chunk_mb`` megabytes is sent as several requests of whole samples
        (with their sample offsets, so random draws are unchanged) and reassembled: several
        megabyte-sized messages in flight cost much less per byte than one huge message, on both
        ends. At most ``inflight`` requests are on the wire at once. ``chunk_mb=None`` sends
        each batch as one request. On the shared-memory path each batch is one request whatever
        its size (its message is small); its slots stay reserved from the send until its result
        is handed out (the output slots then live on in the result's arrays), so the pool holds
        at most ``inflight`` batches beyond what the consumer keeps.

        Random ops draw from one seed for the whole stream with each batch's sample_offset
        following on from the last, so the result equals one call on the concatenated batch.

        Yields what ``process`` returns for each batch (or a Result with ``full=True``);
        ``copy=True`` as for ``call``. A per-request error raises its TensorprepError at its
        place in the order, after the results before it; an exception raised by ``batches`` is
        re-raised likewise. Closing the generator early cancels the stream.
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
        self._decide(timeout)
        ahead = threading.Semaphore(inflight)  # batches read but not yet handed out
        wire = threading.Semaphore(inflight)  # requests sent but not yet answered
        stop = threading.Event()
        sent_at = {}  # request id -> perf_counter at send
        batches_info = {}  # batch index -> (parts, labels given, aux given)
        state = {"batches": 0, "done": False, "error": None}
        plans = {}  # request id -> ShmRequest, from its making until its response
        plans_lock = threading.Lock()  # plans, and `stop` as seen by the request thread

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
                    images, aux_items = _prepare_inputs(images, labels, aux, channels)
                    plan, reason = self._plan(images, aux_items, pipeline, timeout)
                    spans = [(0, _batch_len(images))] if plan is not None else _chunks(
                        images, aux_items, chunk_bytes)
                except BaseException as e:
                    state["error"] = e
                    break
                batches_info[index] = (len(spans), labels is not None, aux, reason)
                state["batches"] = index + 1
                for part, (lo, hi) in enumerate(spans):
                    if not acquire(wire):
                        if plan is not None:
                            plan.discard()  # never sent
                        return
                    rid = f"{index}" if len(spans) == 1 else f"{index}.{part}"
                    try:
                        if plan is not None:
                            payload = plan.message(pipeline, request_id=rid, device=device,
                                                   seed=int(seed), sample_offset=offset)
                        else:
                            payload = encode_request(
                                _rows(images, lo, hi), pipeline,
                                aux=[(n, _rows(a, lo, hi), i, f) for n, a, i, f in aux_items],
                                request_id=rid, device=device, seed=int(seed),
                                sample_offset=offset + lo)
                    except BaseException as e:
                        if plan is not None:
                            plan.discard()
                        state["error"] = e
                        state["done"] = True
                        return
                    if plan is not None:
                        with plans_lock:
                            if stop.is_set():
                                plan.discard()  # the consumer is gone; never sent
                                return
                            plans[rid] = plan
                    sent_at[rid] = time.perf_counter()
                    yield payload
                offset += _batch_len(images)
            state["done"] = True

        try:
            call = self._bidi(requests(), timeout=self._deadline(timeout),
                              metadata=self._call_metadata)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        pending = {}  # batch index -> {part: (Result or error, rtt)}
        next_index = 0
        try:
            try:
                for raw in call:
                    now = time.perf_counter()
                    rid, outcome = self._stream_outcome(raw, plans, plans_lock, batches_info,
                                                        copy)
                    rtt = now - sent_at.pop(rid, now)
                    wire.release()
                    self._metrics.observe("remote_stream", rtt, workload)
                    index, _, part = rid.partition(".")
                    pending.setdefault(int(index), {})[int(part or 0)] = (outcome, rtt)
                    while (next_index in pending and next_index in batches_info
                           and len(pending[next_index]) == batches_info[next_index][0]):
                        parts = pending.pop(next_index)
                        _, labels_given, aux_given, _ = batches_info.pop(next_index)
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
            with plans_lock:
                stop.set()
                abandoned = list(plans.values())
                plans.clear()
            call.cancel()
            for plan in abandoned:  # sent, never answered: the server may still run them
                plan.abandon()

    def _stream_outcome(self, raw, plans, plans_lock, batches_info, copy):
        """(request id, Result or (code, message)) for one response of a stream."""
        msg = pb.ProcessResponse.FromString(raw) if len(raw) <= _SMALL_RESPONSE else None
        decoded = decode_response(raw) if msg is None else None
        rid = msg.request_id if msg is not None else decoded.meta.request_id
        with plans_lock:
            plan = plans.pop(rid, None)
        meta = msg if msg is not None else decoded.meta
        if meta.HasField("error"):
            if plan is not None:
                plan.discard()
                if meta.error.code == grpc.StatusCode.NOT_FOUND.value[0]:
                    self._forget_shm(plan.pool)  # later batches decide afresh
            return rid, (meta.error.code, meta.error.message)
        if plan is not None:
            if msg is None:
                msg = pb.ProcessResponse.FromString(raw)
            return rid, self._shm_result(plan, msg, 0.0, copy)
        if decoded is None:
            decoded = decode_response(raw)
        index = int(rid.partition(".")[0]) if rid.partition(".")[0].isdigit() else None
        info = batches_info.get(index)
        res = self._result(decoded, 0.0, info[3] if info else None)
        return rid, _copied(res) if copy else res

    def _assemble(self, parts, batch_id):
        """One Result from the outcomes of a batch's requests (raises the first error)."""
        ordered = [parts[k] for k in sorted(parts)]
        for outcome, _ in ordered:
            if not isinstance(outcome, Result):
                raise error_for(outcome[0], outcome[1], batch_id)
        results = []
        for res, rtt in ordered:
            res.round_trip_s = rtt
            results.append(res)
        if len(results) == 1:
            res = results[0]
            res.request_id = batch_id
            return res
        timings = {k: sum(r.timings[k] for r in results) for k in results[0].timings}
        transfer = {k: sum(r.transfer.get(k, 0) for r in results) for k in results[0].transfer}
        return Result(images=np.concatenate([r.images for r in results]),
                      aux={name: np.concatenate([r.aux[name] for r in results])
                           for name in results[0].aux},
                      device=results[0].device, timings=timings, request_id=batch_id,
                      round_trip_s=max(r.round_trip_s for r in results),
                      transport=results[0].transport,
                      transport_reason=results[0].transport_reason, transfer=transfer)

    # --- helpers -----------------------------------------------------------------------------
    def _result(self, decoded, rtt, reason=None):
        meta = decoded.meta
        return Result(images=decoded.images, aux=decoded.aux,
                      device=_DEVICE_NAMES.get(meta.device, str(meta.device)),
                      timings=_timings(meta.timings), request_id=meta.request_id, round_trip_s=rtt,
                      transport="inline", transport_reason=reason,
                      transfer=_transfer(meta.transfer))


class _StaleRegions(Exception):
    """A shared-memory request was NOT_FOUND: the server does not know our regions."""


def _copied(res):
    """``res`` with arrays that own their (writable) memory."""
    def own(a):
        return a if a is None or (a.flags.owndata and a.flags.writeable) else a.copy()
    res.images = own(res.images)
    res.aux = {k: own(v) for k, v in res.aux.items()}
    return res


def _split_item(item):
    # A list holding an encoded file or a path is a batch of samples, never a pair; so is one of
    # arrays whose length is not 2. Two arrays stay a pair (images, labels), as they always were.
    if isinstance(item, (tuple, list)) and (
            any(is_encoded_item(x) for x in item)
            or (len(item) != 2 and any(isinstance(x, np.ndarray) for x in item))):
        return item, None, None
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
    n = _batch_len(images)
    if chunk_bytes is None or n <= 1:
        return [(0, n)]
    if isinstance(images, SampleList):
        # Samples of their own sizes: contiguous runs, each closed before it would pass the limit.
        sizes = images.sample_nbytes()
        for _, a, _, _ in aux_items:
            sizes = [s + t for s, t in zip(sizes, a.sample_nbytes())]
        spans, lo, size = [], 0, 0
        for i, s in enumerate(sizes):
            if i > lo and size + s > chunk_bytes:
                spans.append((lo, i))
                lo, size = i, 0
            size += s
        spans.append((lo, n))
        return spans
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
