"""Workload W5: encoded images in, training tensors out, three ways, in one run on one machine.

    python -m tensorprep.bench --workloads W5 --out out/bench-w5

JPEG files in (quality 90, made in the run from synthetic images: smooth gradients, a wave,
shapes and noise, so that their sizes are those of photographs, about 20-40 KiB at 256x256), two
sets of distinct images cycled (``--pool``, default 256 each; ``--sets``): "256", all 256x256,
and "varied", ImageNet-like sizes (the shorter side 300-400, aspect 3:4 to 4:3, either way up).
Decode + RandomResizedCrop to 224x224 (scale (0.08, 1), ratio (3/4, 4/3), bilinear, antialiased)
+ horizontal flip (p = 0.5) + normalize (ImageNet mean and std, on values 0..255 with mean and
std scaled by 255); float16 channels-first (N, 3, 224, 224) out.

(a) ``tensorprep``: the service, started by the bench on 127.0.0.1 (or ``--address``), through
    the Python client: each batch a list of the JPEG files as bytes, which the client sends as
    they are in ``ProcessRequest.image_list``, on one ``Client.stream`` (``--inflight`` requests
    in flight, one request per batch), results inline in the messages and handed out as views:
    random_resized_crop, random_flip, cast float32, normalize (mean and std x 255), cast float16,
    channels_first.
(b) ``tf``: tf.data over the encoded strings, ``map(..., num_parallel_calls=AUTOTUNE)`` per
    image: ``tf.io.decode_jpeg`` (INTEGER_ACCURATE, libjpeg's default, as the others decode),
    ``tf.image.sample_distorted_bounding_box`` for the box (torchvision's rule: ten tries, then
    the whole image), ``tf.slice``, ``tf.image.resize`` (bilinear, antialias), a flip behind
    ``tf.cond``, normalize, ``tf.cast`` float16, ``tf.transpose``; then batch and prefetch.
    ``tf-fused`` (not run by default): the same with ``tf.image.decode_and_crop_jpeg``, which
    decodes only the box (the TF ResNet reference preprocessing).
(c) ``dali``: DALI's CPU pipeline (``device_id=None``) fed the encoded files by
    ``fn.external_source``: ``fn.decoders.image(device="cpu")``, ``fn.random_resized_crop``
    (antialiased), ``fn.crop_mirror_normalize`` (mirror = ``fn.random.coin_flip``, "CHW",
    FLOAT16); each batch copied out with ``as_array()``.
(d) the bytes baseline, not timed: what one image costs on the wire when it is sent decoded, as
    float32 (H, W, 3), instead of as its JPEG file; and the float16 result that comes back.

Bytes per image: for the service, the server's own count of tensor bytes (``transfer``
inline_bytes_in / inline_bytes_out of each response); for tf.data and DALI, which run in the
training process, the encoded bytes they read (nothing crosses a wire).

Before any timing, for the "256" set, one batch of the workload made deterministic (crop = the
whole image, flip kept at p = 0.5) goes through every way and is compared with a reference made
with PIL's decoder and w4's NumPy antialiased resize: every sample must match it or its mirror
within CHECK_BOUNDS (both outcomes must occur from 24 samples on). For every set, the real
workload's batch of every way must be float16 (N, 3, 224, 224), finite, within the range
normalisation allows, and mostly differ from the whole image resized (the crops are random). The
service's batch must also be equal, bit for bit, when sent as two requests (sample offsets).
A server that does not take image_list is reported as "not served" and the other ways still run.
"""

import dataclasses
import gc
import io
import itertools
import os
import pathlib
import sys
import time

import numpy as np

from .. import ops
from . import w4

NAME = "W5"
DESCRIPTION = ("JPEG in (quality 90) -> decode + RandomResizedCrop 224 + flip (p=0.5) + "
               "normalize -> float16 (N, 3, 224, 224)")
