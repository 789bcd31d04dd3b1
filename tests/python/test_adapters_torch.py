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


def _png(array):
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


class _EncodedDataset(torch.utils.data.Dataset):
    """What an ImageNet-style dataset that reads files returns: the encoded bytes and a target
    (a class index, or the mask's PNG file)."""

    def __init__(self, images, targets):
        self.images, self.targets = images, targets

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return _png(self.images[i]), self.targets[i]


@pytest.mark.parametrize("workers", [0, 2])
def test_collate_sends_encoded_files_and_passes_class_targets_through(server, workers):
    sizes = [(20, 30), (26, 18), (24, 24), (31, 22), (18, 40), (22, 22)]
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    classes = list(range(10, 16))
    loader = torch.utils.data.DataLoader(
        _EncodedDataset(images, classes), batch_size=3, num_workers=workers,
        collate_fn=tp_torch.Collate(server.address, [tp.ops.center_crop(16, 16),
                                                     tp.ops.channels_first()]))
    got = list(loader)
    assert len(got) == 2
    for b, (x, y) in enumerate(got):
        assert x.shape == (3, 3, 16, 16) and x.dtype == torch.uint8
        assert y.tolist() == classes[3 * b:3 * b + 3]
        for k in range(3):
            a = images[3 * b + k]
            top, left = round((a.shape[0] - 16) / 2), round((a.shape[1] - 16) / 2)
            np.testing.assert_array_equal(x[k].numpy(),
                                          a[top:top + 16, left:left + 16].transpose(2, 0, 1))


def test_collate_sends_png_masks_beside_encoded_images(server):
    sizes = [(20, 30), (26, 18)]
    images = [RNG.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    masks = [RNG.integers(0, 21, (h, w), dtype=np.uint8) for h, w in sizes]
    collate = tp_torch.Collate(server.address, [tp.ops.crop(2, 3, 12, 14), tp.flip("horizontal")])
    x, m = collate([(_png(a), _png(b)) for a, b in zip(images, masks)])
    assert x.shape == (2, 12, 14, 3) and m.shape == (2, 12, 14)
    for k in range(2):
        np.testing.assert_array_equal(x[k].numpy(), images[k][2:14, 3:17][:, ::-1])
        np.testing.assert_array_equal(m[k].numpy(), masks[k][2:14, 3:17][:, ::-1])


def test_collate_passes_class_targets_of_dense_images_through(server):
    x = RNG.random((4, 8, 8, 3)).astype(np.float32)
    collate = tp_torch.Collate(server.address, [tp.flip("vertical")])
    images, targets = collate([(torch.from_numpy(x[k]), torch.tensor(k * 2)) for k in range(4)])
    np.testing.assert_array_equal(images.numpy(), x[:, ::-1])
    assert targets.tolist() == [0, 2, 4, 6]
