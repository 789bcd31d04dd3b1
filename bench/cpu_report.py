#!/usr/bin/env python3
"""Ratios from one run of tensorprep_cpu_bench (its --benchmark_out JSON), as Markdown.

Every ratio sets two figures of the same run side by side (medians when the run had
repetitions), so machine-wide noise that drifts over minutes mostly cancels:
  - kernel bandwidth / memcpy bandwidth (bytes read + written, same threads, same 50 MB);
  - fused pipeline time / rotate-alone time;
  - 2-thread / 1-thread throughput;
  - our warp / OpenCV's warpAffine;
  - the request path below gRPC (Processor::Prepare + Run) / the kernels alone;
  - warp vs OpenCV per image on 64 distinct images (warp/... and opencv_warp/...): ours /
    OpenCV's warpAffine, 64-image call / 64 one-image calls, 2 threads / 1 thread.

Usage: bench/cpu_report.py cpu.json [--markdown FILE]
"""
import json
import sys


def load(path):
    with open(path) as f:
        data = json.load(f)
    runs = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        name = b.get("run_name", b["name"]).replace("/real_time", "")
        runs[name] = b
    return data.get("context", {}), runs


def warp_vs_opencv(runs):
    """The "warp vs OpenCV" table: rotate 30 degrees, edge border, 64 distinct 256x256 images,
    1 thread; b1 = 64 one-image calls, b64 = one 64-image call; OpenCV = one warpAffine per image
    (opencv_warp/..._b1, the same figure for both rows). Empty when the run had none of them."""

    def us(name):
        ips = runs[name].get("items_per_second") if name in runs else None
        return 1e6 / ips if ips else None

    rows = []
    for dtype in ("f32", "u8"):
        for c in (1, 3):
            for interp in ("bilinear", "nearest"):
                data = f"{dtype}_c{c}_{interp}"
                cv = us(f"opencv_warp/{data}_b1/t1")
                b1 = us(f"warp/{data}_b1/t1")
                for n in (1, 64):
                    ours = us(f"warp/{data}_b{n}/t1")
                    if ours is None and cv is None:
                        continue
                    fmt = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
                    ratio = f"**{ours / cv:.2f}**" if ours and cv else ""
                    per_batch = f"{ours / b1:.2f}" if n == 64 and ours and b1 else ""
                    rows.append(f"| {dtype} | {c} | {interp} | {n} | {fmt(ours)} | {fmt(cv)} | "
                                f"{ratio} | {per_batch} |")
    if not rows:
        return []
    out = ["| warp vs OpenCV, 1 thread: dtype | C | interp | batch | ours µs/image | "
           "OpenCV µs/image | ours / OpenCV (target <= 1.0) | b64 / b1 per image "
           "(target <= 1.15) |",
           "|---|---|---|---|---|---|---|---|"]
    out += rows
    a, b = (runs.get(f"warp/f32_c3_bilinear_b64/t{t}", {}).get("items_per_second")
            for t in (1, 2))
    if a and b:
        out.append("")
        out.append(f"warp/f32_c3_bilinear_b64: 2 threads / 1 thread = **{b / a:.2f}** "
                   f"({1e6 / a:.1f} -> {1e6 / b:.1f} µs/image; target >= 1.8 on a quiet machine)")
    out.append("")
    return out


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    markdown = None
    if "--markdown" in args:
        i = args.index("--markdown")
        markdown = args[i + 1]
        del args[i:i + 2]
    context, runs = load(args[0])
    out = []

    def bw(name):
        return runs[name]["bytes_per_second"] if name in runs else None

    def t(name):
        return runs[name]["real_time"] if name in runs else None

    def ips(name):
        return runs[name]["items_per_second"] if name in runs else None

    out.append("| kernel (50 MB float32 batch) | threads | GB/s (read + written) | memcpy GB/s | "
               "fraction of memcpy | target |")
    out.append("|---|---|---|---|---|---|")
    for k in ["flip_h", "flip_v", "add", "multiply_c", "divide", "normalize", "clamp", "cast_u8",
              "cast_f16", "normalize_cast_f16"]:
        for th in (1, 2):
            name, ref = f"{k}/f32_50MB/t{th}", f"memcpy/f32_50MB/t{th}"
            if bw(name) is None or bw(ref) is None:
                continue
            target = ">= 0.70" if k in ("flip_h", "add", "normalize", "cast_u8", "cast_f16") else ""
            out.append(f"| {k} | {th} | {bw(name) / 1e9:.2f} | {bw(ref) / 1e9:.2f} | "
                       f"**{bw(name) / bw(ref):.2f}** | {target} |")
    out.append("")
    out.append("| pipeline (CpuBackend) | data | threads | time ms | rotate alone ms | ratio | "
               "target |")
    out.append("|---|---|---|---|---|---|---|")
    for data in ("W2_b1", "W2_b64"):
        for th in (1, 2):
            ref = f"pipe_rotate/{data}/t{th}"
            for p in ("pipe_rotate_flip", "pipe_rotate_norm", "pipe_rotate_flip_norm_cast_f32",
                      "pipe_rotate_flip_norm_cast_f16"):
                name = f"{p}/{data}/t{th}"
                if t(name) is None or t(ref) is None:
                    continue
                target = "<= 1.2" if p.startswith("pipe_rotate_flip_norm_cast") else ""
                out.append(f"| {p[5:]} | {data} | {th} | {t(name) / 1e3:.2f} | {t(ref) / 1e3:.2f} | "
                           f"**{t(name) / t(ref):.2f}** | {target} |")
    out.append("")
    out.append("| scaling | 1 thread img/s | 2 threads img/s | speed-up | target |")
    out.append("|---|---|---|---|---|")
    for k in ("rotate/W2_b64", "pipe_rotate_flip_norm_cast_f16/W2_b64", "rotate_u8/u8_b64",
              "pipe_W3_random_flip/W3_b64", "memcpy/f32_50MB"):
        a, b = ips(f"{k}/t1"), ips(f"{k}/t2")
        if a and b:
            target = ">= 1.8" if k == "rotate/W2_b64" else ""
            out.append(f"| {k} | {a:.1f} | {b:.1f} | **{b / a:.2f}** | {target} |")
    out.append("")
    out.append("| comparison | ours ms | other ms | ours / other |")
    out.append("|---|---|---|---|")
    pairs = [
        ("rotate/W2_b64/t1", "opencv_rotate/W2_b64/t1", "bilinear float32 warp vs OpenCV warpAffine"),
        ("rotate_u8/u8_b64/t1", "opencv_rotate_u8/u8_b64/t1", "bilinear uint8 warp vs OpenCV warpAffine"),
        ("process_W2/W2_b64/t1", "pipe_rotate/W2_b64/t1", "W2 request path (Prepare+Run) vs kernels alone"),
        ("process_W3/W3_b64/t1", "pipe_W3_random_flip/W3_b64/t1", "W3 request path vs kernels alone"),
        ("prepare_output/f32_50MB/t1", "memcpy/f32_50MB/t1", "sizing a 50 MB response (zero fill) vs memcpy of 50 MB"),
    ]
    for a, b, what in pairs:
        if t(a) is not None and t(b) is not None:
            out.append(f"| {what} | {t(a) / 1e3:.2f} | {t(b) / 1e3:.2f} | **{t(a) / t(b):.2f}** |")
    out.append("")
    out.extend(warp_vs_opencv(runs))
    cpus = context.get("num_cpus", "?")
    load_avg = context.get("load_avg", [])
    out.append(f"{cpus} CPUs at {context.get('mhz_per_cpu', '?')} MHz; load average at start "
               f"{', '.join(f'{x:.1f}' for x in load_avg)}; "
               f"{'medians of repetitions' if any(r.get('aggregate_name') == 'median' for r in runs.values()) else 'single runs'}.")
    text = "\n".join(out)
    print(text)
    if markdown:
        with open(markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
