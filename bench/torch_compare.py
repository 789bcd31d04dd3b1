"""tensorprep's kernels beside PyTorch/torchvision doing the same work on the same device, in one
run: W2 images (256x256x3 float32, rotate 30 degrees bilinear), flips, normalize and a cast.

    python bench/torch_compare.py                  # CUDA when torch sees a GPU, else the CPU
    python bench/torch_compare.py --device cpu --threads 1 --repeats 5

On a GPU it runs build/bench/cuda/tensorprep_cuda_bench (CUDA events, batch 1/64/256) and times
torchvision with CUDA events on the same card; on the CPU it runs build/bench/tensorprep_cpu_bench
(Google Benchmark, batch 64 = 50 MB, one thread) and times torchvision with torch's intra-op
threads set to the same count. Each figure is the median over --repeats rounds; each round is the
mean of --iterations back-to-back calls. The table's last column is torchvision's time divided by
tensorprep's (above 1: tensorprep is faster). A device-to-device copy of the same bytes, timed the
same way on both sides, is the memory-bound ceiling.

Not identical work, and how it differs: tensorprep is NHWC, torchvision NCHW (same bytes);
torchvision allocates each result while the kernels write into a preallocated buffer; torchvision
rotates with a zero border (it has no edge mode) and one angle per batch, tensorprep's kernel
benchmarks use an edge border (and, on the GPU, a different angle per sample). Geometry agrees:
tests/python/test_torchvision_parity.py checks the outputs against each other.
"""

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import time

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

REPO = pathlib.Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
H, W, C = 256, 256, 3


def torch_cases():
    """name -> function of an NCHW float32 batch; names match the tensorprep benchmarks'."""
    bilinear = InterpolationMode.BILINEAR
    return {
        "memcpy": lambda x, out: out.copy_(x),
        "rotate": lambda x, out: TF.rotate(x, 30.0, interpolation=bilinear),
        "rotate + normalize": lambda x, out: TF.normalize(
            TF.rotate(x, 30.0, interpolation=bilinear), MEAN, STD),
        "rotate + x255 + cast uint8": lambda x, out: (
            TF.rotate(x, 30.0, interpolation=bilinear) * 255).round_().to(torch.uint8),
        "rotate + normalize + cast f16": lambda x, out: TF.normalize(
            TF.rotate(x, 30.0, interpolation=bilinear), MEAN, STD).half(),
        "flip_h": lambda x, out: TF.hflip(x),
        "normalize": lambda x, out: TF.normalize(x, MEAN, STD),
        "normalize + cast f16": lambda x, out: TF.normalize(x, MEAN, STD).half(),
    }


def time_torch(fn, x, device, iterations, repeats):
    """Median over `repeats` of the mean milliseconds per call of fn(x) (CUDA events on a GPU)."""
    out = torch.empty_like(x)
    for _ in range(3):
        fn(x, out)
    rounds = []
    for _ in range(repeats):
        if device == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for _ in range(iterations):
                fn(x, out)
            stop.record()
            stop.synchronize()
            rounds.append(start.elapsed_time(stop) / iterations)
        else:
            t0 = time.perf_counter()
            for _ in range(iterations):
                fn(x, out)
            rounds.append((time.perf_counter() - t0) * 1e3 / iterations)
    return statistics.median(rounds)


# tensorprep_cuda_bench prints "<op> <batch> <us/batch> <GB/s> <memcpy GB/s> <ratio>x".
CUDA_LINE = re.compile(r"^(?P<op>\S.*?)\s+(?P<batch>\d+)\s+(?P<us>[\d.]+)\s+[\d.]+\s+[\d.]+\s+"
                       r"[\d.]+x$")
CUDA_NAMES = {
    "memcpy d2d": "memcpy",
    "warp bilinear edge": "rotate",
    "warp + normalize": "rotate + normalize",
    "warp + x255 + cast uint8": "rotate + x255 + cast uint8",
    "flip (alternate lr)": "flip_h",
    "elementwise normalize": "normalize",
    "warp + normalize + cast f16": "rotate + normalize + cast f16",
}


def ours_cuda(binary, iterations, repeats):
    """{(op, batch): median ms} from `repeats` runs of the CUDA kernel benchmark."""
    runs = {}
    for _ in range(repeats):
        text = subprocess.run([str(binary), str(iterations)], check=True, capture_output=True,
                              text=True).stdout
        if "no usable CUDA device" in text:
            sys.exit(f"tensorprep_cuda_bench: {text.strip()}")
        for line in text.splitlines():
            m = CUDA_LINE.match(line.strip())
            if m and m["op"] in CUDA_NAMES:
                key = (CUDA_NAMES[m["op"]], int(m["batch"]))
                runs.setdefault(key, []).append(float(m["us"]) / 1e3)
    return {k: statistics.median(v) for k, v in runs.items()}


# Google Benchmark names of the CPU suite (batch 64 of W2 = 50 MB) for each case.
CPU_NAMES = {
    "memcpy": "memcpy/f32_50MB",
    "rotate": "rotate/W2_b64",
    "rotate + normalize": "pipe_rotate_norm/W2_b64",
    "flip_h": "flip_h/f32_50MB",
    "normalize": "normalize/f32_50MB",
    "normalize + cast f16": "normalize_cast_f16/f32_50MB",
}


def ours_cpu(binary, threads, repeats):
    """{(op, 64): median ms} from the CPU kernel benchmark at `threads` threads."""
    names = "|".join(re.escape(f"{v}/t{threads}/") for v in CPU_NAMES.values())
    text = subprocess.run(
        [str(binary), f"--benchmark_filter=^({names})", f"--benchmark_repetitions={repeats}",
         "--benchmark_report_aggregates_only=true", "--benchmark_format=json"],
        check=True, capture_output=True, text=True).stdout
    by_name = {b["run_name"].split(f"/t{threads}/")[0]: b["real_time"] / 1e3
               for b in json.loads(text)["benchmarks"] if b.get("aggregate_name") == "median"}
    return {(op, 64): by_name[n] for op, n in CPU_NAMES.items() if n in by_name}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"],
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--build", default=str(REPO / "build"), help="tensorprep build directory")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads on both sides")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    build = pathlib.Path(args.build)

    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("torch sees no CUDA device; use --device cpu")
        ours = ours_cuda(build / "bench" / "cuda" / "tensorprep_cuda_bench", args.iterations,
                         args.repeats)
        batches, where = [1, 64, 256], torch.cuda.get_device_name()
    else:
        torch.set_num_threads(args.threads)
        ours = ours_cpu(build / "bench" / "tensorprep_cpu_bench", args.threads, args.repeats)
        batches, where = [64], f"CPU, {args.threads} thread(s)"

    print(f"device: {where}; torch {torch.__version__}; median of {args.repeats} rounds")
    print("| op | batch | tensorprep ms | torchvision ms | torchvision / tensorprep |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for batch in batches:
        x = torch.rand((batch, C, H, W), device=args.device)
        for op, fn in torch_cases().items():
            if (op, batch) not in ours:
                continue
            theirs = time_torch(fn, x, args.device, args.iterations, args.repeats)
            mine = ours[(op, batch)]
            print(f"| {op} | {batch} | {mine:.3f} | {theirs:.3f} | {theirs / mine:.2f} |")
        del x


if __name__ == "__main__":
    main()
