"""Workload W4: the ImageNet training transform, three ways, in one run on one machine.

    python -m tensorprep.bench --workloads W4 --out out/bench-w4

uint8 256x256x3 in; RandomResizedCrop to 224x224 (scale (0.08, 1), ratio (3/4, 4/3), bilinear,
antialiased) + horizontal flip (p = 0.5) + ColorJitter(0.4, 0.4, 0.4, 0.1) + normalize (ImageNet
mean and std on values in [0, 1]); float16 channels-first (N, 3, 224, 224) out.

(a) torchvision in a PyTorch DataLoader over a map-style dataset of distinct uint8 (3, 256, 256)
    tensors, default collate, one row per worker count (``--torch-workers``, default 0 and 2):
    ``transforms.v2`` when importable, else the v1 tensor transforms (RandomResizedCrop(224,
    antialias=True), RandomHorizontalFlip, ColorJitter, ConvertImageDtype(float32), Normalize),
    then ``.half()``; the report says which ran.
(b) NVIDIA DALI's CPU pipeline (``device_id=None``) fed the same images by ``fn.external_source``:
    ``fn.random_resized_crop``, ``fn.color_twist`` with factors drawn per sample by
    ``fn.random.uniform``, ``fn.crop_mirror_normalize`` (mirror = ``fn.random.coin_flip``,
    output_layout "CHW", float16). ``fn.color_twist`` is DALI's closest to ColorJitter and differs
    from it: the four adjustments in one fixed order (hue and saturation, then brightness and
    contrast) instead of a random order per sample; contrast about a fixed grey (half the range)
    instead of the image's mean grey; hue and saturation as a linear map in RGB (a rotation about
    the grey axis) instead of torchvision's exact HSV round trip.
(c) the service through the Python client over shared memory (the server's Unix socket):
    random_resized_crop, random_flip, color_jitter, cast float32, divide by 255, normalize, cast
    float16, channels_first. Served only when the server's ListOps lists every op and the client
    has their builders; otherwise the report says "not served by this server" and the other ways
    still run.

Before any timing, one batch of the workload made deterministic (crop = the whole image,
no colour jitter, flip kept at p = 0.5) goes through every way and is compared with a NumPy
reference (antialiased bilinear resize 256 -> 224, rounded to uint8 as every way does, then
normalised): each sample must match the reference or its mirror within the bounds of
CHECK_BOUNDS, and both outcomes must occur. The real workload's batch of every way must be float16
(N, 3, 224, 224), finite, within the range normalisation allows, and its crops must vary.
"""

import dataclasses
import gc
import itertools
import multiprocessing
import pathlib
import sys

import numpy as np

from .. import ops

NAME = "W4"
DESCRIPTION = ("uint8 256x256x3 -> RandomResizedCrop 224 + flip (p=0.5) + ColorJitter(0.4, 0.4, "
               "0.4, 0.1) + normalize -> float16 (N, 3, 224, 224)")
IN_SIZE = 256
OUT_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
DEFAULT_WAYS = ("torch", "dali", "shm-stream", "shm-placed")
SERVICE_WAYS = ("shm-unary", "shm-stream", "shm-placed")
LABELS = {
    "dali": "(b) DALI CPU",
    "shm-unary": "(c) tensorprep unary, shm",
    "shm-stream": "(c) tensorprep stream, shm",
    "shm-placed": "(c) tensorprep stream, shm, placed",
}
# The ops the service needs (ListOps names). divide stands for the scaling to [0, 1]: the
# service divides by 255 as torchvision's ConvertImageDtype does.
SERVICE_OPS = ("random_resized_crop", "random_flip", "color_jitter", "cast", "divide",
               "normalize", "channels_first")
