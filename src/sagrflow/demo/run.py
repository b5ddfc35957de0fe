"""The demo pipeline: cached sim demonstrations -> tiny SA-GR training -> closed-loop eval -> report.

    run_dir/
      train/                 the trainer's run (metrics.jsonl, checkpoints/step_*/policy)
      videos/*.mp4           rollouts of the trained policy
      loss_curves.png        loss terms with the SA-GR phases A / B / C shaded
      eval.json, eval.md     per-task success of the trained policy (Wilson 95% CIs)
      summary.json, report.md   trained vs the other variants (latest sibling runs) vs random vs zero

`--ablate fm_only` trains the plain flow-matching baseline the same way, `--ablate no_drift`
SA-GR without the drift head's correction (drift_eta 0: world losses and schedule as SA-GR's);
a demo in the same parent folder picks up the latest number of each other variant.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sagrflow.train.metrics import read_metrics  # non-finite values back as floats

ABLATIONS = ("fm_only", "no_drift")


@dataclass(frozen=True)
class DemoConfig:
    suite: str = "goal"  # sim family to train and evaluate on, or all; in goal only the instruction says which block
    # expert demonstrations per family (cached; ~1 min and ~230 MB for 2000 at 128 px). With 200 the
    # tiny model memorized the scenes: open-loop error on unseen seeds twice that on its own data
    demo_episodes: int = 2000
    image_size: int = 128  # camera side, for the data and the evaluation alike
    # what the VLM sees: 16x16 patches of 14 -> 8x8 tokens per camera. At 112 (4x4 tokens) and 3000
    # steps six SA-GR runs scored 0-2 of 40; at 224 and 2000 steps six scored 2-3, in about the same
    # time (benchmarks/readout_probe.py: a regression on those tokens, 8 of 40 at 112, 23 at 224).
    # Both with 2 noise/time draws per sample; the tiny default's 8 gave 17-35 of 100 at 224 (README)
    model_image_size: int = 224
    train_steps: int = 2000  # 12-14 minutes on 2 idle cores (2.4-2.8 steps/s at 224, R = 8)
    batch_size: int = 16
    phase_a_frac: float = 0.2  # SA-GR phase A (fm only) as a fraction of the steps
    ramp_frac: float = 0.2  # phase B (world weights ramp up)
    learning_rate: float = 1e-3
    num_workers: int = 1
    eval_episodes: int = 25  # per task: 100 episodes, a 95% interval about +-8 points wide at 20%
    execute_steps: int = 4  # actions executed per chunk of 8
    eval_max_steps: int | None = None  # None: each task's own limit
    videos: int = 4
    ablate: str | None = None  # "fm_only": the plain flow-matching baseline; "no_drift": SA-GR with drift_eta 0
    seed: int = 0
    data_dir: str = str(Path.home() / ".cache" / "sagrflow" / "demo_data")

    def __post_init__(self):
        if self.ablate is not None and self.ablate not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablate!r}; valid: {list(ABLATIONS)}")
        for key in ("demo_episodes", "train_steps", "batch_size", "eval_episodes", "execute_steps"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")

    @property
    def variant(self) -> str:
        return self.ablate or "sagr"

    @property
    def phase_a(self) -> int:
        return 0 if self.ablate == "fm_only" else int(self.train_steps * self.phase_a_frac)

    @property
    def ramp(self) -> int:
        return 0 if self.ablate == "fm_only" else int(self.train_steps * self.ramp_frac)


QUICK = dict(demo_episodes=4, train_steps=3, batch_size=4, num_workers=0, eval_episodes=1, eval_max_steps=12,
             videos=1, image_size=32, model_image_size=56)  # CI: every stage runs, nothing is expected to learn


def ensure_data(cfg: DemoConfig, log=print) -> Path:
    """Expert demonstrations for the suite's families, generated once per setting and cached."""
    from sagrflow.sim.generate import GenerateConfig, generate, suite_families

    root = Path(cfg.data_dir) / f"sim_{cfg.image_size}px_{cfg.demo_episodes}ep_seed{cfg.seed}"
    for family in suite_families(cfg.suite):
        final = root / f"sim_{family}"
        if final.is_dir():
            continue
        tmp = root / f".tmp_{family}"
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"generating {cfg.demo_episodes} expert episodes of sim_{family} -> {final}")
        gen = GenerateConfig(episodes=cfg.demo_episodes, image_size=cfg.image_size, codec="none", seed=cfg.seed)
        generate(family, tmp, gen, show_progress=False)
        (tmp / f"sim_{family}").rename(final)  # whole datasets only: a killed run regenerates
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def train(cfg: DemoConfig, data_root: Path, run_dir: Path) -> Path:
    """Train the embedded tiny default; returns the final policy directory."""
    from sagrflow.train.checkpoint import latest_checkpoint
    from sagrflow.train.config import load_config
    from sagrflow.train.trainer import Trainer

    run = load_config(None, train_overrides(cfg, data_root, run_dir))
    state = Trainer(run).fit()
    if state.step < cfg.train_steps:  # SIGTERM / Ctrl-C: the trainer saved and returned early
        raise KeyboardInterrupt(f"training stopped at step {state.step} of {cfg.train_steps}")
    checkpoint = latest_checkpoint(run.run_dir)
    if checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint in {run.run_dir}")
    return checkpoint / "policy"


