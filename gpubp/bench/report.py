"""The benchmark's table, JSON and plot, all made from the one results dict."""

from __future__ import annotations

import json
import os

from .run import RATIOS, WORKLOADS

SUBJECT_ORDER = ["gpubp-numpy", "gpubp-numpy-passes", "floor-numpy", "torch-cpu", "floor-torch-cpu", "gpubp-cupy",
                 "gpubp-cupy-graph", "gpubp-cupy-unfused", "floor-cupy", "floor-cupy-graph", "torch-cuda",
                 "torch-cuda-graph", "floor-torch-cuda"]


def fmt(x):
    """A figure as the table prints it."""
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 0.01:
        return f"{x:.2f}"
    return f"{x:.2g}"


def describe(cfg, precision="float32"):
    layers = "-".join(str(n) for n in cfg["layers"])
    products = "" if precision == "float32" else f", {precision} products"
    return (f"{layers}, batch {cfg['batch']}, {cfg['activation']}, {cfg['output']} + "
            f"{cfg['loss']}, Adam, float32{products}")


def table(results):
    """The console table: per config, each subject's medians in µs (epoch in ms),
    the step's min–max and TFLOP/s, then skipped rows and the ratios."""
    lines = []
    meta = results["meta"]
    lines.append(f"gpubp bench  {meta['date']}  cpu: {meta['cpu']} ({meta['cpu_cores']} cores)  "
                 f"gpu: {meta['gpu'] or 'none'}")
    loops = f"numba {meta['numba']} loops" if meta.get("numba") else "passes, no numba"
    if meta.get("blas"):
        loops = f"{meta['blas']}, {loops}"
    lines.append(f"versions: gpubp {meta['gpubp']}, numpy {meta['numpy']} ({loops}), cupy {meta['cupy'] or '-'}, "
                 f"torch {meta['torch'] or '-'}, python {meta['python']}")
    noisy = []
    for name, cfg in results["configs"].items():
        lines.append("")
        lines.append(f"{name}: {describe(cfg, results['settings'].get('precision', 'float32'))}")
        if results["settings"].get("torch_precision"):
            lines.append(f"  ({results['settings']['torch_precision']})")
        lines.append(f"  {'subject':<20}{'forward µs':>12}{'step µs':>12}{'step min-max µs':>20}"
                     f"{'epoch ms':>11}{'step TFLOP/s':>14}")
        rows = {}
        for m in results["measurements"]:
            if m["config"] == name:
                rows.setdefault(m["subject"], {})[m["workload"]] = m
                if m["noisy"]:
                    noisy.append(f"{name}/{m['subject']}/{m['workload']} (spread {fmt(m['spread'])})")
        for subject in sorted(rows, key=SUBJECT_ORDER.index):
            r = rows[subject]
            step = r.get("step")
            fwd = fmt(r["forward"]["median_us"]) if "forward" in r else "-"
            st = fmt(step["median_us"]) if step else "-"
            rng = f"{fmt(step['min_us'])}-{fmt(step['max_us'])}" if step else "-"
            ep = fmt(r["epoch"]["median_us"] / 1e3) if "epoch" in r else "-"
            tf = fmt(step.get("tflops")) if step else "-"
            lines.append(f"  {subject:<20}{fwd:>12}{st:>12}{rng:>20}{ep:>11}{tf:>14}")
        by_reason = {}                      # subjects skipped for one reason share a line
        for s in results["skipped"]:
            if s["config"] == name:
                by_reason.setdefault(s["reason"], []).append(s["subject"])
        for reason, subjects in by_reason.items():
            if len(subjects) == 1:
                lines.append(f"  {subjects[0]:<20}skipped: {reason}")
            else:
                lines.append(f"  {', '.join(subjects)}: skipped: {reason}")
        for workload in WORKLOADS:
            rs = results["ratios"][name].get(workload, {})
            if rs:
                shown = ", ".join(f"{k} {fmt(v)}" for k, v in rs.items())
                lines.append(f"  ratios ({workload}): {shown}")
    if noisy:
        lines.append("")
        lines.append("warning: wide spread ((p90 - p10) / median > 0.2), the machine may be busy: "
                     + "; ".join(noisy))
    return "\n".join(lines)


def write_json(results, path):
    """Every figure as JSON, written whole or not at all (a run cut short while
    writing leaves the previous file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)


def plot(results, path):
    """A PNG of step time per config and subject, log scale, speedups annotated."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'gpubp[plot]'") from exc
    configs = list(results["configs"])
    subjects = [s for s in SUBJECT_ORDER
                if any(m["subject"] == s and m["workload"] == "step" for m in results["measurements"])]
    step = {(m["config"], m["subject"]): m["median_us"] for m in results["measurements"]
            if m["workload"] == "step"}
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(configs) + 2), 4.5))
    width = 0.8 / max(1, len(subjects))
    for j, subject in enumerate(subjects):
        xs = [i + (j - (len(subjects) - 1) / 2) * width for i in range(len(configs))]
        ys = [step.get((c, subject)) for c in configs]
        ax.bar([x for x, y in zip(xs, ys) if y], [y for y in ys if y], width, label=subject)
    ax.set_yscale("log")
    ax.set_xticks(range(len(configs)), configs)
    ax.set_ylabel("training step, median µs (log)")
    for i, c in enumerate(configs):
        rs = results["ratios"][c].get("step", {})
        notes = [f"{label} {fmt(rs[key])}×" for key, label in
                 (("cupy_speedup_over_numpy", "GPU/CPU"), ("fused_speedup_over_unfused", "fused"),
                  ("loops_speedup_over_passes", "loops"),
                  ("numpy_over_torch_cpu", "vs torch-cpu"), ("cupy_over_torch_cuda", "vs torch"))
                 if key in rs]
        if notes:
            ax.annotate("\n".join(notes), (i, 1), xycoords=("data", "axes fraction"),
                        ha="center", va="top", fontsize=7, xytext=(0, -4), textcoords="offset points")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"gpubp step time — {results['meta']['gpu'] or results['meta']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["table", "write_json", "plot", "fmt", "RATIOS"]