NOT_SERVED = "not served by this server"
# Deterministic check (whole image resized, flipped or not), per sample against the NumPy
# reference or its mirror: (max |difference|, mean |difference|) in normalised units. One uint8
# level is 1/255/std = 0.017; float16 keeps 11 bits (0.002 at 2.6). Measured on 32 noise images:
# torchvision max 0.018 / mean 0.00027 (a rounding tie to the other level here and there), DALI
# 0.053 / 0.00045 (its filter differs slightly: 1.8% of the values one level off, 0.08% two,
# a few three). What a mistake gives, measured likewise: a resize without antialiasing mean 0.12,
# a wrong mean and std 0.23, a one-pixel shift 0.73, BGR for RGB 0.59.
CHECK_BOUNDS = (0.1, 0.005)
# The real workload's values: normalisation maps [0, 1] to [(0 - mean) / std, (1 - mean) / std].
VALUE_RANGE = (min((0 - m) / s for m, s in zip(MEAN, STD)) - 0.01,
               max((1 - m) / s for m, s in zip(MEAN, STD)) + 0.01)


@dataclasses.dataclass(frozen=True)
class Config:
    """The random parts of W4; CHECK makes them deterministic but for the flip."""
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue; None: none


WORKLOAD = Config()
CHECK = Config(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.5, jitter=None)


def make_pool(n, seed=0):
    """n distinct uint8 images (n, 256, 256, 3), as the service and DALI take them."""
    return np.random.default_rng(seed).integers(0, 256, (n, IN_SIZE, IN_SIZE, 3), dtype=np.uint8)


def torch_way(workers):
    return f"torch-w{workers}"


def label(way):
    if way.startswith("torch-w"):
        return f"(a) torchvision, DataLoader {way[len('torch-w'):]} workers"
    return LABELS[way]