OUT_SIZE = w4.OUT_SIZE
MEAN = w4.MEAN
STD = w4.STD
QUALITY = 90
SETS = {
    "256": "256x256",
    "varied": "ImageNet-like sizes: shorter side 300-400, aspect 3:4 to 4:3, either way up",
}
DEFAULT_SETS = ("256", "varied")
DEFAULT_POOL = 256  # distinct images per set
LABELS = {
    "tensorprep": "(a) tensorprep stream, JPEG in",
    "tf": "(b) tf.data, decode_jpeg + tf.image",
    "tf-fused": "(b') tf.data, decode_and_crop_jpeg",
    "dali": "(c) DALI CPU, fn.decoders.image",
}
DEFAULT_WAYS = ("tensorprep", "tf", "dali")
BASELINES = ("tf", "tf-fused", "dali")
BASELINE_NAMES = {"tf": "tf.data", "tf-fused": "tf.data fused", "dali": "DALI CPU"}
SERVICE_OPS = ("random_resized_crop", "random_flip", "cast", "normalize", "channels_first")
NOT_SERVED = "not served by this server"
# Deterministic check against the PIL + NumPy reference, per sample, (max, mean) of |difference|
# in normalised units (one uint8 level is 1/255/std, about 0.017). Every decoder here is
# libjpeg-turbo with the accurate integer IDCT and fancy upsampling, so the decoded pixels agree;
# tf.data does not round the resized image to uint8 (the reference and the others do), which
# alone is up to half a level. Measured on 32 images of the 256 set: the service max 0.018 /
# mean 0.00017, DALI 0.018 / 0.00027, tf.data 0.0097 / 0.0043. What a mistake gives, from W4's
# measurements: no antialiasing mean 0.12, a wrong mean or std 0.23, a pixel's shift 0.73.
CHECK_BOUNDS = (0.1, 0.008)
VALUE_RANGE = w4.VALUE_RANGE
# Issue 17's targets: the service at >= 1x both peers, and >= 10x fewer bytes in than float32.
SPEED_TARGETS = (("tf", 1.0), ("dali", 1.0))
BYTES_TARGET = 10.0


@dataclasses.dataclass(frozen=True)
class Config:
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5


WORKLOAD = Config()
CHECK = Config(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.5)


