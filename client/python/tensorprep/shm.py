"""Shared-memory transport of the Python client: a pool of slots in POSIX shared-memory objects
that the server maps once, so that requests carry references instead of tensor bytes.

How a region comes to be (Pool.start / growth):
  1. an object named ``<key_prefix><pid>-<random>`` is created in /dev/shm with
     O_CREAT|O_EXCL|O_NOFOLLOW (never an existing one), mode 0600, sized and mapped;
  2. a random nonce is written at its start and the region is registered with
     RegisterSharedMemory(expect_prefix=nonce). This is how the client knows that the server is
     on the same host and sees the same memory: a server elsewhere finds no such object
     (NOT_FOUND) or a different one (FAILED_PRECONDITION);
  3. the name is unlinked at once: the server holds its own mapping until Unregister, so nothing
     is left behind in /dev/shm whatever happens to either process.

Slots: 64-byte-aligned blocks handed out first-fit from each region (inputs copied in, results
written by the server). When no region has room the pool registers another one, up to its caps;
past them ``alloc_many`` says why and the caller sends that request inline.

Lifetime rule: an array returned by ``Pool.array`` owns its slot. It, and every view of it, keep
the slot reserved (views keep their base alive); the slot returns to the pool when the last of them
is garbage-collected. The memory stays mapped as long as any such array exists, even after
``close``: an array never points to unmapped memory.

Slots of a request that was abandoned without a response (cancelled, deadline, broken connection)
are quarantined, never reused blindly: the server may still be writing there. They come back only
when SharedMemoryStatus reports that no request uses their region.

A handle is a capability: whoever holds it can use the region (that is how the server tells
clients apart), so the pool never shows it to anyone but the server.

Thread-safety: a Pool may be shared by threads. Slot finalizers may run in any thread, at any
allocation (the cyclic collector); they only append to a queue that the next allocation drains,
so they never take a lock.
"""

import collections
import dataclasses
import errno
import mmap
import os
import secrets
import threading
import weakref

import numpy as np

from ._stubs import pb
from .ops import DTYPES, dtype_enum

ALIGN = 64  # every slot starts on a cache line (and so on every dtype's size)
NONCE_BYTES = 32  # written at a new object's start, sent as RegisterSharedMemory.expect_prefix
SHM_DIR = "/dev/shm"
_MB = 1 << 20

_DTYPE_BY_ENUM = {v: k for k, v in DTYPES.items()}


def result_dtype(pipeline, dtype):
    """The dtype of the main result of ``pipeline`` (a Pipeline message) on a batch of ``dtype``:
    only ``cast`` ops change it. Auxiliary tensors keep their dtype (only geometric ops apply to
    them)."""
    dtype = np.dtype(dtype)
    for op in pipeline.ops:
        if op.WhichOneof("kind") == "cast":
            dtype = _DTYPE_BY_ENUM[op.cast.dtype]
    return np.dtype(dtype)


class SetupError(Exception):
    """Shared memory cannot be set up on this side (no /dev/shm, an unusable prefix, no space)."""


def supported():
    """Whether this machine has POSIX shared memory where the pool creates it."""
    return os.path.isdir(SHM_DIR) and hasattr(os, "ftruncate")


def object_path(key):
    """/dev/shm path of the POSIX shared-memory object ``key`` (as for shm_open: leading slashes
    are dropped; the rest must be a plain file name). Raises SetupError otherwise."""
    name = key.lstrip("/")
    if not name or "/" in name or name in (".", ".."):
        raise SetupError(f"{key!r} is not a usable shared-memory object name")
    return os.path.join(SHM_DIR, name)


def new_key(prefix):
    """A fresh, unguessable object name under ``prefix``."""
    key = f"{prefix}{os.getpid()}-{secrets.token_hex(12)}"
    object_path(key)  # validates the prefix
    return key


