"""Tables (Markdown), target checks and the chart for the comparison benchmark."""

import math


def _find(rows, workload, batch, way):
    for r in rows:
        if (r["workload"], r["batch"], r["way"]) == (workload, batch, way):
            return r
    return None


def add_ratios(rows, baselines=("a", "b")):
    """Adds vs_<base> for each baseline way: images/s over that way's images/s for the same
    workload and batch (None where the baseline did not run)."""
    for r in rows:
        for base in baselines:
            ref = _find(rows, r["workload"], r["batch"], base)
            r[f"vs_{base}"] = (r["images_per_s"] / ref["images_per_s"]
                               if ref and ref["images_per_s"] > 0 else None)


def evaluate_targets(rows, targets, cpu_targets=(), ways=()):
    """One entry per (target, way): ratio targets ``(workload, batch, baseline, minimum)`` and
    training-CPU targets ``(workload, batch, maximum µs per image)``, each for every way in
    ``ways``. ``met`` is None where the way or the baseline did not run."""
    out = []
    for way in ways:
        for workload, batch, base, minimum in targets:
            r = _find(rows, workload, batch, way)
            ratio = r.get(f"vs_{base}") if r else None
            out.append({"kind": "ratio", "workload": workload, "batch": batch, "way": way,
                        "baseline": base, "target": minimum, "value": ratio,
                        "met": None if ratio is None else ratio >= minimum})
        for workload, batch, maximum in cpu_targets:
            r = _find(rows, workload, batch, way)
            cpu = r.get("train_cpu_us_per_image") if r else None
            out.append({"kind": "train_cpu", "workload": workload, "batch": batch, "way": way,
                        "baseline": None, "target": maximum, "value": cpu,
                        "met": None if cpu is None else cpu <= maximum})
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


def _measured(found):
    def one(v):
        if isinstance(v, dict):
            return " / ".join(f"{x:.2g}" for x in v.values())
        return f"{v:.2g}"
    return ", ".join(f"{k} {one(v)}" for k, v in found.items())


def _ratio(v):
    return "–" if v is None else f"{v:.2f}×"


BASELINE_NAMES = {"a": "seed callback", "cv": "OpenCV callback", "b": "native TF",
                  "dali": "DALI CPU"}


