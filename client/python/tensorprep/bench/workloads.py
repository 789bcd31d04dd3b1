"""The seed workloads W1, W2, W3, and the ways of running each.

(a) the in-process Python callback, run by ``tf.numpy_function`` per sample inside ``tf.data``
    (``map(..., num_parallel_calls=AUTOTUNE)`` then ``batch``): NumPy for W1 and W3,
    ``skimage.transform.rotate`` for W2 (the seed's code);
(a') the same callback as an informed user writes it with OpenCV: ``cv2.warpAffine`` (bilinear,
    BORDER_REPLICATE, ``cv2.getRotationMatrix2D`` about ((w-1)/2, (h-1)/2)) for W2 and
    ``cv2.flip`` for W3 (needs opencv-python-headless; no W1 form);
(b) TensorFlow's native ops for the same work, in the same tf.data shape: ``tf.add``,
    ``tf.raw_ops.ImageProjectiveTransformV3``, ``tf.image.flip_left_right`` and ``tf.reverse``
    behind a per-sample ``tf.cond``;
(d) NVIDIA DALI's CPU pipeline (``device_id=None``) fed the same samples by
    ``fn.external_source``: ``x + 1``, ``fn.rotate``, ``fn.flip`` with ``fn.random.coin_flip``
    (needs nvidia-dali);
(c) the service, through the Python client: one ``ProcessRequest`` per batch.

Each workload also knows how to check one batch's outputs against the others (see ``check``).
"""

import dataclasses
import math
import random

import numpy as np

from .. import ops


@dataclasses.dataclass
class Workload:
    name: str
    description: str
    image_shape: tuple  # one sample, as (a) and (b) see it
    image_dtype: object
    label_shape: tuple = None  # None: no labels
    service_shape: tuple = None  # one sample as the service sees it (NHW needs rank >= 2)

    def __post_init__(self):
        if self.service_shape is None:
            self.service_shape = self.image_shape

    @property
    def sample_bytes(self):
        n = int(np.prod(self.image_shape)) * np.dtype(self.image_dtype).itemsize
        if self.label_shape:
            n += int(np.prod(self.label_shape)) * 4
        return n


W1 = Workload("W1", "add 1 to 100,000 int32", (100_000,), np.int32, service_shape=(1, 100_000))
W2 = Workload("W2", "rotate 256x256x3 float32 by 30 deg, bilinear, edge border", (256, 256, 3),
              np.float32)
W3 = Workload("W3", "random left-right flip (p=0.5) of 256x256x3 float32 + 256x256 int32 label",
              (256, 256, 3), np.float32, label_shape=(256, 256))
ALL = {w.name: w for w in (W1, W2, W3)}
ANGLE = 30.0


def make_pool(w, n, seed=0):
    """n distinct samples: images (n, *image_shape) and labels (n, *label_shape) or None."""
    rng = np.random.default_rng(seed)
    if w.image_dtype == np.int32:
        images = rng.integers(-1000, 1000, (n,) + w.image_shape, dtype=np.int32)
    else:
        images = rng.random((n,) + w.image_shape, dtype=np.float32)
    labels = rng.integers(0, 21, (n,) + w.label_shape).astype(np.int32) if w.label_shape else None
    return images, labels


# --- (a) Python callbacks ---------------------------------------------------------------------
def python_callback(w):
    """The per-sample Python function handed to tf.numpy_function, as in the reference article."""
    if w is W1:
        return lambda x: x + 1
    if w is W2:
        from skimage.transform import rotate

        def rotate_image(image):
            return rotate(image, ANGLE, mode="edge").astype(np.float32)

        return rotate_image
    if w is W3:
        def augment(image, label):
            if random.random() < 0.5:
                image = np.fliplr(image)
                label = np.fliplr(label)
            return np.ascontiguousarray(image), np.ascontiguousarray(label)

        return augment
    raise ValueError(w)


