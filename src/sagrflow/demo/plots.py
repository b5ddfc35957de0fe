"""Loss curves from a run's metrics.jsonl, with the SA-GR schedule phases shaded."""

from __future__ import annotations

import math
from pathlib import Path

CURVES = ("loss/total", "loss/fm", "loss/dyn", "loss/geo", "loss/reg")
PHASES = (("A: fm only", "#e8f0fe"), ("B: world ramp", "#fef7e0"), ("C: full SA-GR", "#e6f4ea"))


def plot_losses(metrics: list[dict], out: str | Path, phase_a: int, ramp: int, title: str = "") -> Path:
    """One panel per loss term (log scale), phases A / B / C shaded; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    curves = [k for k in CURVES if any(k in m for m in metrics)]
    if not curves:
        raise ValueError("the metrics hold no loss/* values to plot")
    last = max(m["step"] for m in metrics)
    fig, axes = plt.subplots(1, len(curves), figsize=(3.2 * len(curves), 3.0), squeeze=False)
    bounds = ((0, phase_a), (phase_a, phase_a + ramp), (phase_a + ramp, max(last, phase_a + ramp)))
    for ax, key in zip(axes[0], curves, strict=True):
        # a skipped non-finite step is logged as such: it is left out of the curve, not plotted
        points = [(m["step"], m[key]) for m in metrics if key in m and math.isfinite(m[key])]
        for (lo, hi), (label, color) in zip(bounds, PHASES, strict=True):
            if hi > lo:
                ax.axvspan(lo, hi, color=color, label=label, lw=0)
        ax.plot([p[0] for p in points], [p[1] for p in points], color="#1a73e8", lw=1.5)
        if all(p[1] > 0 for p in points):
            ax.set_yscale("log")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
    axes[0][0].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
