"""The PyTorch adapters with real PyTorch against a real server."""

import numpy as np
import pytest

import tensorprep as tp

torch = pytest.importorskip("torch", reason="PyTorch is not installed in this environment "
                            "(scripts/python-env.sh installs Debian's python3-torch)")
tp_torch = pytest.importorskip("tensorprep.adapters.torch")

RNG = np.random.default_rng(6)


def test_streaming_dataset_with_dataloader(server):
    x = RNG.random((12, 10, 10, 3)).astype(np.float32)
    y = RNG.integers(0, 5, (12, 10, 10)).astype(np.int64).astype(np.int32)
    batches = [(torch.from_numpy(x[i:i + 4]), y[i:i + 4]) for i in range(0, 12, 4)]
    ds = tp_torch.StreamingDataset(server.address, batches, [tp.flip("vertical")], inflight=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    for epoch in range(2):
        got = list(loader)
        assert len(got) == 3
        imgs = torch.cat([g[0] for g in got])
        labels = torch.cat([g[1] for g in got])
        assert imgs.dtype == torch.float32 and labels.dtype == torch.int32
        np.testing.assert_array_equal(imgs.numpy(), x[:, ::-1])
        np.testing.assert_array_equal(labels.numpy(), y[:, ::-1])
        imgs += 1  # writable tensors


def test_streaming_dataset_with_worker_processes(server):
    x = RNG.random((8, 6, 6)).astype(np.float32)
    batches = [x[i:i + 2] for i in range(0, 8, 2)]
    ds = tp_torch.StreamingDataset(server.address, batches, [tp.multiply(2)])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    got = sorted((b.numpy() for b in loader), key=lambda a: float(a.sum()))
    want = sorted((b * 2 for b in batches), key=lambda a: float(a.sum()))
    assert len(got) == 4  # each worker took every other batch, none twice
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]), self.y[i]


def test_collate_sends_one_request_per_batch(server):
    x = RNG.random((10, 12, 14, 3)).astype(np.float32)
    y = RNG.integers(0, 3, (10, 12, 14)).astype(np.int32)
    collate = tp_torch.Collate(server.address, [tp.random_flip(0.5)], seed=3)
    loader = torch.utils.data.DataLoader(_Samples(x, y), batch_size=5, collate_fn=collate)
    got = list(loader)
    assert [g[0].shape[0] for g in got] == [5, 5]
    imgs = torch.cat([g[0] for g in got]).numpy()
    labels = torch.cat([g[1] for g in got]).numpy()
    for i in range(10):
        flipped = np.array_equal(imgs[i], x[i, :, ::-1])
        assert flipped or np.array_equal(imgs[i], x[i])
        np.testing.assert_array_equal(labels[i], y[i, :, ::-1] if flipped else y[i])
    # A fixed seed repeats the first batch's draws exactly as a direct call does.
    with tp.Client(server.address) as c:
        direct = c.process(x[:5], [tp.random_flip(0.5)], seed=3)
    np.testing.assert_array_equal(got[0][0].numpy(), direct)


# --- on the shared-memory path ------------------------------------------------------------------
def test_streaming_dataset_on_shared_memory_keeps_tensors_intact(shm_server):
    """Tensors share the result arrays' memory (no copy) and keep their slots reserved: tensors
    held from one epoch are unchanged after more epochs went through the pool."""
    x = RNG.random((12, 10, 10, 3)).astype(np.float32)
    y = RNG.integers(0, 5, (12, 10, 10)).astype(np.int32)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)]
    ds = tp_torch.StreamingDataset(shm_server.uds_address, batches, [tp.flip("vertical")],
                                   inflight=2, client_options={"shm": True})
    loader = torch.utils.data.DataLoader(ds, batch_size=None)
    first = list(loader)
    for _ in range(2):
        assert len(list(loader)) == 3
    imgs = torch.cat([g[0] for g in first])
    np.testing.assert_array_equal(imgs.numpy(), x[:, ::-1])
    np.testing.assert_array_equal(torch.cat([g[1] for g in first]).numpy(), y[:, ::-1])
    first[0][0] += 1  # writable


def test_streaming_dataset_on_shared_memory_with_worker_processes(shm_server):
    x = RNG.random((8, 6, 6)).astype(np.float32)
    batches = [x[i:i + 2] for i in range(0, 8, 2)]
    ds = tp_torch.StreamingDataset(shm_server.uds_address, batches, [tp.multiply(2)],
                                   client_options={"shm": True})
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2,
                                         multiprocessing_context="spawn")
    got = sorted((b.numpy() for b in loader), key=lambda a: float(a.sum()))
    want = sorted((b * 2 for b in batches), key=lambda a: float(a.sum()))
    assert len(got) == 4
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_collate_on_shared_memory_stacks_into_the_pool(shm_server):
    x = RNG.random((10, 12, 14, 3)).astype(np.float32)
    y = RNG.integers(0, 3, (10, 12, 14)).astype(np.int32)
    collate = tp_torch.Collate(shm_server.uds_address, [tp.flip("horizontal")],
                               client_options={"shm": True})
    loader = torch.utils.data.DataLoader(_Samples(x, y), batch_size=5, collate_fn=collate)
    got = list(loader)
    assert collate._client.transport == "shm"
    np.testing.assert_array_equal(torch.cat([g[0] for g in got]).numpy(), x[:, :, ::-1])
    np.testing.assert_array_equal(torch.cat([g[1] for g in got]).numpy(), y[:, :, ::-1])
    # The stacked batch lives in the pool, so the request names it: no copy into shared memory.
    stacked = tp_torch._stack(collate._client, [x[0], x[1]])
    assert collate._client._pool.locate(stacked) is not None
