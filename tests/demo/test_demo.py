"""`sagrflow demo --quick`: every stage end to end (data, SA-GR training, eval, report), and the ablation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sagrflow.cli import main
from sagrflow.demo.plots import plot_losses
from sagrflow.demo.run import DemoConfig, train_overrides


def test_quick_demo_and_fm_only_ablation_end_to_end(tmp_path, capsys):
    cache = tmp_path / "cache"
    sagr, fm = tmp_path / "runs" / "1_sagr", tmp_path / "runs" / "2_fm_only"
    assert main(["demo", "--quick", "--suite", "goal", "--out", str(sagr), "--data-dir", str(cache)]) == 0
    summary = json.loads((sagr / "summary.json").read_text())
    assert set(summary["results"]) == {"sagr", "random", "zero"}
    assert summary["results"]["sagr"]["episodes"] == 4  # one per goal task
    assert summary["compare"] == {"fm_only": None, "no_drift": None}
    assert (sagr / "loss_curves.png").stat().st_size > 0 and (sagr / summary["videos"][0]).stat().st_size > 0
    assert (sagr / "eval" / "report.json").is_file()
    metrics = [json.loads(line) for line in (sagr / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 2 and "loss/dyn" in metrics[0]
    world = summary["world"]  # averaged over the logged steps with a valid pair
    rows = [m for m in metrics if m["debug/world/token_change"] > 0]
    assert world["steps"] == [rows[0]["step"], rows[-1]["step"]]
    assert world["token_change"] == pytest.approx(sum(m["debug/world/token_change"] for m in rows) / len(rows))
    assert world["dyn_over_change"] == pytest.approx(world["loss_dyn"] / world["token_change"])
    report = (sagr / "report.md").read_text()
    assert "| **sagr** (this run) |" in report and "sagrflow demo --ablate fm_only" in report
    assert "sagrflow demo --ablate no_drift" in report
    assert f"(ratio {world['dyn_over_change']:.3g})" in report
    # the world model learns the step the policy is next called at, so every call but an episode's first
    # sees a residual (the drift's and RRR's input)
    policy_config = json.loads((Path(summary["policy"]) / "config.json").read_text())
    assert policy_config["action_model"]["temporal_delta_k"] == summary["config"]["execute_steps"]
    own = summary["results"]["sagr"]
    assert 0 < own["residuals"] == own["queries"] - own["episodes"]
    assert f"sagr: {own['residuals']} of its {own['queries']} policy calls" in report

    data_before = sorted(p.name for p in cache.rglob("*"))
    assert main(["demo", "--quick", "--ablate", "fm_only", "--suite", "goal", "--out", str(fm),
                 "--data-dir", str(cache)]) == 0
    assert sorted(p.name for p in cache.rglob("*")) == data_before  # the demonstrations were cached
    ablation = json.loads((fm / "summary.json").read_text())
    assert ablation["variant"] == "fm_only" and ablation["world"] is None
    fm_metrics = [json.loads(line) for line in (fm / "train" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss/dyn"] == 0.0 and m["debug/temporal/task_tokens_next_available"] == 0.0 for m in fm_metrics)
    assert ablation["compare"]["sagr"]["episodes"] == 4  # picked up the SA-GR run next to it
    assert "fm_only" in (fm / "report.md").read_text()
    assert "report:" in capsys.readouterr().out


def test_demo_refuses_a_used_directory_and_bad_settings(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    assert main(["demo", "--quick", "--out", str(tmp_path / "used"), "--data-dir", str(tmp_path / "c")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ablation"):
        DemoConfig(ablate="no_world")
    with pytest.raises(ValueError, match="train_steps"):
        DemoConfig(train_steps=0)


def test_loss_plot_marks_phases(tmp_path):
    metrics = [{"step": s, "loss/total": 2.0 / (s + 1), "loss/fm": 1.0 / (s + 1), "loss/dyn": 0.0} for s in range(0, 50, 5)]
    png = plot_losses(metrics, tmp_path / "loss.png", phase_a=10, ramp=10, title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="loss"):
        plot_losses([{"step": 0, "optim/lr": 1.0}], tmp_path / "none.png", 0, 0)


def test_a_skipped_non_finite_step_does_not_break_the_report(tmp_path):
    """A step skipped for a NaN loss is logged as such; the curves and the world summary leave it out."""
    from sagrflow.demo import run
    from sagrflow.train.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, backend="none")
    for step in range(4):
        bad = step == 2
        logger.log(step, {"loss/total": float("nan") if bad else 1.0, "loss/dyn": float("nan") if bad else 0.5,
                          "debug/world/token_change": float("nan") if bad else 0.25})
    logger.close()
    metrics = run.read_metrics(tmp_path / "metrics.jsonl")  # the demo's own reading of the run's records
    assert plot_losses(metrics, tmp_path / "loss.png", phase_a=1, ramp=1).is_file()
    world = run.world_summary(metrics)
    assert world["steps"] == [0, 3] and world["dyn_over_change"] == pytest.approx(2.0)


def test_no_drift_ablation_is_sagr_with_drift_eta_0(tmp_path):
    """--ablate no_drift trains exactly the SA-GR run (schedule, world losses) with the drift switched off;
    fm_only drops the world model and its schedule."""
    from sagrflow.train.config import load_config

    sagr = train_overrides(DemoConfig(), tmp_path, tmp_path)
    no_drift = train_overrides(DemoConfig(ablate="no_drift"), tmp_path, tmp_path)
    assert no_drift.pop("framework.action_model.drift_eta") == 0.0 and no_drift == sagr
    assert sagr["trainer.sagr_phase_a_steps"] > 0 and not sagr["trainer.fm_only"]
    fm = train_overrides(DemoConfig(ablate="fm_only"), tmp_path, tmp_path)
    assert fm["trainer.fm_only"] and fm["trainer.sagr_phase_a_steps"] == 0
    run = load_config(None, train_overrides(DemoConfig(ablate="no_drift"), tmp_path, tmp_path))
    assert run.framework.action_model.drift_eta == 0.0