# --- data ---------------------------------------------------------------------------------------
def synthetic_image(rng, height, width):
    """A uint8 (H, W, 3) image that compresses like a photograph: a colour gradient, a wave,
    a few ellipses and boxes, and sensor-like noise of random strength."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    slope = rng.uniform(-1.0, 1.0, (2, 3))
    img = 128.0 + 100.0 * (slope[0] * (x - 0.5) + slope[1] * (y - 0.5))
    freq = rng.uniform(1.0, 6.0, 2)
    img = img + 40.0 * np.sin(2 * np.pi * (freq[0] * x + freq[1] * y) + rng.uniform(0, 6.3, 3))
    img = np.broadcast_to(img, (height, width, 3)).copy()
    yy, xx = np.mgrid[0:height, 0:width]
    for _ in range(int(rng.integers(4, 10))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.05, 0.3) * height, rng.uniform(0.05, 0.3) * width
        if rng.random() < 0.5:
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        else:
            inside = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        img[inside] = 0.3 * img[inside] + 0.7 * rng.uniform(0, 255, 3)
    img += rng.normal(0.0, rng.uniform(6.0, 14.0), img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def image_size(rng, image_set):
    """(height, width) of one image of the set."""
    if image_set == "256":
        return 256, 256
    if image_set == "varied":
        short = int(rng.integers(300, 401))
        long_side = min(500, int(round(short * rng.uniform(1.0, 4.0 / 3.0))))
        return (short, long_side) if rng.random() < 0.5 else (long_side, short)
    raise ValueError(f"unknown W5 image set {image_set!r}; expected {', '.join(SETS)}")


def encode_jpeg(image, quality=QUALITY):
    """JPEG bytes of a uint8 (H, W, 3) RGB image (PIL, else OpenCV, else TensorFlow)."""
    try:
        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    except ImportError:
        pass
    try:
        import cv2
        ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        return data.tobytes()
    except ImportError:
        import tensorflow as tf
        return tf.io.encode_jpeg(image, quality=quality).numpy()


def decode_jpeg(data):
    """uint8 (H, W, 3) RGB of JPEG bytes: PIL (libjpeg's accurate integer IDCT, fancy
    upsampling), else OpenCV."""
    try:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except ImportError:
        import cv2
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1].copy()


def make_set(image_set, n, seed=0, quality=QUALITY):
    """n distinct JPEG files (a list of bytes) of the set."""
    rng = np.random.default_rng([seed, list(SETS).index(image_set)])
    return [encode_jpeg(synthetic_image(rng, *image_size(rng, image_set)), quality)
            for _ in range(n)]


def float32_request_bytes(decoded):
    """Bytes per image of a request carrying these images decoded, as float32 (H, W, 3) samples
    of an image_list (a dense float32 batch costs the same, to a few bytes)."""
    from .._stubs import pb
    total = 0
    for img in decoded:
        t = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=list(img.shape),
                      data=bytes(img.size * 4))
        total += pb.ProcessRequest(image_list=pb.ImageList(
            samples=[pb.ImageSample(tensor=t)])).ByteSize()
    return total / len(decoded)


def batches_of(items, batch):
    """The pool cut into batches of ``batch`` items (cycled to fill)."""
    n = len(items)
    return [[items[(s + i) % n] for i in range(batch)] for s in range(0, n, batch)]


# --- (a) the service ----------------------------------------------------------------------------
def service_pipeline(cfg):
    """The ops for ``cfg``: normalize on values 0..255 with mean and std scaled by 255 (one op
    instead of a division and a normalize; the same values up to float32 rounding)."""
    return [ops.random_resized_crop(OUT_SIZE, OUT_SIZE, scale=cfg.scale, ratio=cfg.ratio,
                                    interpolation="bilinear", antialias=True),
            ops.random_flip(cfg.flip_p), ops.cast("float32"),
            ops.normalize([255.0 * m for m in MEAN], [255.0 * s for s in STD]),
            ops.cast("float16"), ops.channels_first()]


def service_batch(client, encoded, pipeline, seed, parts=1):
    """One batch of files through the service (``client``: a tensorprep.Client), as one unary
    call, or as ``parts`` requests on one stream (sample offsets following on, so the draws
    equal the unary call's); the images as an ordinary array."""
    if parts == 1:
        return np.array(client.process(list(encoded), pipeline, seed=seed, copy=True))
    n = len(encoded)
    bounds = [n * k // parts for k in range(parts + 1)]
    pieces = [list(encoded[lo:hi]) for lo, hi in zip(bounds, bounds[1:])]
    return np.concatenate([np.array(x) for x in client.stream(
        pieces, pipeline, seed=seed, inflight=parts, chunk_mb=None)])


def service_support(client):
    """None when the server lists every op of SERVICE_OPS, else why not."""
    names = {op.name for op in client.list_ops().ops}
    missing = [name for name in SERVICE_OPS if name not in names]
    return f"{NOT_SERVED} (ListOps lacks {', '.join(missing)})" if missing else None


# --- (b) tf.data --------------------------------------------------------------------------------
def tf_dataset(tf, encoded, cfg, batch, fused=False, repeat=True):
    """tf.data over the encoded strings doing ``cfg`` per image; batches of float16 (N, 3, 224,
    224). ``fused``: decode only the box (tf.image.decode_and_crop_jpeg)."""
    autotune = tf.data.AUTOTUNE
    mean = tf.constant([255.0 * m for m in MEAN], tf.float32)
    std = tf.constant([255.0 * s for s in STD], tf.float32)
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32)

    def one(data):
        if fused:
            shape = tf.io.extract_jpeg_shape(data)
        else:
            image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
            shape = tf.shape(image)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape, bounding_boxes=whole, min_object_covered=0.0,
            aspect_ratio_range=list(cfg.ratio), area_range=list(cfg.scale), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        if fused:
            window = tf.stack([begin[0], begin[1], size[0], size[1]])
            image = tf.image.decode_and_crop_jpeg(data, window, channels=3,
                                                  dct_method="INTEGER_ACCURATE")
        else:
            image = tf.slice(image, begin, size)
        x = tf.image.resize(image, [OUT_SIZE, OUT_SIZE], method="bilinear", antialias=True)
        if cfg.flip_p > 0:
            x = tf.cond(tf.random.uniform([]) < cfg.flip_p, lambda: tf.reverse(x, axis=[1]),
                        lambda: x)
        x = tf.cast((x - mean) / std, tf.float16)
        return tf.transpose(x, [2, 0, 1])

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(encoded, dtype=tf.string))
    if repeat:
        ds = ds.repeat()
    return ds.map(one, num_parallel_calls=autotune).batch(batch).prefetch(autotune)