def markdown(results):
    lines = []
    m = results["machine"]
    cfg = results["config"]
    load = results.get("load_average", {})
    lines.append(f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus')} CPUs, "
                 f"{m.get('mem_gib', '?')} GiB; {m.get('platform')}; Python {m.get('python')}; "
                 + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()) + ".")
    lines.append(f"Load average (1 min) at the start {_fmt(load.get('start'), 2)}, at the end "
                 f"{_fmt(load.get('end'), 2)}; the `load` column is its value after each cell "
                 f"(more than the number of CPUs means other work competed for them).")
    if results.get("server"):
        lines.append(f"Server: `{results['server']}`.")
    for way, how in results.get("transports", {}).items():
        lines.append(f"- {way}: {how}")
    lines.append(f"Repeats: {cfg['repeats']} × ≥ {cfg['min_time']} s per cell after "
                 f"{cfg['warmup']} s warm-up; stream: {cfg['inflight']} requests in flight, "
                 f"inline batches "
                 f"split into requests of ≤ {cfg.get('chunk_mb') or '∞'} MB; "
                 f"pool of {cfg['pool']} distinct samples per workload; glibc malloc tuned in the "
                 f"training process: {'yes' if cfg.get('malloc_tuned') else 'no'}.")
    for way, note in results.get("notes", {}).items():
        lines.append(f"- {way}: {note}")
    for way, why in results.get("skipped", {}).items():
        lines.append(f"- skipped {way}: {why}")
    lines.append("")
    bases = [b for b in BASELINE_NAMES if any(r.get(f"vs_{b}") is not None
                                              for r in results["rows"])]
    head = (["workload", "batch", "way", "images/s", "p50 ms", "p99 ms",
             "train-process CPU µs/img", "server CPU µs/img"]
            + [f"vs {BASELINE_NAMES[b]}" for b in bases] + ["load"])
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---|---:|---|" + "---:|" * (len(head) - 3))
    for r in results["rows"]:
        cells = ([r["workload"], str(r["batch"]), r["label"], _fmt(r["images_per_s"]),
                  _fmt(r["p50_ms"], 3), _fmt(r["p99_ms"], 3), _fmt(r["train_cpu_us_per_image"]),
                  _fmt(r["server_cpu_us_per_image"])]
                 + [_ratio(r.get(f"vs_{b}")) for b in bases] + [_fmt(r.get("load_avg_1m"), 2)])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("p50/p99: time the consumer waits for each batch (batch latency as the training "
                 "loop sees it). CPU: user + system seconds of the process over the timed windows, "
                 "divided by the images delivered. vs: images/s over the baseline's images/s, "
                 "same workload and batch.")
    checks = results.get("checks", {})
    if checks:
        lines.append("")
        lines.append("Equality checked before timing (W1: exact; W2: max |difference| from the "
                     "seed's output, max / mean for the ways checked roughly; W3: share of "
                     "samples flipped, every label following its image): " + "; ".join(
                         f"{w}: {c['samples']} samples, {_measured(c['measured'])}"
                         for w, c in checks.items()) + ".")
    targets = results.get("targets", [])
    if targets:
        ways = []
        for t in targets:
            if t["way"] not in ways:
                ways.append(t["way"])
        labels = {r["way"]: r["label"] for r in results["rows"]}
        keys = []
        for t in targets:
            k = (t["kind"], t["workload"], t["batch"], t["baseline"], t["target"])
            if k not in keys:
                keys.append(k)
        lines.append("")
        lines.append("Targets (issue 12):")
        lines.append("")
        lines.append("| target | " + " | ".join(labels.get(w, w) for w in ways) + " |")
        lines.append("|---|" + "---:|" * len(ways))
        for k in keys:
            kind, workload, batch, base, target = k
            if kind == "ratio":
                name = (f"{workload} batch {batch}: ≥ {target:g}× "
                        f"{BASELINE_NAMES.get(base, base)}")
            else:
                name = (f"{workload} batch {batch}: training-process CPU ≤ {target / 1000:g} ms "
                        f"per image")
            cells = []
            for way in ways:
                t = next(x for x in targets if x["way"] == way and
                         (x["kind"], x["workload"], x["batch"], x["baseline"], x["target"]) == k)
                if t["value"] is None:
                    cells.append("–")
                    continue
                value = (_ratio(t["value"]) if kind == "ratio"
                         else f"{t['value'] / 1000:.3f} ms")
                cells.append(f"{value} {'pass' if t['met'] else '**miss**'}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def preamble(results, name):
    """The first lines of a workload's report: the machine and versions, the load average, the
    repeats (a sentence the caller may continue)."""
    m = results["machine"]
    cfg = results["config"]
    load = results["load_average"]
    return [f"{name}: {results['description']}.", "",
            f"Machine: {m.get('cpu_model', '?')}, {m.get('cpus')} CPUs, {m.get('mem_gib', '?')} "
            f"GiB; {m.get('platform')}; Python {m.get('python')}; "
            + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
            f"Load average (1 min) at the start {_fmt(load.get('start'), 2)}, at the end "
            f"{_fmt(load.get('end'), 2)}; the `load` column is its value after each cell.",
            f"Repeats: {cfg['repeats']} × ≥ {cfg['min_time']} s (and ≥ 3 batches) per cell "
            f"after {cfg['warmup']} s warm-up; images/s is their median"]


def write(results, md, out, title, with_chart=True):
    """Writes a workload's report under ``out`` (benchmark.md, benchmark.json and, with
    ``with_chart``, benchmark.png titled ``title``) and prints it."""
    import json
    import sys
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text(md)
    (out / "benchmark.json").write_text(json.dumps(results, indent=2, default=float))
    if with_chart:
        chart(results, out / "benchmark.png", title=title)
    print(md)
    print(f"wrote {out / 'benchmark.md'}, {out / 'benchmark.json'}"
          f"{', ' + str(out / 'benchmark.png') if with_chart else ''}", file=sys.stderr)


def chart(results, path, title=None):
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
    seen = {r["way"] for r in rows}
    ways = [w for w in results.get("ways", []) if w in seen]  # the run's order, not the rows'
    for r in rows:
        if r["way"] not in ways:
            ways.append(r["way"])
    labels = {r["way"]: r["label"] for r in rows}
    width = 0.8 / max(len(ways), 1)
    fig, ax = plt.subplots(figsize=(min(16, max(9, 0.22 * len(groups) * len(ways) + 2)), 5.6))
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
    ax.set_title(title or "tensorprep vs in-process callbacks, TensorFlow native ops and DALI CPU")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
