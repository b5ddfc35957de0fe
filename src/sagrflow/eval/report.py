"""Success rates with Wilson confidence intervals, written as JSON and as Markdown."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from sagrflow.eval.harness import EpisodeResult

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is not degenerate at 0/n
    or n/n, which is where small robot evaluations usually land.
    """
    if successes < 0 or successes > n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _rate(results: Sequence[EpisodeResult]) -> dict:
    n = len(results)
    k = sum(r.success for r in results)
    lo, hi = wilson_interval(k, n)
    return {
        "episodes": n, "successes": k, "success_rate": k / n if n else 0.0, "ci95": [lo, hi],
        "mean_steps": sum(r.steps for r in results) / n if n else 0.0,
        "replans": sum(r.replans for r in results), "queries": sum(r.queries for r in results),
        "residuals": sum(r.residuals for r in results),
    }


def summarize(results: Sequence[EpisodeResult], meta: dict | None = None) -> dict:
    """-> {"meta", "overall", "per_task": {task: rate}, "episodes": [...], "videos": [...]}."""
    tasks = list(dict.fromkeys(r.task for r in results))
    return {
        "meta": dict(meta or {}),
        "overall": _rate(results),
        "per_task": {t: _rate([r for r in results if r.task == t]) for t in tasks},
        "episodes": [r.to_dict() for r in results],
        "videos": [r.video for r in results if r.video],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def to_markdown(summary: dict) -> str:
    meta, overall = summary["meta"], summary["overall"]
    title = f"# Evaluation: {meta.get('policy', 'policy')} on {meta.get('suite', 'suite')}"
    lines = [title, ""]
    for key, value in meta.items():
        lines.append(f"- {key}: `{value}`")
    lo, hi = overall["ci95"]
    lines += ["", f"**Overall: {_pct(overall['success_rate'])}** ({overall['successes']}/{overall['episodes']}, "
              f"95% CI {_pct(lo)} - {_pct(hi)})", "",
              f"Policy calls: {overall['queries']}; with a world-model residual (drift and RRR acting): "
              f"{overall['residuals']}.", "",
              "| task | success | n | 95% CI | mean steps | RRR replans |", "|---|---:|---:|---|---:|---:|"]
    for task, rate in summary["per_task"].items():
        lo, hi = rate["ci95"]
        lines.append(f"| {task} | {_pct(rate['success_rate'])} | {rate['episodes']} | {_pct(lo)} - {_pct(hi)} "
                     f"| {rate['mean_steps']:.1f} | {rate['replans']} |")
    if summary["videos"]:
        lines += ["", "Videos:", ""] + [f"- [{Path(v).name}]({v})" for v in summary["videos"]]
    return "\n".join(lines) + "\n"


def write_report(summary: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """-> (report.json, report.md) in `out_dir`; video paths are written relative to it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rel = dict(summary)
    rel["videos"] = [_relative(v, out) for v in summary["videos"]]
    rel["episodes"] = [dict(e, video=_relative(e["video"], out) if e["video"] else None) for e in summary["episodes"]]
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(rel, indent=2))
    md_path.write_text(to_markdown(rel))
    return json_path, md_path


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return path
