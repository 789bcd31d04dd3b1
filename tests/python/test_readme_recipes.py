"""The README's training-transform recipes run as written (against a test server) and make what
their comments say."""

import pathlib

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def recipes():
    blocks = [b.split("```")[0] for b in README.read_text().split("```python\n")[1:]]
    return [b for b in blocks if "imagenet = [" in b or "segmentation = [" in b]


def test_training_transforms_run_as_written(server):
    code = recipes()
    assert len(code) == 2
    scope = {}
    for block in code:
        exec(block.replace("localhost:50051", server.address), scope)  # noqa: S102 - our README
    batch = scope["batch"]
    assert batch.shape == (64, 3, 224, 224) and batch.dtype == np.float16
    assert np.isfinite(batch).all()
    x, mask = scope["x"], scope["aux"]["mask"]
    assert x.shape == (8, 3, 512, 512) and x.dtype == np.float32
    assert mask.shape == (8, 512, 512) and mask.dtype == np.uint8
    # Labels stay labels (nearest sampling), and the 512x512 crop of 600x500 pads with 255.
    assert set(np.unique(mask)) <= set(range(21)) | {255}
    assert (mask == 255).any() and (mask < 21).any()
