"""PyTorch adapters: an IterableDataset that streams batches through the service, and a collate
function that sends each collated batch as one request.

    ds = StreamingDataset("127.0.0.1:50051", batches, [tp.random_flip(0.5)], inflight=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=None)   # ds yields whole batches

    loader = torch.utils.data.DataLoader(samples, batch_size=64,
                                         collate_fn=Collate("127.0.0.1:50051", [tp.flip()]))

Both take an address, not a Client: a gRPC channel must not cross a fork, so each DataLoader
worker process opens its own connection. Python runs once per batch; the per-sample work runs on
the server.

Transport: each connection uses shared memory when the server is on the same host and allows it
(``shm="auto"``; ``client_options={"shm": False}`` turns it off), else inline bytes. Tensors come
back as writable CPU tensors:
- shared memory: no copy. ``torch.from_numpy`` shares the result array's memory and holds a
  reference to the array, so its slot stays reserved as long as the tensor (or a view of it)
  lives. DataLoader worker processes hand tensors to the main process through torch's own shared
  memory (a copy torch makes), and ``pin_memory=True`` copies into pinned memory.
- inline: one copy out of the received message (the received bytes are read-only).
``Collate`` stacks the samples straight into a shared-memory array (``Client.empty``), so the
batch is written once, where the server reads it.
"""

import itertools
import os

import numpy as np
import torch
import torch.utils.data

from ..client import Client
from ..wire import is_encoded_item


def _to_torch(value):
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_torch(v) for v in value)
    if not value.flags.writeable:  # a view into a received message
        value = np.array(value, copy=True)
    return torch.from_numpy(value)


def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.numpy()
    return np.asarray(value)


class StreamingDataset(torch.utils.data.IterableDataset):
    """Yields processed batches (a tensor, or (images, labels)) from one stream per iterator.

    ``batches``: a sequence or a callable returning an iterable of batches (arrays or tensors,
    or (images, labels) pairs); a sequence or callable can be iterated again each epoch. With
    several DataLoader workers each takes every k-th batch. ``seed=None`` draws fresh random
    parameters every epoch.
    """

    def __init__(self, address, batches, pipeline, *, inflight=4, seed=None, device=None,
                 timeout=None, client_options=None):
        super().__init__()
        self.address = address
        self.batches = batches
        self.pipeline = pipeline
        self.inflight = inflight
        self.seed = seed
        self.device = device
        self.timeout = timeout
        self.client_options = dict(client_options or {})

    def _source(self):
        it = iter(self.batches()) if callable(self.batches) else iter(self.batches)
        info = torch.utils.data.get_worker_info()
        if info is not None and info.num_workers > 1:
            it = itertools.islice(it, info.id, None, info.num_workers)
        for item in it:
            if isinstance(item, (tuple, list)):
                yield tuple(_to_numpy(v) for v in item)
            else:
                yield _to_numpy(item)

    def __iter__(self):
        with Client(self.address, **self.client_options) as client:
            for out in client.stream(self._source(), self.pipeline, inflight=self.inflight,
                                     seed=self.seed, device=self.device, timeout=self.timeout):
                yield _to_torch(out)


class Collate:
    """A DataLoader ``collate_fn``: stacks the samples and processes them in one request.

    Samples are images or (image, label) pairs; returns a tensor or (images, labels) tensors.
    An image is an array/tensor, or an encoded JPEG/PNG file (``bytes``, or a path) that the
    server decodes: a batch of files goes as a list of samples (each of its own size; the
    pipeline must bring them to one). A label is a mask that follows the geometry (an array of the
    image's height and width, or a PNG file beside an encoded image), or a class target (a number
    or 0-d array/tensor), which is not sent and comes back as one tensor, in order. The connection
    is opened lazily in each process that calls it.
    """

    def __init__(self, address, pipeline, *, seed=None, device=None, timeout=None,
                 client_options=None):
        self.address = address
        self.pipeline = pipeline
        self.seed = seed
        self.device = device
        self.timeout = timeout
        self.client_options = dict(client_options or {})
        self._client = None
        self._pid = None

    def _conn(self):
        if self._client is None or self._pid != os.getpid():
            self._client = Client(self.address, **self.client_options)
            self._pid = os.getpid()
        return self._client

    def __getstate__(self):  # sent to worker processes without the channel
        state = dict(self.__dict__)
        state["_client"] = None
        state["_pid"] = None
        return state

    def __call__(self, samples):
        if not samples:
            raise ValueError("Collate: empty batch")
        conn = self._conn()
        pairs = isinstance(samples[0], (tuple, list))
        images = [s[0] for s in samples] if pairs else list(samples)
        labels = [s[1] for s in samples] if pairs else None
        targets = None
        if labels is not None and all(_is_target(v) for v in labels):
            targets, labels = torch.as_tensor(np.array([_to_numpy(v) for v in labels])), None
        if any(is_encoded_item(x) for x in images):
            images = list(images)  # a list of files: decoded by the server
            if labels is not None:
                labels = [v if is_encoded_item(v) else _to_numpy(v) for v in labels]
        else:
            images = _stack(conn, [_to_numpy(x) for x in images])
            if labels is not None:
                labels = _stack(conn, [_to_numpy(v) for v in labels])
        out = conn.process(images, self.pipeline, labels=labels, seed=self.seed,
                           device=self.device, timeout=self.timeout)
        out = _to_torch(out)
        return out if targets is None else (out, targets)


def _is_target(value):
    """A class target: a number, or a 0-d array or tensor (not a mask, not a file)."""
    if isinstance(value, (bool, int, float, np.number)):
        return True
    return isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0


def _stack(client, arrays):
    """np.stack into the client's shared memory (an ordinary array on the inline path)."""
    first = arrays[0]
    if any(a.shape != first.shape or a.dtype != first.dtype for a in arrays):
        return np.stack(arrays)  # let NumPy report (or promote) what does not match
    out = client.empty((len(arrays),) + first.shape, first.dtype)
    return np.stack(arrays, out=out)