# --- reference ----------------------------------------------------------------------------------
def _aa_weights(n_in, n_out):
    """(n_out, n_in) weights of an antialiased bilinear resize (a triangle filter widened by the
    scale when shrinking, pixel centres at +0.5), as PIL and torchvision's antialias=True."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        j = np.arange(lo, hi)
        taps = np.maximum(0.0, 1.0 - np.abs((j - centre + 0.5) / support))
        w[i, lo:hi] = taps / taps.sum()
    return w


def reference(images):
    """CHECK's output without the flip, in float64: images (N, H, W, 3) uint8 resized to 224x224,
    rounded to uint8, / 255, normalised, (N, 3, 224, 224)."""
    wy = _aa_weights(images.shape[1], OUT_SIZE)
    wx = _aa_weights(images.shape[2], OUT_SIZE)
    x = images.astype(np.float64)
    y = np.einsum("ih,nhwc,jw->ncij", wy, x, wx, optimize=True)
    y = np.clip(np.rint(y), 0, 255) / 255.0
    return (y - np.asarray(MEAN)[:, None, None]) / np.asarray(STD)[:, None, None]


# --- (a) torchvision in a DataLoader ------------------------------------------------------------
def torchvision_transform(cfg):
    """(per-sample transform of a uint8 (3, H, W) tensor -> float16 (3, 224, 224), which API)."""
    import torch
    try:
        from torchvision.transforms import v2 as T
        api = "transforms.v2"
    except ImportError:
        from torchvision import transforms as T
        api = "transforms (v1 tensor transforms; transforms.v2 is not in this torchvision)"
    steps = [T.RandomResizedCrop(OUT_SIZE, scale=cfg.scale, ratio=cfg.ratio, antialias=True),
             T.RandomHorizontalFlip(cfg.flip_p)]
    if cfg.jitter is not None:
        steps.append(T.ColorJitter(*cfg.jitter))
    if api == "transforms.v2" and hasattr(T, "ToDtype"):
        try:
            steps.append(T.ToDtype(torch.float32, scale=True))
        except TypeError:  # torchvision 0.15's v2: ToDtype without scale
            steps.append(T.ConvertImageDtype(torch.float32))
    else:
        steps.append(T.ConvertImageDtype(torch.float32))
    steps.append(T.Normalize(MEAN, STD))
    compose = T.Compose(steps)
    return _Half(compose), api


class _Half:
    """compose(x).half(), picklable (a DataLoader worker started by spawn needs that)."""

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, x):
        return self.compose(x).half()


class PoolDataset:
    """Map-style dataset: item i is transform(pool[i % n]) of a uint8 (n, 3, H, W) pool. Its
    length is large, so one iterator serves any number of batches."""

    def __init__(self, pool_chw, transform, length=1 << 40):
        self.pool = pool_chw
        self.transform = transform
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        return self.transform(self.pool[i % self.pool.shape[0]])


def torch_pool(images):
    """The pool as torchvision takes it: a contiguous uint8 (n, 3, H, W) tensor (as
    torchvision.io decodes), the same pixels."""
    import torch
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def dataloader(pool_chw, cfg, batch, workers, seed=None):
    """A DataLoader over PoolDataset with the torchvision transform; (loader, API used)."""
    import torch
    transform, api = torchvision_transform(cfg)
    g = None
    if seed is not None:
        torch.manual_seed(seed)
        g = torch.Generator()
        g.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        PoolDataset(pool_chw, transform), batch_size=batch, shuffle=False,
        num_workers=workers, persistent_workers=workers > 0, generator=g)
    return loader, api


# --- (b) DALI -----------------------------------------------------------------------------------
def dali_pipeline(images, cfg, batch, threads, seed=None):
    """A built DALI CPU pipeline doing ``cfg`` on the pool (NHWC uint8). Read with dali_next."""
    from nvidia.dali import fn, pipeline_def, types

    from .workloads import _CyclingSource

    src = _CyclingSource((images,), batch)
    kwargs = {"batch_size": batch, "num_threads": threads, "device_id": None,
              "prefetch_queue_depth": 2}
    if seed is not None:
        kwargs["seed"] = int(seed)

    @pipeline_def(**kwargs)
    def pipe():
        x = fn.external_source(source=src, dtype=types.UINT8, layout="HWC", device="cpu")
        x = fn.random_resized_crop(x, size=(OUT_SIZE, OUT_SIZE), random_area=list(cfg.scale),
                                   random_aspect_ratio=list(cfg.ratio),
                                   interp_type=types.INTERP_LINEAR, antialias=True)
        if cfg.jitter is not None:
            b, c, s, h = cfg.jitter
            x = fn.color_twist(
                x, brightness=fn.random.uniform(range=[max(0.0, 1 - b), 1 + b]),
                contrast=fn.random.uniform(range=[max(0.0, 1 - c), 1 + c]),
                saturation=fn.random.uniform(range=[max(0.0, 1 - s), 1 + s]),
                hue=fn.random.uniform(range=[-360.0 * h, 360.0 * h]))  # degrees
        # The mirror comes after the colour ops here; they act per pixel (contrast on the whole
        # image's grey), so the order does not change the result.
        return fn.crop_mirror_normalize(
            x, dtype=types.FLOAT16, output_layout="CHW",
            mean=[255.0 * m for m in MEAN], std=[255.0 * s for s in STD],
            mirror=fn.random.coin_flip(probability=cfg.flip_p))

    p = pipe()
    p.build()
    return p


def dali_next(p):
    """One batch as a dense float16 (N, 3, 224, 224) array, copied out of DALI's buffers."""
    return p.run()[0].as_array()


# --- (c) the service ----------------------------------------------------------------------------
def service_pipeline(cfg, jitter_on_uint8=True):
    """The ops for ``cfg`` (builders of tensorprep.ops; AttributeError / TypeError when the client
    does not have them yet). ``jitter_on_uint8``: the colour jitter before the cast, as the other
    ways do it; else on float32 values in [0, 1]."""
    out = [ops.random_resized_crop(OUT_SIZE, OUT_SIZE, scale=cfg.scale, ratio=cfg.ratio,
                                   interpolation="bilinear", antialias=True),
           ops.random_flip(cfg.flip_p)]
    jitter = []
    if cfg.jitter is not None:
        b, c, s, h = cfg.jitter
        jitter = [ops.color_jitter(brightness=b, contrast=c, saturation=s, hue=h)]
    scale = [ops.cast("float32"), ops.divide(255.0)]
    out += jitter + scale if jitter_on_uint8 else scale + jitter
    return out + [ops.normalize(MEAN, STD), ops.cast("float16"), ops.channels_first()]