# --- (c) DALI -----------------------------------------------------------------------------------
def dali_pipeline(encoded, cfg, batch, threads, seed=None):
    """A built DALI CPU pipeline doing ``cfg`` on the encoded files. Read with dali_next."""
    from nvidia.dali import fn, pipeline_def, types

    files = [np.frombuffer(b, np.uint8) for b in encoded]
    start = itertools.count(0, batch)

    def src():
        """The next ``batch`` files of the pool (cycling), as 1-D uint8 arrays (views)."""
        s = next(start)
        return [files[(s + k) % len(files)] for k in range(batch)]
    kwargs = {"batch_size": batch, "num_threads": threads, "device_id": None,
              "prefetch_queue_depth": 2}
    if seed is not None:
        kwargs["seed"] = int(seed)

    @pipeline_def(**kwargs)
    def pipe():
        data = fn.external_source(source=src, dtype=types.UINT8, ndim=1, device="cpu")
        x = fn.decoders.image(data, device="cpu", output_type=types.RGB)
        x = fn.random_resized_crop(x, size=(OUT_SIZE, OUT_SIZE), random_area=list(cfg.scale),
                                   random_aspect_ratio=list(cfg.ratio),
                                   interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.crop_mirror_normalize(
            x, dtype=types.FLOAT16, output_layout="CHW",
            mean=[255.0 * m for m in MEAN], std=[255.0 * s for s in STD],
            mirror=fn.random.coin_flip(probability=cfg.flip_p))

    p = pipe()
    p.build()
    return p


dali_next = w4.dali_next


# --- checks -------------------------------------------------------------------------------------
def check_workload(decoded, outputs, image_set):
    """The real workload's outputs (way -> (N, 3, 224, 224)) for images ``decoded`` (a list of
    uint8 (H, W, 3)): float16 NCHW of the right size, finite, within VALUE_RANGE, and mostly
    different from the whole image resized (mirrored or not): the crops are random. Raises
    AssertionError; returns {way: {"shape", "dtype", "min", "max", "cropped"}}."""
    whole = [w4.reference(img[None])[0] for img in decoded]
    n = len(decoded)
    found = {}
    for way, out in outputs.items():
        got = np.asarray(out)
        shape = (n, 3, OUT_SIZE, OUT_SIZE)
        if got.dtype != np.float16 or got.shape != shape:
            raise AssertionError(f"W5 {image_set} {way}: {got.dtype} {got.shape}, expected "
                                 f"float16 {shape}")
        g = got.astype(np.float64)
        if not np.isfinite(g).all():
            raise AssertionError(f"W5 {image_set} {way}: non-finite values")
        lo, hi = float(g.min()), float(g.max())
        if lo < VALUE_RANGE[0] or hi > VALUE_RANGE[1]:
            raise AssertionError(f"W5 {image_set} {way}: values in [{lo:.3g}, {hi:.3g}], outside "
                                 f"[{VALUE_RANGE[0]:.3g}, {VALUE_RANGE[1]:.3g}]")
        far = [min(np.abs(g[i] - whole[i]).mean(), np.abs(g[i] - whole[i][..., ::-1]).mean())
               > 10 * CHECK_BOUNDS[1] for i in range(n)]
        if n >= 4 and sum(far) < n // 2:
            raise AssertionError(f"W5 {image_set} {way}: only {sum(far)} of {n} samples differ "
                                 f"from the whole image: is the crop random?")
        found[way] = {"shape": list(got.shape), "dtype": str(got.dtype), "min": lo, "max": hi,
                      "cropped": sum(far) / n}
    return found


def check_deterministic(decoded, outputs):
    """CHECK's outputs against PIL's decode + w4's reference resize (same-size images only):
    w4.check_deterministic with W5's bounds."""
    return w4.check_deterministic(np.stack(decoded), outputs, bounds=CHECK_BOUNDS, name=NAME)


# --- the run ------------------------------------------------------------------------------------
def parse_ways(text):
    ways = [w.strip() for w in text.split(",") if w.strip()]
    for way in ways:
        if way not in LABELS:
            sys.exit(f"bench: unknown W5 way {way!r}; expected {', '.join(LABELS)}")
    return list(dict.fromkeys(ways))


def parse_sets(text):
    sets = [s.strip() for s in text.split(",") if s.strip()]
    for s in sets:
        if s not in SETS:
            sys.exit(f"bench: unknown W5 image set {s!r}; expected {', '.join(SETS)}")
    return list(dict.fromkeys(sets))


def _mean(values):
    return float(np.mean(values)) if len(values) else None


def run(args):
    """W5 on its own: data, checks, then every way's cells; writes benchmark.{md,json,png}."""
    from .. import tune_malloc
    from . import __main__ as harness
    from . import measure as ms
    from . import report

    tuned = False if args.no_tune_malloc else tune_malloc()
    ways = parse_ways(args.ways or ",".join(DEFAULT_WAYS))
    sets = parse_sets(getattr(args, "sets", None) or ",".join(DEFAULT_SETS))
    batches = [int(b) for b in (args.batches or "64").split(",")]
    quality = getattr(args, "jpeg_quality", None) or QUALITY
    pool_n = args.pool or DEFAULT_POOL
    versions = {"numpy": np.__version__}
    results = {"workload": NAME, "description": DESCRIPTION, "machine": harness.machine_info(),
               "config": vars(args).copy(), "checks": {}, "rows": [], "versions": versions,
               "skipped": {}, "notes": {}, "sets": {}, "not_served": {},
               "load_average": {"start": harness.load_average()}}
    results["config"].update(pool=pool_n, sets=sets, jpeg_quality=quality, malloc_tuned=tuned)

    def skip(way, why):
        if way in ways:
            ways.remove(way)
        results["skipped"][way] = why
        print(f"[skip] {way}: {why}", file=sys.stderr)

    tf = None
    if any(w.startswith("tf") for w in ways):
        try:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf
            versions["tensorflow"] = tf.__version__
        except ImportError:
            for way in [w for w in ways if w.startswith("tf")]:
                skip(way, "tensorflow is not installed")
    w4.probe_dali(ways, versions, skip)
    try:
        import PIL
        versions["pillow"] = PIL.__version__
    except ImportError:
        pass

    server = client = None
    if "tensorprep" in ways:
        import grpc

        from .. import Client
        versions["grpcio"] = grpc.__version__
        server = None if args.address else harness.LocalServer(
            args.server_bin, args.server_threads, args.device, uds=False)
        address = args.address or server.address
        if server:
            results["server"] = (f"{server.ready_line} GLIBC_TUNABLES={server.tunables} "
                                 f"args: {' '.join(server.args[1:])}")
        results["config"]["address"] = address
        client, _, _ = harness.make_clients(Client, address, address, ["tensorprep"], args, None)
        client.wait_ready(30)
        why = service_support(client)
        if why:
            results["not_served"]["tensorprep"] = why
            skip("tensorprep", why)
        else:
            results["notes"]["tensorprep"] = (
                f"tensorprep.Client.stream over TCP, lists of JPEG bytes as batches, "
                f"{args.inflight} requests in flight, one request per batch, results inline "
                f"(lists always travel inline), handed out as views of the responses (no copy)")
    if any(w.startswith("tf") for w in ways):
        results["notes"]["tf"] = ("from_tensor_slices(strings) -> repeat -> map(per image, "
                                  "AUTOTUNE) -> batch -> prefetch(AUTOTUNE)")
    if "dali" in ways:
        results["notes"]["dali"] = (f"batch_size = the batch, num_threads={args.dali_threads}, "
                                    f"device_id=None, prefetch_queue_depth=2; each batch copied "
                                    f"out with as_array()")
    results["ways"] = list(ways)

    def one_batch(way, encoded, cfg, seed):
        """One batch of len(encoded) through ``way`` (the check batches)."""
        n = len(encoded)
        if way.startswith("tf"):
            tf.random.set_seed(seed)
            ds = tf_dataset(tf, encoded, cfg, n, fused=way == "tf-fused", repeat=False)
            return next(iter(ds)).numpy()
        if way == "dali":
            p = dali_pipeline(encoded, cfg, n, args.dali_threads, seed=seed)
            out = dali_next(p)
            del p
            return out
        pipe = service_pipeline(cfg)
        whole = service_batch(client, encoded, pipe, seed)
        split = service_batch(client, encoded, pipe, seed, parts=2)
        if not np.array_equal(whole, split):
            raise AssertionError(f"W5 {way}: a batch sent as two requests differs from the same "
                                 f"batch in one (same seed and sample offsets)")
        return whole

    def try_service(fn):
        """fn() for the service; a server that refuses image_list (older builds) marks the
        service way not served instead of failing the run."""
        from ..errors import TensorprepError
        try:
            return fn()
        except TensorprepError as e:
            why = f"{NOT_SERVED} (image_list refused: {e})"
            results["not_served"]["tensorprep"] = why
            skip("tensorprep", why)
            return None

    try:
        pools = {}
        for s in sets:
            t0 = time.perf_counter()
            encoded = make_set(s, max(pool_n, 1), quality=quality)
            decoded = [decode_jpeg(b) for b in encoded]
            sizes = np.array([len(b) for b in encoded])
            shapes = np.array([d.shape[:2] for d in decoded])
            results["sets"][s] = {
                "description": SETS[s], "images": len(encoded),
                "encoded_bytes_mean": float(sizes.mean()), "encoded_bytes_min": int(sizes.min()),
                "encoded_bytes_max": int(sizes.max()),
                "pixels_mean": float((shapes[:, 0] * shapes[:, 1]).mean()),
                "height_range": [int(shapes[:, 0].min()), int(shapes[:, 0].max())],
                "width_range": [int(shapes[:, 1].min()), int(shapes[:, 1].max())],
                "float32_bytes_in": float32_request_bytes(decoded),
                "float16_bytes_out": 3 * OUT_SIZE * OUT_SIZE * 2}
            pools[s] = (encoded, decoded)
            print(f"[data] W5 {s}: {len(encoded)} JPEG files, mean {sizes.mean() / 1024:.1f} KiB "
                  f"({sizes.min() / 1024:.1f}-{sizes.max() / 1024:.1f}), made in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

        # Equality first: whole-image crops of the 256 set against the reference, then the
        # workload's batch of every set through every way.
        for s in sets:
            encoded, decoded = pools[s]
            n = min(32, len(encoded))
            found = None
            if s == "256":
                det = {}
                for way in list(ways):
                    out = (try_service(lambda: one_batch(way, encoded[:n], CHECK, 7))
                           if way == "tensorprep" else one_batch(way, encoded[:n], CHECK, 7))
                    if out is not None:
                        det[way] = out
                found = check_deterministic(decoded[:n], det)
            real = {}
            for way in list(ways):
                out = (try_service(lambda: one_batch(way, encoded[:n], WORKLOAD, 8))
                       if way == "tensorprep" else one_batch(way, encoded[:n], WORKLOAD, 8))
                if out is not None:
                    real[way] = out
            shapes = check_workload(decoded[:n], real, s)
            results["checks"][s] = {"passed": True, "samples": n, "deterministic": found,
                                    "workload": shapes}
            print(f"[check] W5 {s}: "
                  + (f"whole-image crops match the reference "
                     f"{ {k: round(v['max'], 4) for k, v in found.items()} }; " if found else "")
                  + f"outputs { {k: (v['dtype'], tuple(v['shape'])) for k, v in shapes.items()} }",
                  file=sys.stderr)
        results["ways"] = list(ways)

        pipe_ops = service_pipeline(WORKLOAD)
        for s in sets:
            encoded, _ = pools[s]
            info = results["sets"][s]
            for b in batches:
                lists = batches_of(encoded, b)
                for way in ways:
                    it = pipe = stream = None
                    replies = []
                    warm = 2
                    others = None
                    if way.startswith("tf"):
                        it = iter(tf_dataset(tf, encoded, WORKLOAD, b, fused=way == "tf-fused"))
                        next_batch = lambda it=it: next(it)  # noqa: E731
                    elif way == "dali":
                        pipe = dali_pipeline(encoded, WORKLOAD, b, args.dali_threads)
                        next_batch = lambda pipe=pipe: dali_next(pipe)  # noqa: E731
                    else:
                        stream = client.stream(itertools.cycle(lists), pipe_ops,
                                               inflight=args.inflight, full=True, chunk_mb=None)
                        warm = args.inflight + 2
                        others = server.pid if server else None

                        def next_batch(stream=stream, replies=replies):
                            r = next(stream)
                            replies.append((r.round_trip_s, r.transfer, r.timings,
                                            r.images.shape[0]))
                    m = ms.measure(next_batch, b, warmup_s=args.warmup, min_time_s=args.min_time,
                                   repeats=args.repeats, min_batches=3, server_pid=others,
                                   warmup_batches=warm)
                    if stream is not None:
                        stream.close()
                    del it, pipe, stream
                    gc.collect()
                    row = {"workload": f"{NAME}-{s}", "set": s, "batch": b, "way": way,
                           "label": LABELS[way], "load_avg_1m": harness.load_average()}
                    row.update(vars(m))
                    if others is None:
                        row["server_cpu_us_per_image"] = None
                    if way == "tensorprep":
                        timed = replies[-m.batches:]  # the timed windows' responses
                        images = sum(r[3] for r in timed)
                        rts = np.asarray([r[0] for r in timed]) * 1e3
                        row.update(
                            round_trip_p50_ms=float(np.percentile(rts, 50)),
                            bytes_in_per_image=sum(r[1]["inline_bytes_in"] for r in timed) / images,
                            bytes_out_per_image=(sum(r[1]["inline_bytes_out"] for r in timed)
                                                 / images),
                            server_stage_us_per_image={
                                k: sum(r[2][k] for r in timed) / images * 1e6
                                for k in ("image_decode", "kernel", "decode", "queue", "encode",
                                          "total")})
                    else:
                        row.update(bytes_in_per_image=info["encoded_bytes_mean"],
                                   bytes_out_per_image=None)
                    results["rows"].append(row)
                    print(f"W5 {s:<6} b{b:<3} {LABELS[way]:<38} {m.images_per_s:9.1f} img/s  "
                          f"p50 {m.p50_ms:8.2f} ms  cpu {m.train_cpu_us_per_image:8.0f} us/img  "
                          f"in {row['bytes_in_per_image'] / 1024:6.1f} KiB/img  "
                          f"load {row['load_avg_1m']}", file=sys.stderr)
                del lists
                gc.collect()
    finally:
        if client is not None:
            client.close()
        if server:
            server.stop()

    results["load_average"]["end"] = harness.load_average()
    baselines = [w for w in BASELINES if w in ways]
    report.add_ratios(results["rows"], baselines)
    results["baselines"] = baselines
    for r in results["rows"]:
        base = results["sets"][r["set"]]["float32_bytes_in"]
        r["bytes_in_vs_float32"] = base / r["bytes_in_per_image"] if r["bytes_in_per_image"] \
            else None
    targets = [(f"{NAME}-{s}", b, base, minimum) for s in sets for b in batches
               for base, minimum in SPEED_TARGETS if base in ways]
    served = ["tensorprep"] if "tensorprep" in ways or results["not_served"] else []
    results["targets"] = report.evaluate_targets(results["rows"], targets, (), served)
    for s in sets:
        for b in batches:
            r = report._find(results["rows"], f"{NAME}-{s}", b, "tensorprep")
            value = r["bytes_in_vs_float32"] if r else None
            results["targets"].append({
                "kind": "bytes_in", "workload": f"{NAME}-{s}", "batch": b, "way": "tensorprep",
                "baseline": "float32", "target": BYTES_TARGET, "value": value,
                "met": None if value is None else value >= BYTES_TARGET})
    out = pathlib.Path(args.out or "out/bench-w5")
    report.write(results, markdown(results), out,
                 "W5: JPEG in, tensorprep vs tf.data and DALI CPU", with_chart=not args.no_chart)
    return 0


def _kib(v):
    return "–" if v is None else f"{v / 1024:,.1f} KiB"


def markdown(results):
    """The W5 report: data, one row per set and way, the bytes baseline, stages, targets."""
    from .report import _fmt, _ratio
    from . import report
    cfg = results["config"]
    lines = report.preamble(results, NAME)
    lines[-1] += "."
    if results.get("server"):
        lines.append(f"Server: `{results['server']}`.")
    for s, info in results["sets"].items():
        lines.append(f"- set {s} ({info['description']}): {info['images']} distinct JPEG files "
                     f"(quality {cfg['jpeg_quality']}), {_kib(info['encoded_bytes_mean'])} on "
                     f"average ({_kib(info['encoded_bytes_min'])}–"
                     f"{_kib(info['encoded_bytes_max'])}), heights {info['height_range']}, "
                     f"widths {info['width_range']}")
    for way, note in results["notes"].items():
        lines.append(f"- {way}: {note}")
    for way, why in results["skipped"].items():
        if way not in results["not_served"]:
            lines.append(f"- skipped {way}: {why}")
    lines.append("")
    bases = results.get("baselines", [])
    head = (["set", "batch", "way", "images/s", "p50 ms", "train-process CPU µs/img",
             "server CPU µs/img", "bytes in/img", "bytes out/img", "in vs float32"]
            + [f"vs {BASELINE_NAMES[b]}" for b in bases] + ["load"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---:|---|" + "---:|" * (len(head) - 3))
    for r in results["rows"]:
        vs32 = r.get("bytes_in_vs_float32")
        cells = ([r["set"], str(r["batch"]), r["label"], _fmt(r["images_per_s"]),
                  _fmt(r["p50_ms"], 2), _fmt(r["train_cpu_us_per_image"]),
                  _fmt(r["server_cpu_us_per_image"]), _kib(r["bytes_in_per_image"]),
                  _kib(r["bytes_out_per_image"]), "–" if vs32 is None else f"{vs32:.1f}× fewer"]
                 + [_ratio(r.get(f"vs_{b}")) for b in bases] + [_fmt(r["load_avg_1m"], 2)])
        lines.append("| " + " | ".join(cells) + " |")
    for s, info in results["sets"].items():
        cells = [s, "–", "(d) decoded float32 on the wire (bytes only)", "–", "–", "–", "–",
                 _kib(info["float32_bytes_in"]), _kib(info["float16_bytes_out"]), "1.0×"]
        lines.append("| " + " | ".join(cells + ["–"] * len(bases) + ["–"]) + " |")
    for way, why in results["not_served"].items():
        lines.append("| – | – | " + LABELS[way] + f" | {why} |" + " – |" * (len(head) - 4))
    lines.append("")
    lines.append("bytes in/out: the service's count of tensor bytes per image (its response's "
                 "`transfer`); tf.data and DALI read the encoded files in the training process "
                 "(nothing crosses a wire; out: –); (d) is the size of a request carrying the "
                 "images decoded as float32 and of the float16 result. in vs float32: (d)'s bytes "
                 "in over the way's. CPU: user + system seconds over the timed windows per "
                 "image, of this process and of the local server. vs: images/s over that way's, "
                 "same set and batch.")
    svc = [r for r in results["rows"] if r["way"] == "tensorprep"]
    if svc:
        lines += ["", "The service's stage timings per image (`timings`, wall time summed over "
                      "the timed responses, with requests in flight overlapping; decode = "
                      "parsing and planning, image decode = the JPEG files):",
                  "", "| set | batch | round trip p50 ms | image decode µs | kernels µs | "
                      "decode µs | queue µs | encode µs | total µs |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in svc:
            st = r["server_stage_us_per_image"]
            lines.append(f"| {r['set']} | {r['batch']} | {_fmt(r['round_trip_p50_ms'], 2)} | "
                         + " | ".join(_fmt(st[k]) for k in ("image_decode", "kernel", "decode",
                                                             "queue", "encode", "total")) + " |")
    for s, chk in results["checks"].items():
        det = ""
        if chk.get("deterministic"):
            det = ("whole-image crop and flip against the PIL + NumPy reference ("
                   + "; ".join(f"{k} max {v['max']:.2g} / mean {v['mean']:.2g}, "
                               f"{v['flipped']:.0%} mirrored"
                               for k, v in chk["deterministic"].items()) + "); ")
        outs = "; ".join(f"{k} {v['dtype']} {tuple(v['shape'])}, {v['cropped']:.0%} cropped"
                         for k, v in chk["workload"].items())
        lines += ["", f"Checked before timing, set {s}, {chk['samples']} images: {det}the "
                      f"workload's batch ({outs})."]
    if results["targets"]:
        keys = list(dict.fromkeys((t["kind"], t["workload"], t["batch"], t["baseline"],
                                   t["target"]) for t in results["targets"]))
        lines += ["", "Targets (issue 17), the service:", "", "| target | value |", "|---|---:|"]
        for key in keys:
            kind, workload, batch, base, target = key
            t = next(x for x in results["targets"]
                     if (x["kind"], x["workload"], x["batch"], x["baseline"], x["target"]) == key)
            name = (f"{workload} batch {batch}: ≥ {target:g}× fewer bytes in than float32"
                    if kind == "bytes_in" else
                    f"{workload} batch {batch}: ≥ {target:g}× {BASELINE_NAMES[base]}")
            value = ("not served" if "tensorprep" in results["not_served"] else
                     "–" if t["value"] is None else
                     f"{_ratio(t['value'])} {'pass' if t['met'] else '**miss**'}")
            lines.append(f"| {name} | {value} |")
    return "\n".join(lines) + "\n"