def opencv_callback(w):
    """(a'): the per-sample callback written with OpenCV, or None where OpenCV has nothing to add
    (W1: ``x + 1`` is already NumPy's one vectorised pass). Imports cv2 (ImportError when
    opencv-python-headless is missing)."""
    import cv2
    if w is W2:
        h, wd = w.image_shape[:2]
        # Forward matrix, positive = counter-clockwise about the pixel-index centre: the same
        # convention as skimage's rotate (warpAffine inverts it itself).
        m = cv2.getRotationMatrix2D(((wd - 1) / 2.0, (h - 1) / 2.0), ANGLE, 1.0)

        def rotate_image(image):
            return cv2.warpAffine(image, m, (wd, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REPLICATE)

        return rotate_image
    if w is W3:
        def augment(image, label):
            if random.random() < 0.5:
                return cv2.flip(image, 1), cv2.flip(label, 1)  # 1: around the vertical axis
            return image, label

        return augment
    return None


def tf_numpy_function_dataset(tf, w, images, labels, batch, callback):
    """(a): from_tensor_slices -> repeat -> map(numpy_function, AUTOTUNE) -> batch -> prefetch."""
    autotune = tf.data.AUTOTUNE
    if labels is None:
        ds = tf.data.Dataset.from_tensor_slices(images)
        tout = tf.as_dtype(w.image_dtype)

        def fn(x):
            y = tf.numpy_function(callback, [x], tout)
            y.set_shape(w.image_shape)
            return y
    else:
        ds = tf.data.Dataset.from_tensor_slices((images, labels))

        def fn(x, lab):
            y, ylab = tf.numpy_function(callback, [x, lab], [tf.float32, tf.int32])
            y.set_shape(w.image_shape)
            ylab.set_shape(w.label_shape)
            return y, ylab
    return ds.repeat().map(fn, num_parallel_calls=autotune).batch(batch).prefetch(autotune)


# --- (b) TensorFlow native ops ----------------------------------------------------------------
def rotation_inverse(angle_deg, h, w):
    """Output pixel (x, y) -> source position for a counter-clockwise rotation about the centre
    ((w-1)/2, (h-1)/2), as a 2x3 matrix (the skimage / OpenCV convention)."""
    t = math.radians(angle_deg)
    c, s = math.cos(t), math.sin(t)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    return [[c, -s, cx - c * cx + s * cy], [s, c, cy - s * cx - c * cy]]


def tf_native_dataset(tf, w, images, labels, batch):
    """(b): from_tensor_slices -> repeat -> map(native per-sample fn, AUTOTUNE) -> batch ->
    prefetch. Per sample, like (a): on this kind of machine that was faster than mapping the
    same ops over whole batches (a per-sample tf.cond beats a batched tf.where for W3)."""
    autotune = tf.data.AUTOTUNE
    if w is W1:
        def fn(x):
            return tf.add(x, 1)
    elif w is W2:
        m = rotation_inverse(ANGLE, *w.image_shape[:2])
        transform = tf.constant([m[0] + m[1] + [0.0, 0.0]], tf.float32)
        size = tf.constant(w.image_shape[:2])

        def fn(x):
            # fill_mode NEAREST repeats the edge pixel: skimage's mode='edge'.
            return tf.raw_ops.ImageProjectiveTransformV3(
                images=x[None], transforms=transform, output_shape=size,
                fill_value=tf.constant(0.0), interpolation="BILINEAR", fill_mode="NEAREST")[0]
    elif w is W3:
        def fn(x, lab):
            flip = tf.random.uniform([]) < 0.5
            x = tf.cond(flip, lambda: tf.image.flip_left_right(x), lambda: x)
            lab = tf.cond(flip, lambda: tf.reverse(lab, axis=[1]), lambda: lab)
            return x, lab
    else:
        raise ValueError(w)
    ds = tf.data.Dataset.from_tensor_slices(images if labels is None else (images, labels))
    return ds.repeat().map(fn, num_parallel_calls=autotune).batch(batch).prefetch(autotune)


# --- (d) NVIDIA DALI, CPU only ----------------------------------------------------------------
class _CyclingSource:
    """fn.external_source's source: each call returns the next ``batch`` samples of the pool
    (cycling), as lists of per-sample arrays, one list per output. The arrays are views of the
    pool; DALI copies them into its own input buffers, as tf.data's batching does."""

    def __init__(self, arrays, batch):
        self.arrays = arrays
        self.batch = batch
        self.next = 0

    def __call__(self):
        n = self.arrays[0].shape[0]
        idx = [(self.next + k) % n for k in range(self.batch)]
        self.next = (self.next + self.batch) % n
        out = tuple([a[i] for i in idx] for a in self.arrays)
        return out if len(out) > 1 else out[0]


def dali_pipeline(w, images, labels, batch, threads, seed=None):
    """(d): a built DALI pipeline on the CPU (``device_id=None``) doing ``w`` on the pool.

    W1 ``x + 1``; W2 ``fn.rotate`` (angle 30, INTERP_LINEAR, keep_size=True, no fill_value: DALI
    then clamps source coordinates, i.e. repeats the edge pixel, which is the edge border);
    W3 one ``fn.random.coin_flip`` per sample applied by ``fn.flip`` to the image and its label
    alike. Feeds distinct samples through ``fn.external_source``. Imports nvidia.dali
    (ImportError when it is missing). Read batches with ``dali_next``.
    """
    from nvidia.dali import fn, pipeline_def, types

    # fn.flip takes channel layouts only: a label goes in as (H, W, 1), "HWC", and dali_next
    # drops that axis again (views both ways, no copy).
    src = _CyclingSource((images,) if labels is None else (images, labels[..., None]), batch)
    kwargs = {"batch_size": batch, "num_threads": threads, "device_id": None,
              "prefetch_queue_depth": 2}
    if seed is not None:
        kwargs["seed"] = int(seed)

    @pipeline_def(**kwargs)
    def pipe():
        if w is W1:
            x = fn.external_source(source=src, dtype=types.INT32, ndim=1, device="cpu")
            return x + 1
        if w is W2:
            x = fn.external_source(source=src, dtype=types.FLOAT, layout="HWC", device="cpu")
            return fn.rotate(x, angle=ANGLE, interp_type=types.INTERP_LINEAR, keep_size=True)
        if w is W3:
            x, lab = fn.external_source(source=src, num_outputs=2,
                                        dtype=[types.FLOAT, types.INT32], layout=["HWC", "HWC"],
                                        device="cpu")
            coin = fn.random.coin_flip(probability=0.5)
            return fn.flip(x, horizontal=coin, vertical=0), fn.flip(lab, horizontal=coin,
                                                                    vertical=0)
        raise ValueError(w)

    p = pipe()
    p.build()
    return p


def dali_next(p):
    """One batch from a DALI pipeline as dense NumPy arrays (an array, or (images, labels)).
    The copy out of DALI's buffers is part of the way: DALI reuses them for later batches, and
    a training step (or DALI's own framework plugins) needs the batch as one tensor."""
    outs = p.run()
    arrays = tuple(o.as_array() for o in outs)
    if len(arrays) == 2:  # (images, labels (N, H, W, 1))
        return arrays[0], arrays[1].reshape(arrays[1].shape[:3])
    return arrays[0]


# --- (c) the service --------------------------------------------------------------------------
def service_pipeline(w):
    if w is W1:
        return [ops.add(1)]
    if w is W2:
        return [ops.rotate(ANGLE, interpolation="bilinear", border="edge")]
    if w is W3:
        return [ops.random_flip(0.5, "horizontal")]
    raise ValueError(w)


def service_batches(w, images, labels, batch):
    """The pool cut into batches of ``batch`` (cycled to fill), shaped as the service takes them."""
    n = images.shape[0]
    out = []
    for start in range(0, n, batch):
        idx = [(start + i) % n for i in range(batch)]
        x = np.ascontiguousarray(images[idx].reshape((batch,) + w.service_shape))
        out.append(x if labels is None else (x, np.ascontiguousarray(labels[idx])))
    return out


# --- equality ---------------------------------------------------------------------------------
W2_TOLERANCE = 1e-4  # max |difference| between any two ways, on images in [0, 1)
# Ways whose W2 resampling is not exact bilinear, checked roughly against the first way (the
# seed's skimage): (max |difference|, mean |difference|), on random pixels in [0, 1). OpenCV's
# warpAffine quantises sample positions to 1/32 pixel, so a sample can move by up to ~1/32 of
# a neighbour difference (measured: max 0.026, mean 0.0032). DALI's CPU rotate's source
# positions differ slightly from exact ones (measured: max 5.0e-4, mean 4.3e-5); its centre,
# direction and edge border are the seed's. The bounds are a few times what was measured and far
# below what a mistake gives (measured with OpenCV: centre (w/2, h/2) max 0.41 / mean 0.088;
# angle -30 0.96 / 0.23; angle 31 0.97 / 0.21; constant border 1.0 / 0.080).
W2_ROUGH = {"cv": (0.1, 0.01), "dali": (0.005, 5e-4)}


def check(w, images, labels, outputs):
    """Checks the ways' outputs for one batch against each other; raises AssertionError.

    ``outputs``: way -> images (N, *image_shape) or (images, labels). W1 must be exact; W2 within
    W2_TOLERANCE of the first way (float32 TensorFlow vs double scikit-image vs the service's
    exact bilinear), or within W2_ROUGH for the ways listed there; W3 draws differ between ways,
    so each sample must be either unchanged or mirrored, its label mirrored exactly when its
    image is, and both outcomes must occur. Returns a dict of measured differences for the
    report.
    """
    found = {}
    if w is W1:
        want = images + 1
        for way, out in outputs.items():
            got = np.asarray(out).reshape(want.shape)
            if not np.array_equal(got, want):
                raise AssertionError(f"W1 {way}: {np.count_nonzero(got != want)} elements differ")
            found[way] = 0.0
    elif w is W2:
        ways = list(outputs)
        base = np.asarray(outputs[ways[0]], np.float64).reshape(images.shape)
        for way in ways[1:]:
            got = np.asarray(outputs[way], np.float64).reshape(images.shape)
            err = np.abs(got - base)
            diff = float(err.max())
            if way in W2_ROUGH:
                most, mean = W2_ROUGH[way]
                avg = float(err.mean())
                found[f"{way} vs {ways[0]}"] = {"max": diff, "mean": avg}
                if not (diff <= most and avg <= mean):
                    raise AssertionError(f"W2 {way} differs from {ways[0]} by max {diff} "
                                         f"(bound {most}), mean {avg} (bound {mean})")
                continue
            found[f"{way} vs {ways[0]}"] = diff
            if not diff <= W2_TOLERANCE:
                raise AssertionError(f"W2 {way} differs from {ways[0]} by {diff} > {W2_TOLERANCE}")
    elif w is W3:
        mirrored_img = images[:, :, ::-1]
        mirrored_lab = labels[:, :, ::-1]
        for way, (img, lab) in outputs.items():
            img = np.asarray(img)
            lab = np.asarray(lab)
            flips = 0
            for i in range(images.shape[0]):
                f = np.array_equal(img[i], mirrored_img[i])
                if not f and not np.array_equal(img[i], images[i]):
                    raise AssertionError(f"W3 {way}: sample {i} is neither unchanged nor mirrored")
                if not np.array_equal(lab[i], mirrored_lab[i] if f else labels[i]):
                    raise AssertionError(f"W3 {way}: label {i} does not follow its image")
                flips += f
            # A random flip at p = 0.5 that flips all or none of n samples: a bug when n is large
            # (chance 2^(1-n)), but a tiny run (n = 5: 1 in 16) may see it by chance.
            if images.shape[0] >= 24 and not 0 < flips < images.shape[0]:
                raise AssertionError(f"W3 {way}: {flips} of {images.shape[0]} samples flipped")
            found[way] = flips / images.shape[0]
    return found