def service_support(client):
    """(None, jitter_on_uint8) when the server and this client can run W4, else (why not, None):
    every op of SERVICE_OPS in ListOps and a builder for each in tensorprep.ops."""
    listed = {op.name: op for op in client.list_ops().ops}
    missing = [name for name in SERVICE_OPS if name not in listed]
    if missing:
        return f"{NOT_SERVED} (ListOps lacks {', '.join(missing)})", None
    unbuilt = [name for name in SERVICE_OPS if not hasattr(ops, name)]
    if unbuilt:
        return (f"{NOT_SERVED} through this client (tensorprep.ops has no "
                f"{', '.join(unbuilt)})"), None
    try:
        service_pipeline(WORKLOAD)
    except (TypeError, ValueError) as e:
        return f"{NOT_SERVED} through this client (a builder refused W4's arguments: {e})", None
    dtypes = listed["color_jitter"].dtypes
    return None, (not dtypes) or ops.dtype_enum("uint8") in dtypes


def batches_of(images, batch):
    """The pool cut into batches of ``batch`` samples (cycled to fill), contiguous NHWC."""
    n = images.shape[0]
    return [np.ascontiguousarray(images[[(s + i) % n for i in range(batch)]])
            for s in range(0, n, batch)]


# --- checks -------------------------------------------------------------------------------------
def _as_numpy(x):
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def check_deterministic(images, outputs, bounds=CHECK_BOUNDS, name=NAME):
    """CHECK's outputs (way -> (N, 3, 224, 224)) against the reference: every sample within
    ``bounds`` (max, mean) of the reference or of its mirror, both outcomes present from 24
    samples on; ``name`` heads the messages (W5 checks its decoded files with this too).
    Raises AssertionError; returns {way: {"max", "mean", "flipped"}}."""
    want = reference(images)
    mirrored = want[..., ::-1]
    most, mean = bounds
    found = {}
    for way, out in outputs.items():
        got = _as_numpy(out)
        if got.shape != want.shape or got.dtype != np.float16:
            raise AssertionError(f"{name} check {way}: {got.dtype} {got.shape}, expected float16 "
                                 f"{want.shape}")
        got = got.astype(np.float64)
        worst, total, flips = 0.0, 0.0, 0
        for i in range(got.shape[0]):
            plain = np.abs(got[i] - want[i])
            flip = np.abs(got[i] - mirrored[i])
            f = flip.mean() < plain.mean()
            err = flip if f else plain
            if not (err.max() <= most and err.mean() <= mean):
                raise AssertionError(
                    f"{name} check {way}: sample {i} is {'the mirror' if f else 'the reference'} "
                    f"within max {err.max():.3g} (bound {most}), mean {err.mean():.3g} "
                    f"(bound {mean})")
            worst, total, flips = max(worst, float(err.max())), total + float(err.mean()), flips + f
        n = got.shape[0]
        if n >= 24 and not 0 < flips < n:
            raise AssertionError(f"{name} check {way}: {flips} of {n} samples flipped (p = 0.5)")
        found[way] = {"max": worst, "mean": total / n, "flipped": flips / n}
    return found


