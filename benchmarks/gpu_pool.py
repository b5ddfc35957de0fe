"""Pool the step-time ratios of several gpu_check.py processes run on the same setting.

One process's per-round ratios share whatever lasts that process (its clocks, where its memory
landed, the machine's neighbours), so their quartiles can be tight around a biased value; a second
process can land elsewhere. This reads gpu_check JSON files (with their per-round times, `round_ms`),
groups them by config, batch, --compile and chain length, and prints for each mode against fm_only:
  per process   the median of that process's per-round ratios
  pooled        quartiles of all rounds of all processes of the group, each round's ratio within its round
  spread        the largest minus the smallest per-process median (what one process alone can miss by)

    python3 benchmarks/gpu_pool.py runs/gpu/*/gpu_check_*.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def round_ratios(result: dict) -> dict[str, np.ndarray]:
    """One gpu_check result -> mode -> its per-round ratios to fm_only (R,)."""
    train = result.get("train") or {}
    if "round_ms" not in train.get("fm_only", {}):
        raise ValueError("no per-round times (round_ms): written by a gpu_check.py older than gpu_pool.py")
    base = np.asarray(train["fm_only"]["round_ms"])
    return {mode: np.asarray(row["round_ms"]) / base for mode, row in train.items() if "round_ms" in row}


def pooled(files: list[Path]) -> dict[tuple, dict[str, dict]]:
    """Files -> (config, batch, compile, chain) -> mode -> per-process medians, pooled quartiles, spread."""
    groups: dict[tuple, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for path in files:
        result = json.loads(path.read_text())
        key = (result["config"], result["batch_size"], result["compile"], result.get("chain_length"))
        try:
            ratios = round_ratios(result)
        except ValueError as err:
            raise SystemExit(f"{path}: {err}") from None
        for mode, r in ratios.items():
            groups[key][mode].append(r)
    out: dict[tuple, dict[str, dict]] = {}
    for key, modes in groups.items():
        out[key] = {}
        for mode, runs in modes.items():
            medians = [float(np.median(r)) for r in runs]
            out[key][mode] = {"per_process": medians,
                              "pooled_quartiles": np.percentile(np.concatenate(runs), [25, 50, 75]).tolist(),
                              "spread": max(medians) - min(medians)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="gpu_check_*.json files")
    args = parser.parse_args()
    for (config, batch, compile_, chain), modes in pooled(args.files).items():
        n = len(modes["fm_only"]["per_process"])
        print(f"{config}, batch {batch}, --compile {compile_}, chain {chain}: {n} process(es)")
        print(f"    {'mode':28s} {'per-process medians':28s} pooled q1 / median / q3   spread")
        for mode, row in modes.items():
            if mode == "fm_only":
                continue
            per = " ".join(f"{m:.3f}" for m in row["per_process"])
            q1, q2, q3 = row["pooled_quartiles"]
            print(f"    {mode:28s} {per:28s} {q1:.3f} / {q2:.3f} / {q3:.3f}      {row['spread']:.3f}")


if __name__ == "__main__":
    main()
