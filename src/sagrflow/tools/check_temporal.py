"""check_temporal_supervision: does a config + data mix satisfy the t -> t+k contract?

Static check (always): every embodiment's observation_indices contain k, k lies inside
the action horizon, and every dataset of the mix exists with the keys it needs.
Runtime check (`--check-runtime`): samples real items from each dataset and reports the
fields present and their shapes, the valid_tk ratio (sampled and implied by the
episode lengths), and whether timestamps increase within every episode.

Exit status: 0 when everything holds, 1 on any violation.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sagrflow.core import batch as keys
from sagrflow.data.embodiments import get_embodiment
from sagrflow.data.errors import DataError

# the dataset classes pull in torch: imported where used, so `sagrflow --help` stays fast


@dataclass
class Report:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (subject, check, result)
    violations: list[str] = field(default_factory=list)

    def ok(self, subject: str, check: str, detail: str = "ok") -> None:
        self.rows.append((subject, check, detail))

    def fail(self, subject: str, check: str, detail: str) -> None:
        self.rows.append((subject, check, f"FAIL: {detail}"))
        self.violations.append(f"{subject}: {check}: {detail}")

    def render(self) -> str:
        widths = [max(len(r[i]) for r in self.rows + [("dataset", "check", "")]) for i in range(2)]
        lines = [f"{'dataset':<{widths[0]}}  {'check':<{widths[1]}}  result", "-" * (widths[0] + widths[1] + 30)]
        lines += [f"{s:<{widths[0]}}  {c:<{widths[1]}}  {r}" for s, c, r in self.rows]
        verdict = "PASS" if not self.violations else f"FAIL ({len(self.violations)} violation(s))"
        return "\n".join([*lines, "", verdict])


def _static(entry, root: Path, overrides: dict, report: Report):
    name = entry.path
    try:
        emb = get_embodiment(entry.robot_type, **overrides)
    except DataError as exc:
        report.fail(name, "embodiment", str(exc))
        return None
    k, horizon = emb.k, emb.horizon
    if k in emb.observation_indices:
        report.ok(name, "k in observation_indices", f"k={k}, observation_indices={list(emb.observation_indices)}")
    else:
        report.fail(name, "k in observation_indices",
                    f"k={k} is not in observation_indices={list(emb.observation_indices)}: every valid_tk would be 0 "
                    f"(set observation_indices to [0, {k}])")
    if 1 <= k <= horizon - 1:
        report.ok(name, "k within action horizon", f"k={k}, H={horizon}")
    else:
        report.fail(name, "k within action horizon", f"k={k} is outside 1..H-1 with H={horizon}")
    path = Path(entry.path) if Path(entry.path).is_absolute() else root / entry.path
    if not (path / "meta" / "info.json").is_file():
        report.fail(name, "dataset exists", f"{path} has no meta/info.json (is data_root_dir right?)")
        return None
    from sagrflow.data.dataset import TemporalDataset

    try:
        ds = TemporalDataset(path, emb, include_state=True)
    except DataError as exc:
        report.fail(name, "dataset keys", str(exc))
        return None
    report.ok(name, "dataset keys", f"cameras {ds.cameras}, state {ds.state.shape[1]}-d, action {ds.action.shape[1]}-d")
    return ds


def _runtime(name: str, ds, samples: int, report: Report) -> None:
    n = min(samples, len(ds))
    picks = np.linspace(0, len(ds) - 1, n).round().astype(int)
    items = [ds[int(i)] for i in picks]
    required = (*keys.SAMPLE_KEYS, *keys.STATE_KEYS)
    missing = [k for k in required if k not in items[0]]
    if missing:
        report.fail(name, "fields present", f"missing {missing}")
    else:
        report.ok(name, "fields present", ", ".join(required))
    first = items[0]
    shapes = (f"image_t {len(first[keys.IMAGE_T])}x{tuple(first[keys.IMAGE_T][0].shape)}, "
              f"action {tuple(first[keys.ACTION].shape)}, action_mask {tuple(first[keys.ACTION_MASK].shape)}, "
              f"state {tuple(first[keys.STATE_T].shape)}")
    same = all(
        s[keys.ACTION].shape == first[keys.ACTION].shape
        and [im.shape for im in s[keys.IMAGE_TK]] == [im.shape for im in first[keys.IMAGE_T]]
        for s in items
    )
    (report.ok if same else report.fail)(name, "shapes", shapes if same else f"shapes vary across samples ({shapes})")
    sampled = float(np.mean([s[keys.VALID_TK] for s in items]))
    expected = ds.expected_valid_ratio()
    detail = f"{sampled:.3f} over {n} samples (episode lengths imply {expected:.3f})"
    if expected == 0.0:
        report.fail(name, "valid_tk ratio", detail + ": no sample has a t+k target")
    else:
        report.ok(name, "valid_tk ratio", detail)
    bad = []
    for e in range(len(ds.reader.episodes)):
        ts = ds.reader.timestamps(e)
        if ts.size > 1 and not np.all(np.diff(ts) > 0):
            bad.append(ds.reader.episodes[e].index)
    if bad:
        report.fail(name, "timestamps monotonic", f"{len(bad)} episode(s) with non-increasing timestamps, e.g. {bad[:5]}")
    else:
        report.ok(name, "timestamps monotonic", f"{len(ds.reader.episodes)} episodes")


def check(data_mix, data_root_dir: str | Path, *, check_runtime: bool = False, samples: int = 64,
          image_size: tuple[int, int] | None = None, observation_indices: list[int] | None = None,
          temporal_delta_k: int | None = None) -> Report:
    from sagrflow.data.embodiments import embodiment_overrides
    from sagrflow.data.mixtures import resolve_mix

    report = Report()
    try:
        entries = resolve_mix(data_mix)
    except DataError as exc:
        report.fail("data_mix", "resolve", str(exc))
        return report
    overrides = embodiment_overrides(image_size, observation_indices, temporal_delta_k)
    for entry in entries:
        ds = _static(entry, Path(data_root_dir), overrides, report)
        if ds is not None and check_runtime:
            _runtime(entry.path, ds, samples, report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-yaml", default=None, help="training config; its datasets.vla_data section is checked")
    parser.add_argument("--data-mix", default=None, help="named mix (overrides the config's)")
    parser.add_argument("--data-root-dir", default=None, help="folder holding the mix's datasets (overrides the config's)")
    parser.add_argument("--check-runtime", action="store_true", help="also sample real items from every dataset")
    parser.add_argument("--samples", type=int, default=64, help="items sampled per dataset with --check-runtime")


def run(args: argparse.Namespace) -> int:
    data_mix, root, image_size, obs, k = args.data_mix, args.data_root_dir, None, None, None
    if args.config_yaml:
        from sagrflow.data.config import load_data_section

        section = load_data_section(args.config_yaml)
        data_mix = data_mix or section.data_mix
        root = root or section.data_root_dir
        image_size, obs, k = section.image_size, section.observation_indices, section.temporal_delta_k
    if data_mix is None or root is None:
        raise ValueError("give --config-yaml, or both --data-mix and --data-root-dir")
    report = check(data_mix, root, check_runtime=args.check_runtime, samples=args.samples,
                   image_size=image_size, observation_indices=obs, temporal_delta_k=k)
    print(report.render())
    return 1 if report.violations else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="check_temporal_supervision", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