def check_workload(images, outputs):
    """The real workload's outputs (way -> (N, 3, 224, 224)): float16 NCHW of the right size,
    finite, within VALUE_RANGE, and cropped at random (most samples far from the whole image
    resized, mirrored or not). Raises AssertionError; returns {way: {"shape", "dtype", ...}}."""
    want = reference(images)
    found = {}
    for way, out in outputs.items():
        got = _as_numpy(out)
        shape = (images.shape[0], 3, OUT_SIZE, OUT_SIZE)
        if got.dtype != np.float16 or got.shape != shape:
            raise AssertionError(f"W4 {way}: {got.dtype} {got.shape}, expected float16 {shape}")
        g = got.astype(np.float64)
        if not np.isfinite(g).all():
            raise AssertionError(f"W4 {way}: non-finite values")
        lo, hi = float(g.min()), float(g.max())
        if lo < VALUE_RANGE[0] or hi > VALUE_RANGE[1]:
            raise AssertionError(f"W4 {way}: values in [{lo:.3g}, {hi:.3g}], outside "
                                 f"[{VALUE_RANGE[0]:.3g}, {VALUE_RANGE[1]:.3g}]")
        whole = [min(np.abs(g[i] - want[i]).mean(), np.abs(g[i] - want[i][..., ::-1]).mean())
                 for i in range(g.shape[0])]
        cropped = sum(d > 10 * CHECK_BOUNDS[1] for d in whole)
        if g.shape[0] >= 4 and cropped < g.shape[0] // 2:
            raise AssertionError(f"W4 {way}: only {cropped} of {g.shape[0]} samples differ from "
                                 f"the whole image: is the crop random?")
        found[way] = {"shape": list(got.shape), "dtype": str(got.dtype), "min": lo, "max": hi,
                      "cropped": cropped / g.shape[0]}
    return found


# --- the run ------------------------------------------------------------------------------------
def parse_ways(text, torch_workers):
    """--ways for W4 -> the list of ways, "torch" expanded into one way per worker count."""
    out = []
    for way in (w.strip() for w in text.split(",") if w.strip()):
        if way == "torch":
            out += [torch_way(n) for n in torch_workers]
        elif way.startswith("torch-w") and way[len("torch-w"):].isdigit():
            out.append(way)
        elif way in LABELS:
            out.append(way)
        else:
            sys.exit(f"bench: unknown W4 way {way!r}; expected torch, torch-wN, dali, "
                     f"{', '.join(SERVICE_WAYS)}")
    return list(dict.fromkeys(out))