def create_object(key, size):
    """Creates the object ``key`` (never opens an existing one), mode 0600, ``size`` bytes, and
    maps it read-write. Returns (fd, mmap); the caller closes/unlinks. Raises SetupError."""
    path = object_path(key)
    flags = os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(
        os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        raise SetupError(f"cannot create a shared-memory object: {os.strerror(e.errno)}") from e
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError) as e:
        os.close(fd)
        _unlink(path)
        msg = os.strerror(e.errno) if isinstance(e, OSError) and e.errno else str(e)
        raise SetupError(f"cannot size or map a {size >> 20} MB shared-memory object: {msg}") from e
    return fd, mm


def _unlink(path):
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def _address(mm):
    probe = np.frombuffer(mm, dtype=np.uint8, count=1)
    addr = probe.__array_interface__["data"][0]
    del probe  # releases the buffer export, so that the map can be closed later
    return addr


class Arena:
    """First-fit allocator of ALIGN-aligned blocks in [0, size). Not thread-safe: Pool locks.

    Free blocks are kept sorted by offset and coalesced, so a pool that hands out and takes back
    blocks of one batch size keeps reusing the same (already faulted-in) pages.
    """

    def __init__(self, size):
        if size <= 0 or size % ALIGN:
            raise ValueError(f"arena size must be a positive multiple of {ALIGN}, got {size}")
        self.size = size
        self.used = 0
        self._free = [[0, size]]  # [offset, length], sorted by offset, never adjacent

    @staticmethod
    def round_up(nbytes):
        return max(ALIGN, (int(nbytes) + ALIGN - 1) // ALIGN * ALIGN)

    def alloc(self, nbytes):
        """Offset of a block of at least ``nbytes`` (rounded up to ALIGN), or None."""
        n = self.round_up(nbytes)
        for i, block in enumerate(self._free):
            if block[1] >= n:
                offset = block[0]
                if block[1] == n:
                    del self._free[i]
                else:
                    block[0] += n
                    block[1] -= n
                self.used += n
                return offset
        return None

    def free(self, offset, nbytes):
        """Returns a block that ``alloc`` handed out. Raises ValueError on a block that overlaps a
        free one (a double free: a broken invariant of the caller)."""
        n = self.round_up(nbytes)
        if offset < 0 or offset % ALIGN or offset + n > self.size:
            raise ValueError(f"free of [{offset}, {offset + n}) outside the arena")
        lo, hi = 0, len(self._free)
        while lo < hi:  # first free block at or after offset
            mid = (lo + hi) // 2
            if self._free[mid][0] < offset:
                lo = mid + 1
            else:
                hi = mid
        prev = self._free[lo - 1] if lo > 0 else None
        nxt = self._free[lo] if lo < len(self._free) else None
        if (prev is not None and prev[0] + prev[1] > offset) or (nxt is not None
                                                                 and offset + n > nxt[0]):
            raise ValueError(f"double free of [{offset}, {offset + n})")
        self.used -= n
        if prev is not None and prev[0] + prev[1] == offset:
            prev[1] += n
            if nxt is not None and offset + n == nxt[0]:
                prev[1] += nxt[1]
                del self._free[lo]
        elif nxt is not None and offset + n == nxt[0]:
            nxt[0] = offset
            nxt[1] += n
        else:
            self._free.insert(lo, [offset, n])

    def largest_free(self):
        return max((b[1] for b in self._free), default=0)

    def free_blocks(self):
        return [tuple(b) for b in self._free]


class Region:
    """One registered object: its handle, size, mapping and allocator."""

    def __init__(self, handle, size, mm):
        self.handle = handle
        self.size = size
        self.mm = mm
        self.base = _address(mm)
        self.arena = Arena(size)


@dataclasses.dataclass(frozen=True, eq=False)
class Slot:
    """A reserved block: ``nbytes`` (as asked) at ``offset`` in ``region``."""
    region: Region
    offset: int
    nbytes: int

    def ref(self, message_cls, nbytes=None):
        """A SharedMemoryRef (``message_cls``) naming the first ``nbytes`` of the slot."""
        return message_cls(region=self.region.handle, offset=self.offset,
                           byte_size=self.nbytes if nbytes is None else int(nbytes))


class Pool:
    """Slots in registered shared-memory regions. See the module doc.

    Args:
      prefix: the server's key_prefix (ListOps).
      register: callable(key, byte_size, nonce) -> handle; raises on refusal (the error the
        caller wants to see: Pool passes it on from ``start`` and swallows it when growing).
      unregister: callable(handle); errors are ignored.
      status: callable([handle]) -> {handle: requests_in_use}, or None (quarantined slots then
        never come back).
      initial_bytes: size of the first region (and the least of the next ones).
      max_bytes: all regions together.
      max_regions: regions at most.
    """

    def __init__(self, prefix, register, unregister, status=None, *, initial_bytes=256 * _MB,
                 max_bytes=2048 * _MB, max_regions=16):
        self.prefix = prefix
        self._register = register
        self._unregister = unregister
        self._status = status
        self.initial_bytes = Arena.round_up(initial_bytes)
        self.max_bytes = int(max_bytes)
        self.max_regions = int(max_regions)
        self._lock = threading.Lock()  # regions' arenas, _quarantine, _closed
        self._grow_lock = threading.Lock()  # one registration at a time
        self._regions = []
        self._released = collections.deque()  # slots whose arrays were collected
        self._quarantine = []  # (slot) abandoned with a request that may still run
        self._closed = False
        self.grow_refused = None  # why the server refused the last new region, if it did

    # --- set-up and teardown -------------------------------------------------------------------
    def start(self):
        """Creates and registers the first region; returns self. Raises SetupError, or what
        ``register`` raised."""
        region = self._new_region(self.initial_bytes)
        with self._lock:
            self._regions.append(region)
        return self

    def _new_region(self, size):
        key = new_key(self.prefix)
        fd, mm = create_object(key, size)
        path = object_path(key)
        try:
            nonce = secrets.token_bytes(NONCE_BYTES)
            mm[:NONCE_BYTES] = nonce
            handle = self._register(key, size, nonce)
        except BaseException:
            mm.close()
            raise
        finally:
            # Registered or not, the name goes now: the server keeps its own mapping, and a
            # crash of either side leaves nothing in /dev/shm.
            os.close(fd)
            _unlink(path)
        return Region(handle, size, mm)

    def close(self, unmap=True):
        """Unregisters every region and unmaps those no array uses (the others are unmapped
        when their last array is collected). Idempotent.

        ``unmap=False`` retires the pool instead: it hands out nothing more, but requests still
        running on other threads may finish into their slots; each map goes when the last
        object using it (the pool, a request, an array) is collected."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            regions = list(self._regions)
            if unmap:
                self._regions = []
            self._quarantine = []
            self._released.clear()
        for region in regions:
            try:
                self._unregister(region.handle)
            except Exception:  # noqa: BLE001 - the server forgets the region with the client
                pass
            if not unmap:
                continue
            try:
                region.mm.close()
            except BufferError:
                pass  # arrays still point into it: the map goes with the last of them

    @property
    def closed(self):
        return self._closed

    # --- allocation ----------------------------------------------------------------------------
    def _drain_locked(self):
        while self._released:
            slot = self._released.popleft()
            if slot.region in self._regions:
                slot.region.arena.free(slot.offset, slot.nbytes)

    def _alloc_locked(self, sizes):
        """All of ``sizes`` or nothing: [Slot] or None."""
        got = []
        for n in sizes:
            for region in self._regions:
                off = region.arena.alloc(n)
                if off is not None:
                    got.append(Slot(region, off, int(n)))
                    break
            else:
                for slot in got:
                    slot.region.arena.free(slot.offset, slot.nbytes)
                return None
        return got

    def alloc_many(self, sizes):
        """Reserves one slot per size (bytes, each >= 1), all or none, growing the pool when it
        must. Returns ([Slot], None) or (None, reason) when they do not fit."""
        sizes = [max(1, int(n)) for n in sizes]
        got, reason = self._try_alloc(sizes)
        if got is not None or reason is not None:
            return got, reason
        with self._grow_lock:
            # Another thread may have grown the pool or freed slots meanwhile.
            got, reason = self._try_alloc(sizes)
            if got is not None or reason is not None:
                return got, reason
            if self._reclaim_quarantine():
                got, reason = self._try_alloc(sizes)
                if got is not None or reason is not None:
                    return got, reason
            reason = self._grow(sum(Arena.round_up(n) for n in sizes))
            if reason is not None:
                return None, reason
            got, reason = self._try_alloc(sizes)
            if got is None and reason is None:
                return None, "the shared-memory pool is full"
            return got, reason

    def _try_alloc(self, sizes):
        """One attempt in the regions there are: (slots, None), (None, None) when they do not
        fit, or (None, why) when the pool is closed."""
        with self._lock:
            if self._closed:
                return None, "the client is closed"
            self._drain_locked()
            return self._alloc_locked(sizes), None

    def _grow(self, need):
        """Registers one more region of at least ``need`` bytes; None, or why not."""
        with self._lock:
            count = len(self._regions)
            total = sum(r.size for r in self._regions)
        size = max(self.initial_bytes, (need + _MB - 1) // _MB * _MB)
        size = min(size, max(need, self.max_bytes - total))
        if count >= self.max_regions or total + size > self.max_bytes:
            return (f"the shared-memory pool is full ({total / _MB:.1f} MB in {count} regions, "
                    f"{self.in_use() / _MB:.1f} MB in use; {need / _MB:.1f} MB more would pass "
                    f"the limit of {self.max_bytes / _MB:.1f} MB / {self.max_regions} regions): "
                    "release result arrays sooner or raise shm_max_mb")
        if self.grow_refused is not None:
            return self.grow_refused
        try:
            region = self._new_region(size)
        except SetupError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - the server's answer, as a reason
            self.grow_refused = f"the server refused another shared-memory region ({e})"
            return self.grow_refused
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                self._regions.append(region)
        if closed:
            try:
                self._unregister(region.handle)
            except Exception:  # noqa: BLE001
                pass
            region.mm.close()
            return "the client is closed"
        return None

    def _reclaim_quarantine(self):
        """Frees quarantined slots of regions that no request uses now. True if any came back."""
        with self._lock:
            if not self._quarantine or self._status is None:
                return False
            handles = sorted({s.region.handle for s in self._quarantine})
        try:
            in_use = self._status(handles)
        except Exception:  # noqa: BLE001 - try again at the next shortage
            return False
        freed = False
        with self._lock:
            keep = []
            for slot in self._quarantine:
                if in_use.get(slot.region.handle, 1) == 0 and slot.region in self._regions:
                    slot.region.arena.free(slot.offset, slot.nbytes)
                    freed = True
                else:
                    keep.append(slot)
            self._quarantine = keep
        return freed

    def free(self, slots):
        """Returns slots at once (the server is done with them and no array uses them)."""
        with self._lock:
            for slot in slots:
                if slot.region in self._regions:
                    slot.region.arena.free(slot.offset, slot.nbytes)

    def quarantine(self, slots):
        """Slots of a request that may still be running on the server: kept out of use until
        SharedMemoryStatus says their region is idle."""
        with self._lock:
            if not self._closed:
                self._quarantine.extend(slots)

    def _release_later(self, slot):
        # Runs from a finalizer: no lock here (see the module doc). After close nothing is
        # queued, so that a closed pool holds no region (and no map) alive.
        if not self._closed:
            self._released.append(slot)

    # --- arrays --------------------------------------------------------------------------------
    def array(self, slot, shape, dtype):
        """An ndarray of ``shape`` x ``dtype`` over ``slot`` that owns it: the slot returns to the
        pool when the array and all its views are gone. Returns (array, finalizer); calling the
        finalizer frees the slot early (only when no reference to the array is left)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > slot.nbytes:
            raise ValueError(f"{shape} x {dtype} does not fit a slot of {slot.nbytes} bytes")
        root = np.frombuffer(slot.region.mm, dtype=dtype, count=count, offset=slot.offset)
        # Finalize the root: every view's base is the root (NumPy stops collapsing bases at the
        # first non-ndarray, the mmap), so the slot outlives all of them.
        fin = weakref.finalize(root, self._release_later, slot)
        return root.reshape(shape), fin

    def scratch(self, slot, shape, dtype):
        """A non-owning ndarray over ``slot``: for copying an input in; drop it before the slot
        is freed."""
        count = int(np.prod(shape, dtype=np.int64))
        return np.frombuffer(slot.region.mm, dtype=np.dtype(dtype), count=count,
                             offset=slot.offset).reshape(shape)

    def empty(self, shape, dtype):
        """An uninitialised array in the pool (see ``array``), or None when it does not fit."""
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in (shape if np.iterable(shape) else (shape,)))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        slots, _ = self.alloc_many([nbytes])
        if slots is None:
            return None
        arr, _ = self.array(slots[0], shape, dtype)
        return arr

    def locate(self, arr):
        """(region, offset) when C-contiguous ``arr`` lies inside one of the pool's regions at an
        offset its dtype's size divides; else None."""
        if not arr.flags.c_contiguous or arr.nbytes == 0:
            return None
        addr = arr.__array_interface__["data"][0]
        for region in list(self._regions):
            if region.base <= addr and addr + arr.nbytes <= region.base + region.size:
                offset = addr - region.base
                if offset % arr.dtype.itemsize == 0:
                    return region, offset
                return None
        return None

    # --- figures ------------------------------------------------------------------------------
    def in_use(self):
        """Bytes reserved now (rounded to slots), quarantined ones included."""
        with self._lock:
            self._drain_locked()
            return sum(r.arena.used for r in self._regions)

    def mapped(self):
        with self._lock:
            return sum(r.size for r in self._regions)

    def region_count(self):
        with self._lock:
            return len(self._regions)

    def quarantined(self):
        with self._lock:
            return len(self._quarantine)


