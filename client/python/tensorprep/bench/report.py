"""Tables (Markdown), target checks and the chart for the comparison benchmark."""

import math


def _find(rows, workload, batch, way):
    for r in rows:
        if (r["workload"], r["batch"], r["way"]) == (workload, batch, way):
            return r
    return None


def add_ratios(rows):
    """Adds vs_a and vs_b (images/s ratio to (a) and (b) of the same workload and batch)."""
    for r in rows:
        for base in ("a", "b"):
            ref = _find(rows, r["workload"], r["batch"], base)
            r[f"vs_{base}"] = (r["images_per_s"] / ref["images_per_s"]
                               if ref and ref["images_per_s"] > 0 else None)


def evaluate_targets(rows, targets):
    out = []
    for workload, batch, way, base, minimum in targets:
        r = _find(rows, workload, batch, way)
        ratio = r.get(f"vs_{base}") if r else None
        out.append({"workload": workload, "batch": batch, "way": way, "baseline": base,
                    "target": minimum, "ratio": ratio,
                    "met": None if ratio is None else ratio >= minimum})
    return out


def histogram_summary(registry):
    """Count and mean of the client-side histogram per (path, workload)."""
    from ..metrics import METRIC_NAME
    acc = {}
    for family in registry.collect():
        if family.name != METRIC_NAME:
            continue
        for s in family.samples:
            if s.name.endswith("_count") or s.name.endswith("_sum"):
                key = f"{s.labels['path']}/{s.labels['workload']}"
                acc.setdefault(key, {})[s.name.rsplit("_", 1)[1]] = s.value
    return {k: {"count": int(v.get("count", 0)),
                "mean_ms": 1e3 * v["sum"] / v["count"] if v.get("count") else None}
            for k, v in sorted(acc.items())}


def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def _ratio(v):
    return "–" if v is None else f"{v:.2f}×"


def markdown(results):
    lines = []
    m = results["machine"]
    cfg = results["config"]
    lines.append(f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus')} CPUs, "
                 f"{m.get('mem_gib', '?')} GiB; {m.get('platform')}; Python {m.get('python')}; "
                 + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()) + ".")
    if results.get("server"):
        lines.append(f"Server: `{results['server']}`.")
    lines.append(f"Repeats: {cfg['repeats']} × ≥ {cfg['min_time']} s per cell after "
                 f"{cfg['warmup']} s warm-up; stream: {cfg['inflight']} requests in flight, "
                 f"batches "
                 f"split into requests of ≤ {cfg.get('chunk_mb') or '∞'} MB; "
                 f"pool of {cfg['pool']} distinct samples per workload; glibc malloc tuned in the "
                 f"training process: {'yes' if cfg.get('malloc_tuned') else 'no'}.")
    lines.append("")
    lines.append("| workload | batch | way | images/s | p50 ms | p99 ms "
                 "| train-process CPU µs/img | server CPU µs/img | vs (a) | vs (b) |")
    lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results["rows"]:
        lines.append(
            f"| {r['workload']} | {r['batch']} | {r['label']} | {_fmt(r['images_per_s'])} | "
            f"{_fmt(r['p50_ms'], 3)} | {_fmt(r['p99_ms'], 3)} | "
            f"{_fmt(r['train_cpu_us_per_image'])} | {_fmt(r['server_cpu_us_per_image'])} | "
            f"{_ratio(r.get('vs_a'))} | {_ratio(r.get('vs_b'))} |")
    lines.append("")
    lines.append("p50/p99: time the consumer waits for each batch (batch latency as the training "
                 "loop sees it). CPU: user + system seconds of the process over the timed windows, "
                 "divided by the images delivered.")
    checks = results.get("checks", {})
    if checks:
        lines.append("")
        lines.append("Equality checked before timing: " + "; ".join(
            f"{w}: {c['samples']} samples, {c['measured']}" for w, c in checks.items()) + ".")
    targets = results.get("targets", [])
    if targets:
        lines.append("")
        lines.append("| target | ratio | met |")
        lines.append("|---|---:|---|")
        for t in targets:
            met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['workload']} batch {t['batch']}: {t['way']} ≥ {t['target']}× "
                         f"({t['baseline']}) | {_ratio(t['ratio'])} | {met} |")
    return "\n".join(lines) + "\n"


def chart(results, path):
    """Grouped bars of images/s (log scale) per workload and batch; needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = results["rows"]
    groups = []
    for r in rows:
        g = (r["workload"], r["batch"])
        if g not in groups:
            groups.append(g)
    ways = []
    for r in rows:
        if r["way"] not in ways:
            ways.append(r["way"])
    labels = {r["way"]: r["label"] for r in rows}
    width = 0.8 / max(len(ways), 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(groups)), 4.8))
    for i, way in enumerate(ways):
        xs, ys = [], []
        for j, g in enumerate(groups):
            r = _find(rows, g[0], g[1], way)
            if r:
                xs.append(j + (i - (len(ways) - 1) / 2) * width)
                ys.append(r["images_per_s"])
        bars = ax.bar(xs, ys, width, label=labels[way])
        for x, y in zip(xs, ys):
            ax.text(x, y, f"{y:,.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        del bars
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([f"{w}\nbatch {b}" for w, b in groups])
    ax.set_yscale("log")
    top = max((r["images_per_s"] for r in rows), default=1)
    ax.set_ylim(top=top * 4)  # room for the value labels above the tallest bar
    ax.set_ylabel("images/s (log)")
    ax.set_title("tensorprep vs in-process Python callbacks and TensorFlow native ops")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