def run(args):
    """W4 on its own: checks, then every way's cells; writes benchmark.{md,json,png}."""
    from .. import Client, tune_malloc
    from . import __main__ as harness
    from . import measure as ms
    from . import report

    tuned = False if args.no_tune_malloc else tune_malloc()
    args.pool = args.pool or 64  # --pool's default (W5's differs)
    torch_workers = [int(n) for n in args.torch_workers.split(",") if n.strip()]
    ways = parse_ways(args.ways or ",".join(DEFAULT_WAYS), torch_workers)
    batches = [int(b) for b in (args.batches or "64").split(",")]
    versions = {"numpy": np.__version__}
    results = {"workload": NAME, "description": DESCRIPTION, "machine": harness.machine_info(),
               "config": vars(args).copy(), "checks": {}, "rows": [], "versions": versions,
               "skipped": {}, "notes": {}, "load_average": {"start": harness.load_average()}}

    def skip(way, why):
        if way in ways:
            ways.remove(way)
        results["skipped"][way] = why
        print(f"[skip] {way}: {why}", file=sys.stderr)

    if any(w.startswith("torch-w") for w in ways):
        try:
            import torch
            import torchvision
            versions.update(torch=torch.__version__, torchvision=torchvision.__version__)
        except ImportError:
            for way in [w for w in ways if w.startswith("torch-w")]:
                skip(way, "torch / torchvision are not installed (scripts/python-env.sh)")
    probe_dali(ways, versions, skip)

    server = client = shm = None
    not_served = {}
    jitter_on_uint8 = True  # where the service's colour jitter goes; service_support decides
    if any(w in SERVICE_WAYS for w in ways):
        server = None if args.address else harness.LocalServer(
            args.server_bin, args.server_threads, args.device, uds=not args.no_uds)
        address = args.address or server.address
        if server:
            shm_address = server.address if args.no_uds else server.shm_address
            shown = [a.replace(server.tmpdir, "TMPDIR") if server.tmpdir else a
                     for a in server.args[1:]]
            results["server"] = (f"{server.ready_line} GLIBC_TUNABLES={server.tunables} "
                                 f"args: {' '.join(shown)}")
        else:
            shm_address = args.shm_address or args.address
        results["config"].update(address=address, shm_address=shm_address)
        import grpc
        versions["grpcio"] = grpc.__version__
        client, shm, why = harness.make_clients(Client, address, shm_address, ways, args, None)
        client.wait_ready(30)
        if why or shm is None:
            for way in [w for w in ways if w in SERVICE_WAYS]:
                skip(way, why or "this client has no shared-memory transport")
        else:
            reason, on_uint8 = service_support(client)
            if reason:
                for way in [w for w in ways if w in SERVICE_WAYS]:
                    not_served[way] = reason
                    skip(way, reason)
            else:
                jitter_on_uint8 = on_uint8
                results["notes"]["service"] = (
                    "colour jitter on uint8, before the cast" if jitter_on_uint8 else
                    "colour jitter after the cast to float32 and the division by 255 (the "
                    "server's color_jitter does not take uint8)")
    results["not_served"] = not_served
    results["ways"] = ways
    api = None
    if any(w.startswith("torch-w") for w in ways):
        import torch
        api = torchvision_transform(WORKLOAD)[1]
        results["notes"]["torchvision"] = (
            f"torchvision {versions['torchvision']}: {api}; map-style dataset of distinct uint8 "
            f"(3, 256, 256) tensors, default collate, pin_memory off; the main process's "
            f"intra-op threads: {torch.get_num_threads()} (a DataLoader worker uses 1)")
        print(f"[torchvision] {api}", file=sys.stderr)
    if "dali" in ways:
        results["notes"]["dali"] = (
            f"batch_size = the batch, num_threads={args.dali_threads}, device_id=None, "
            f"prefetch_queue_depth=2; fn.color_twist for ColorJitter (fixed order, contrast about "
            f"mid-grey, linear hue/saturation); each batch copied out with as_array()")

    try:
        pool_n = max(args.pool, max(batches))
        images = make_pool(pool_n)
        pool_chw = torch_pool(images) if any(w.startswith("torch-w") for w in ways) else None

        def one_batch(way, cfg, imgs, seed):
            """One batch of len(imgs) through ``way`` (the check batches)."""
            n = imgs.shape[0]
            if way.startswith("torch-w"):
                loader, _ = dataloader(torch_pool(imgs), cfg, n, 0, seed=seed)
                return next(iter(loader)).numpy()
            if way == "dali":
                p = dali_pipeline(imgs, cfg, n, args.dali_threads, seed=seed)
                out = dali_next(p)
                del p
                return out
            pipe = service_pipeline(cfg, jitter_on_uint8)
            unary = np.array(shm.process(imgs, pipe, seed=seed))
            halves = [imgs[:n // 2], imgs[n // 2:]]
            streamed = np.concatenate([np.array(x) for x in shm.stream(
                halves, pipe, seed=seed, inflight=2)])
            if not np.array_equal(unary, streamed):
                raise AssertionError(f"W4 {way}: the stream's result differs from the unary "
                                     f"call's (same seed)")
            return unary

        # Equality first (one way per kind: the transports of the service must agree bit for
        # bit, which one_batch checks).
        n = min(32, pool_n)
        kinds = {}
        for way in ways:
            kinds.setdefault("torch" if way.startswith("torch-w") else
                             "service" if way in SERVICE_WAYS else way, way)
        det = {k: one_batch(w, CHECK, images[:n], seed=7) for k, w in kinds.items()}
        found = check_deterministic(images[:n], det)
        real = {k: one_batch(w, WORKLOAD, images[:n], seed=8) for k, w in kinds.items()}
        shapes = check_workload(images[:n], real)
        results["checks"][NAME] = {"passed": True, "samples": n, "deterministic": found,
                                   "workload": shapes}
        print(f"[check] W4: {', '.join(kinds)} agree with the reference "
              f"{ {k: round(v['max'], 4) for k, v in found.items()} }; outputs "
              f"{ {k: (v['dtype'], tuple(v['shape'])) for k, v in shapes.items()} }",
              file=sys.stderr)

        pipe_ops = service_pipeline(WORKLOAD, jitter_on_uint8) if shm is not None and any(
            w in SERVICE_WAYS for w in ways) else None
        for b in batches:
            svc = batches_of(images, b)
            placed = (harness.placed_batches(shm, svc) if "shm-placed" in ways else None)
            for way in ways:
                it = loader = pipe = gen = None
                others = None
                warm_batches = 2
                transports = set()
                if way.startswith("torch-w"):
                    workers = int(way[len("torch-w"):])
                    loader, _ = dataloader(pool_chw, WORKLOAD, b, workers)
                    it = iter(loader)
                    next_batch = lambda it=it: next(it)  # noqa: E731
                    warm_batches = 2 * workers + 2  # the prefetched batches, then steady state
                    if workers:
                        others = [p.pid for p in multiprocessing.active_children()]
                elif way == "dali":
                    pipe = dali_pipeline(images, WORKLOAD, b, args.dali_threads)
                    next_batch = lambda pipe=pipe: dali_next(pipe)  # noqa: E731
                elif way == "shm-unary":
                    cyc = itertools.cycle(svc)

                    def next_batch(cyc=cyc):
                        res = shm.call(next(cyc), pipe_ops)
                        transports.add(res.transport)
                    others = server.pid if server else None
                else:
                    source = placed if way == "shm-placed" else svc
                    gen = shm.stream(itertools.cycle(source), pipe_ops, inflight=args.inflight,
                                     full=True)
                    warm_batches = args.inflight + 2

                    def next_batch(gen=gen):
                        transports.add(next(gen).transport)
                    others = server.pid if server else None
                m = ms.measure(next_batch, b, warmup_s=args.warmup, min_time_s=args.min_time,
                               repeats=args.repeats, min_batches=3, server_pid=others,
                               warmup_batches=warm_batches)
                if gen is not None:
                    gen.close()
                del it, loader, pipe, gen
                gc.collect()
                if way in SERVICE_WAYS and transports != {"shm"}:
                    sys.exit(f"bench: W4 b{b} {way}: results took {sorted(transports)}, not only "
                             f"shared memory (pool too small? --shm-pool-mb)")
                row = {"workload": NAME, "batch": b, "way": way, "label": label(way),
                       "load_avg_1m": harness.load_average()}
                row.update(vars(m))
                if others is None:
                    row["server_cpu_us_per_image"] = None
                results["rows"].append(row)
                print(f"W4 b{b:<3} {label(way):<40} {m.images_per_s:9.1f} img/s  "
                      f"{m.images} images  p50 {m.p50_ms:8.2f} ms  "
                      f"cpu {m.train_cpu_us_per_image:8.0f} us/img  load {row['load_avg_1m']}",
                      file=sys.stderr)
            del placed
            gc.collect()
    finally:
        if client is not None:
            client.close()
        if shm is not None:
            shm.close()
        if server:
            server.stop()

    results["load_average"]["end"] = harness.load_average()
    results["config"]["malloc_tuned"] = tuned
    ran = [w for w in ways if w.startswith("torch-w")]
    baselines = ran + (["dali"] if "dali" in ways else [])
    report.add_ratios(results["rows"], baselines)
    results["baselines"] = baselines
    targets = []
    with_workers = [w for w in ran if w != "torch-w0"]
    if with_workers:
        best = max(with_workers, key=lambda w: int(w[len("torch-w"):]))
        targets += [(NAME, b, best, 2.0) for b in batches]
    if "dali" in ways:
        targets += [(NAME, b, "dali", 1.0) for b in batches]
    results["targets"] = report.evaluate_targets(
        results["rows"], targets, (), [w for w in SERVICE_WAYS if w in ways or w in not_served])
    out = pathlib.Path(args.out or "out/bench-w4")
    report.write(results, markdown(results), out,
                 "W4: tensorprep vs torchvision in a DataLoader and DALI CPU", with_chart=not args.no_chart)
    return 0


def probe_dali(ways, versions, skip):
    """With "dali" among ``ways``: DALI's version into ``versions``, or skip(way, why) when it
    does not import."""
    if "dali" not in ways:
        return
    try:
        import nvidia.dali
        versions["dali"] = nvidia.dali.__version__
    except ImportError:
        skip("dali", "nvidia-dali is not installed (pip install -r "
                     "client/python/requirements-bench.txt)")


def markdown(results):
    """The W4 report: setting, one row per way (a not-served service way says so), targets."""
    from .report import _fmt, _ratio
    from . import report
    cfg = results["config"]
    lines = report.preamble(results, NAME)
    lines[-1] += (f"; pool of {max([cfg['pool']] + [r['batch'] for r in results['rows']])} "
                  "distinct images.")
    if results.get("server"):
        lines.append(f"Server: `{results['server']}`.")
    for way, note in results["notes"].items():
        lines.append(f"- {way}: {note}")
    for way, why in results["skipped"].items():
        if way not in results["not_served"]:
            lines.append(f"- skipped {way}: {why}")
    lines.append("")
    bases = results.get("baselines", [])
    names = {b: ("DataLoader " + b[len("torch-w"):] + "w" if b.startswith("torch-w") else
                 "DALI CPU") for b in bases}
    head = (["batch", "way", "images/s", "images", "p50 ms", "train-process CPU µs/img",
             "workers / server CPU µs/img"] + [f"vs {names[b]}" for b in bases] + ["load"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---:|---|" + "---:|" * (len(head) - 2))
    for r in results["rows"]:
        cells = ([str(r["batch"]), r["label"], _fmt(r["images_per_s"]), str(r["images"]),
                  _fmt(r["p50_ms"], 2), _fmt(r["train_cpu_us_per_image"]),
                  _fmt(r["server_cpu_us_per_image"])]
                 + [_ratio(r.get(f"vs_{b}")) for b in bases] + [_fmt(r["load_avg_1m"], 2)])
        lines.append("| " + " | ".join(cells) + " |")
    for way, why in results["not_served"].items():
        lines.append("| – | " + label(way) + f" | {why} |" + " – |" * (len(head) - 3))
    lines.append("")
    lines.append("images: delivered in the timed repeats. CPU: user + system seconds over the "
                 "timed windows per image, of this process, and of the DataLoader's workers or "
                 "the local server. vs: images/s over that way's, same batch.")
    chk = results["checks"].get(NAME)
    if chk:
        det = "; ".join(f"{k} max {v['max']:.2g} / mean {v['mean']:.2g}, {v['flipped']:.0%} "
                        f"mirrored" for k, v in chk["deterministic"].items())
        outs = "; ".join(f"{k} {v['dtype']} {tuple(v['shape'])}, {v['cropped']:.0%} cropped"
                         for k, v in chk["workload"].items())
        lines.append("")
        lines.append(f"Checked before timing on {chk['samples']} images: whole-image crop and "
                     f"flip against the NumPy reference ({det}); the workload's batch ({outs}).")
    if results["targets"]:
        ways = list(dict.fromkeys(t["way"] for t in results["targets"]))
        keys = list(dict.fromkeys((t["batch"], t["baseline"], t["target"])
                                  for t in results["targets"]))
        lines += ["", "Targets (issue 15):", "",
                  "| target | " + " | ".join(label(w) for w in ways) + " |",
                  "|---|" + "---:|" * len(ways)]
        for batch, base, target in keys:
            cells = []
            for way in ways:
                t = next(x for x in results["targets"] if x["way"] == way
                         and (x["batch"], x["baseline"], x["target"]) == (batch, base, target))
                cells.append("not served" if way in results["not_served"] else
                             "–" if t["value"] is None else
                             f"{_ratio(t['value'])} {'pass' if t['met'] else '**miss**'}")
            lines.append(f"| W4 batch {batch}: ≥ {target:g}× {names[base]} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