def train_overrides(cfg: DemoConfig, data_root: Path, run_dir: Path) -> dict:
    """The trainer settings of a demo run (dotted keys over the tiny default)."""
    overrides = {
        "datasets.vla_data.data_root_dir": str(data_root),
        "datasets.vla_data.data_mix": f"sim_{cfg.suite}",
        "datasets.vla_data.per_device_batch_size": cfg.batch_size,
        "datasets.vla_data.num_workers": cfg.num_workers,
        "datasets.vla_data.image_size": [cfg.model_image_size] * 2,
        # the world model learns the step the policy is next called at: its drift acts at every call after the first
        "datasets.vla_data.temporal_delta_k": cfg.execute_steps,
        "framework.backbone.image_size": [cfg.model_image_size] * 2,
        "trainer.max_train_steps": cfg.train_steps,
        "trainer.save_interval": 0,
        "trainer.sagr_phase_a_steps": cfg.phase_a,
        "trainer.sagr_phase_b_ramp_steps": cfg.ramp,
        "trainer.fm_only": cfg.ablate == "fm_only",
        "trainer.learning_rate.base": cfg.learning_rate,
        # the tiny backbone starts from random weights: nothing pretrained to protect with a lower rate
        "trainer.learning_rate.backbone": cfg.learning_rate,
        "trainer.warmup_steps": max(1, cfg.train_steps // 20),
        "trainer.log_interval": max(1, min(10, cfg.train_steps // 50)),
        "trainer.output_dir": str(run_dir),
        "trainer.run_name": "train",
        "trainer.resume": "never",
        "trainer.seed": cfg.seed,
    }
    if cfg.ablate == "no_drift":  # the world model trains as in SA-GR; the flow head gets no correction
        overrides["framework.action_model.drift_eta"] = 0.0
    return overrides


def evaluate_all(cfg: DemoConfig, policy_dir: Path, run_dir: Path, log=print) -> dict:
    """The trained policy, random and zero on the sim suite -> {variant: summary}."""
    from sagrflow.eval.harness import RolloutConfig, evaluate
    from sagrflow.eval.policies import PolicySpec
    from sagrflow.eval.report import summarize, write_report
    from sagrflow.eval.suites import SimSuite

    suite = SimSuite(cfg.suite, cfg.image_size)
    rollout = RolloutConfig(execute_steps=cfg.execute_steps, num_envs=8, max_steps=cfg.eval_max_steps)
    out = {}
    for variant, spec, videos in ((cfg.variant, PolicySpec("sagr", str(policy_dir), seed=cfg.seed), cfg.videos),
                                  ("random", PolicySpec("random"), 0), ("zero", PolicySpec("zero"), 0)):
        results, seconds = evaluate(spec, suite, cfg.eval_episodes, rollout, run_dir / "videos", videos)
        meta = {"policy": variant, "suite": suite.name, "checkpoint": str(policy_dir) if variant == cfg.variant else "",
                "episodes_per_task": cfg.eval_episodes, "execute_steps": cfg.execute_steps,
                "seconds": round(seconds, 1)}
        out[variant] = summarize(results, meta)
        o = out[variant]["overall"]
        log(f"eval {variant:8s} {100 * o['success_rate']:5.1f}% ({o['successes']}/{o['episodes']}) in {seconds:.0f} s")
    write_report(out[cfg.variant], run_dir / "eval")
    return out


def sibling_result(run_dir: Path, variant: str) -> dict | None:
    """The overall result of the latest run of `variant` next to `run_dir` (same parent folder)."""
    runs = sorted(run_dir.parent.glob(f"*_{variant}/summary.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    summary = json.loads(runs[-1].read_text())
    return dict(summary["results"][variant], run=str(runs[-1].parent))


def run_demo(cfg: DemoConfig, run_dir: str | Path, log=print) -> dict:
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} is not empty: choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data_root = ensure_data(cfg, log)
    timings["data_s"] = time.perf_counter() - start
    t = time.perf_counter()
    policy_dir = train(cfg, data_root, run_dir)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    evals = evaluate_all(cfg, policy_dir, run_dir, log)
    timings["eval_s"] = time.perf_counter() - t
    from sagrflow.demo.plots import plot_losses

    title = f"{cfg.variant} on sim_{cfg.suite}, {cfg.train_steps} steps"
    phase_a = cfg.train_steps if cfg.ablate == "fm_only" else cfg.phase_a  # fm-only is phase A throughout
    metrics = read_metrics(run_dir / "train" / "metrics.jsonl")
    plot = plot_losses(metrics, run_dir / "loss_curves.png", phase_a, cfg.ramp, title)
    timings["total_s"] = time.perf_counter() - start
    results = {k: v["overall"] for k, v in evals.items()}
    others = [v for v in ("sagr", *ABLATIONS) if v != cfg.variant]
    summary = {"config": asdict(cfg), "variant": cfg.variant, "policy": str(policy_dir), "results": results,
               "compare": {v: sibling_result(run_dir, v) for v in others}, "timings": {k: round(v, 1) for k, v in timings.items()},
               "world": world_summary(metrics), "loss_curves": plot.name, "videos": [str(Path(v).relative_to(run_dir)) for v in evals[cfg.variant]["videos"]]}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "report.md").write_text(to_markdown(summary, evals[cfg.variant]))
    return summary


def world_summary(metrics: list[dict], last: int = 20) -> dict | None:
    """The world model at the end of training: loss/dyn and debug/world/token_change averaged over the
    last `last` logged steps with a valid pair, and their ratio (>= 1: no better than predicting that
    the task tokens do not change). None for a run without world terms (fm-only). Skipped
    (non-finite) steps are left out."""
    keys = ("loss/dyn", "debug/world/token_change")
    rows = [r for r in metrics if r.get(keys[1], 0.0) > 0 and all(math.isfinite(r[k]) for k in keys)][-last:]
    if not rows:
        return None
    dyn, change = (sum(r[k] for r in rows) / len(rows) for k in keys)
    return {"steps": [rows[0]["step"], rows[-1]["step"]], "loss_dyn": dyn, "token_change": change,
            "dyn_over_change": dyn / change}


def _row(name: str, r: dict) -> str:
    lo, hi = r["ci95"]
    return f"| {name} | {100 * r['success_rate']:.1f}% | {r['successes']}/{r['episodes']} | {100 * lo:.1f}% - {100 * hi:.1f}% |"


def to_markdown(summary: dict, evaluation: dict) -> str:
    cfg, variant = summary["config"], summary["variant"]
    lines = [f"# sagrflow demo: {variant} on sim_{cfg['suite']}", "",
             f"{cfg['train_steps']} training steps (batch {cfg['batch_size']}) on {cfg['demo_episodes']} expert "
             f"episodes per family; {cfg['eval_episodes']} evaluation episodes per task on unseen seeds "
             f"(>= 100000), {cfg['execute_steps']} actions executed per chunk.", "",
             "| policy | success | episodes | 95% CI (Wilson) |", "|---|---:|---:|---|"]
    lines.append(_row(f"**{variant}** (this run)", summary["results"][variant]))
    for name, r in summary["compare"].items():
        lines.append(_row(f"{name} ([run]({r['run']}))", r) if r else
                     f"| {name} | not run: `sagrflow demo{'' if name == 'sagr' else ' --ablate ' + name}` | | |")
    for name in ("random", "zero"):
        lines.append(_row(name, summary["results"][name]))
    own = summary["results"][variant]
    lines += ["", f"{variant}: {own['residuals']} of its {own['queries']} policy calls came k steps after the chunk "
              "they follow, the step the world model predicts: only those saw a residual, the drift and RRR's input."]
    world = summary["world"]
    if world is not None:
        verdict = "beats" if world["dyn_over_change"] < 1 else "is no better than"
        lines += ["", f"World model, steps {world['steps'][0]}-{world['steps'][1]}: loss/dyn {world['loss_dyn']:.3g} "
                  f"against {world['token_change']:.3g} for predicting that the task tokens do not change "
                  f"(ratio {world['dyn_over_change']:.3g}): the world predictor {verdict} that."]
    lines += ["", f"![loss curves]({summary['loss_curves']})", "", "Per task (this run):", "",
              "| task | success | n | 95% CI |", "|---|---:|---:|---|"]
    for task, r in evaluation["per_task"].items():
        lo, hi = r["ci95"]
        lines.append(f"| {task} | {100 * r['success_rate']:.1f}% | {r['episodes']} | {100 * lo:.1f}% - {100 * hi:.1f}% |")
    lines += ["", "Rollout videos: " + ", ".join(f"[{Path(v).name}]({v})" for v in summary["videos"]), "",
              "Timings (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in summary["timings"].items())]
    return "\n".join(lines) + "\n"


def quick(cfg: DemoConfig) -> DemoConfig:
    return replace(cfg, **QUICK)
