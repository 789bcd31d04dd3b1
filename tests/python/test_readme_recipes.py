"""The README's training-transform and encoded-image recipes run as written (against a test
server) and make what their comments say."""

import pathlib

import numpy as np
import pytest

import tensorprep as tp

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


def encoded_recipes():
    section = README.read_text().split("## Encoded images\n")[1].split("\n## ")[0]
    return [b.split("```")[0] for b in section.split("```python\n")[1:]]


def test_encoded_images_recipes_run_as_written(server, tmp_path, monkeypatch):
    Image = pytest.importorskip("PIL.Image")
    tf = pytest.importorskip("tensorflow")
    client_block, tf_block = encoded_recipes()
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(2)
    # Images of their own sizes: a.jpg, b.jpg (and b.png), c.jpg; masks a_mask.png, b_mask.png.
    for name, (h, w) in {"a": (300, 260), "b": (280, 320), "c": (240, 400)}.items():
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.save(f"{name}.jpg")
        if name == "b":
            img.save("b.png")
        Image.fromarray(rng.integers(0, 21, (h, w), dtype=np.uint8), "P").save(f"{name}_mask.png")
    scope = {}
    exec(client_block.replace("localhost:50051", server.address), scope)  # noqa: S102
    assert scope["batch"].shape == (3, 3, 224, 224) and scope["batch"].dtype == np.float32
    assert scope["res"].timings["image_decode"] > 0
    assert scope["x"].shape == (2, 256, 256, 3) and scope["masks"].shape == (2, 256, 256)
    assert set(np.unique(scope["masks"])) <= set(range(21))
    assert scope["grey"].shape == (1, 64, 64, 1)

    with tf.io.TFRecordWriter("train.tfrecord") as w:
        for name in "ab":
            feature = {key: tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[open(path, "rb").read()]))
                for key, path in (("image", f"{name}.jpg"), ("mask", f"{name}_mask.png"))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feature))
                    .SerializeToString())
    tf_block = tf_block.replace("localhost:50051", server.address).replace(
        "    ...", "    seen.append((images.shape, masks.shape))")
    scope = {"ops": tp.ops, "seen": []}
    exec(tf_block, scope)  # noqa: S102
    assert scope["seen"] == [((2, 224, 224, 3), (2, 224, 224))]