class ShmRequest:
    """One request on the shared-memory path: the slots it reserved and how to turn the response
    into arrays. Made by ``plan_request``; ends exactly once, by ``result`` (a response came),
    ``discard`` (an error response came: the server is done with the slots) or ``abandon`` (no
    response: the server may still run it, so the slots are quarantined)."""

    def __init__(self, pool, images, aux_items, in_refs, copied, out_slots, out_dtypes):
        self.pool = pool
        self.images = images
        self.aux_items = aux_items
        self.in_refs = in_refs  # SharedMemoryRef per input (images first)
        self.copied = copied  # slots holding copies of inputs (freed on the response)
        self.out_slots = out_slots  # one per output (images first)
        self.out_dtypes = out_dtypes
        self._lock = threading.Lock()
        self._ended = False

    def message(self, pipeline, *, request_id, device, seed, sample_offset):
        """The serialised ProcessRequest naming the slots (a small message)."""
        req = pb.ProcessRequest(request_id=request_id, pipeline=pipeline, device=device,
                                seed=seed, sample_offset=sample_offset)
        req.images.dtype = dtype_enum(self.images.dtype)
        req.images.shape.extend(self.images.shape)
        req.images.shm.CopyFrom(self.in_refs[0])
        req.images_output.CopyFrom(self.out_slots[0].ref(pb.SharedMemoryRef))
        for (name, arr, interp, fill), in_ref, out in zip(self.aux_items, self.in_refs[1:],
                                                          self.out_slots[1:]):
            aux = req.aux.add(name=name, interpolation=interp, fill=fill)
            aux.tensor.dtype = dtype_enum(arr.dtype)
            aux.tensor.shape.extend(arr.shape)
            aux.tensor.shm.CopyFrom(in_ref)
            aux.output.CopyFrom(out.ref(pb.SharedMemoryRef))
        return req.SerializeToString()

    def _end(self):
        with self._lock:
            if self._ended:
                return False
            self._ended = True
        # The inputs are no longer needed: do not keep the caller's arrays (and their slots)
        # alive through this object.
        self.images = None
        self.aux_items = None
        return True

    def discard(self):
        """The server answered with an error: every slot is free again."""
        if self._end():
            self.pool.free(self.copied + self.out_slots)

    def abandon(self):
        """No response will come (cancelled, deadline, broken connection)."""
        if self._end():
            self.pool.quarantine(self.copied + self.out_slots)

    def result(self, response, copy=False):
        """(images, {name: aux}) from a successful ProcessResponse: arrays over the output slots
        (each owning its slot, see Pool.array), or ordinary arrays with ``copy``. Raises
        ValueError when the response does not match the request (all slots are freed then)."""
        if not self._end():
            raise RuntimeError("this request already ended")
        pending = list(self.out_slots)
        self.pool.free(self.copied)
        try:
            if len(response.aux) != len(pending) - 1:
                raise ValueError(f"response has {len(response.aux)} aux tensors, the request "
                                 f"{len(pending) - 1}")
            images = self._take(response.images, pending[0], copy, "images")
            pending[0] = None
            aux = {}
            for i, item in enumerate(response.aux, start=1):
                aux[item.name] = self._take(item.tensor, pending[i], copy, f"aux {item.name!r}")
                pending[i] = None
            return images, aux
        finally:
            left = [s for s in pending if s is not None]
            if left:
                self.pool.free(left)

    def _take(self, tensor, slot, copy, what):
        if tensor.dtype not in _DTYPE_BY_ENUM:
            raise ValueError(f"{what}: response tensor has unknown dtype {tensor.dtype}")
        dtype = _DTYPE_BY_ENUM[tensor.dtype].newbyteorder("<")
        shape = tuple(int(d) for d in tensor.shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if tensor.HasField("shm"):
            if tensor.shm != slot.ref(pb.SharedMemoryRef) or nbytes > slot.nbytes:
                raise ValueError(f"{what}: the response names shared memory other than the "
                                 f"request's output ({shape} x {dtype})")
            arr, fin = self.pool.array(slot, shape, dtype)
            if copy:
                out = arr.copy()
                del arr
                fin()
                return out
            return arr
        # The server returned the bytes inline after all: use them, free the slot.
        if len(tensor.data) != nbytes:
            raise ValueError(f"{what}: response tensor of shape {shape} x {dtype} needs {nbytes} "
                             f"bytes, got {len(tensor.data)}")
        self.pool.free([slot])
        arr = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
        return arr.copy() if copy else arr


def plan_request(pool, images, aux_items, pipeline):
    """Reserves slots for one request and copies the inputs that are not already in the pool.

    ``images`` and each aux array come from wire.as_wire_array; ``aux_items`` is a list of
    (name, array, interpolation enum, fill). Outputs: the images' shape with the pipeline's result
    dtype; each aux tensor's own shape and dtype. Returns (ShmRequest, None), or (None, reason)
    when the slots do not fit (the caller sends it inline).
    """
    inputs = [images] + [arr for _, arr, _, _ in aux_items]
    located = [pool.locate(a) for a in inputs]
    out_dtypes = [result_dtype(pipeline, images.dtype)] + [a.dtype for a in inputs[1:]]
    out_sizes = [a.size * dt.itemsize for a, dt in zip(inputs, out_dtypes)]
    copy_sizes = [a.nbytes for a, loc in zip(inputs, located) if loc is None]
    slots, reason = pool.alloc_many(copy_sizes + out_sizes)
    if slots is None:
        return None, reason
    copied, out_slots = slots[:len(copy_sizes)], slots[len(copy_sizes):]
    in_refs = []
    pending = iter(copied)
    try:
        for arr, loc in zip(inputs, located):
            if loc is None:
                slot = next(pending)
                np.copyto(pool.scratch(slot, arr.shape, arr.dtype), arr, casting="no")
                in_refs.append(slot.ref(pb.SharedMemoryRef, arr.nbytes))
            else:
                region, offset = loc
                in_refs.append(pb.SharedMemoryRef(region=region.handle, offset=offset,
                                                  byte_size=arr.nbytes))
    except BaseException:
        pool.free(slots)
        raise
    return ShmRequest(pool, images, aux_items, in_refs, copied, out_slots, out_dtypes), None
