from __future__ import annotations

import builtins
import math

import pytest

from sagrflow.train import metrics as m


def test_names_of_design_section_4_are_all_declared():
    for name in ("debug/temporal/has_image_tk", "debug/temporal/valid_tk_ratio",
                 "debug/temporal/task_tokens_next_available", "debug/sagr_schedule/phase",
                 "debug/sagr_schedule/alpha", "debug/sagr_schedule/loss_w_fm", "debug/sagr_schedule/loss_w_dyn",
                 "debug/sagr_schedule/loss_w_geo", "debug/sagr_schedule/loss_w_reg", "debug/loss/weight_dyn",
                 "debug/loss/weight_geo", "debug/loss/weight_reg", "debug/loss/valid_tk_ratio"):
        assert name in m.ALL
    assert len(set(m.ALL)) == len(m.ALL)


def test_jsonl_keeps_nan_and_tensorboard_falls_back_with_one_warning(tmp_path, monkeypatch):
    plain_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "torch.utils.tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return plain_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.warns(UserWarning, match="TensorBoard unavailable"):
        logger = m.MetricsLogger(tmp_path, "tensorboard")
    logger.log(0, {"loss/total": float("nan"), "optim/lr": 1e-4})
    logger.log(1, {"loss/total": 0.5, "optim/lr": 1e-4})
    logger.close()
    rows = m.read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and math.isnan(rows[0]["loss/total"]) and rows[1]["loss/total"] == 0.5


def test_other_ranks_write_nothing(tmp_path):
    logger = m.MetricsLogger(tmp_path, "tensorboard", enabled=False)
    logger.log(0, {"loss/total": 1.0})
    logger.close()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_record_torn_by_a_crash_is_dropped_and_a_corrupt_one_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0, "loss/total": 1.0}\n{"step": 1, "loss/total": 0.5}\n{"step": 2, "loss/to')
    assert [r["step"] for r in m.read_metrics(path)] == [0, 1]
    assert m.truncate_metrics(path, 1) == 2  # step 1 and the torn line
    assert [r["step"] for r in m.read_metrics(path)] == [0]
    path.write_text('{"step": 0}\nnot json\n{"step": 1}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2 is not a JSON record"):
        m.read_metrics(path)


def test_tensorboard_shows_a_resumed_runs_replayed_steps_once(tmp_path):
    """A run that resumes from its step-3 checkpoint logs steps 3 and 4 again: TensorBoard keeps the
    new values and hides the abandoned attempt's, as metrics.jsonl does."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = m.MetricsLogger(tmp_path, "tensorboard")
    for step in range(5):
        first.log(step, {"loss/total": float(step)})
    first.close()
    resumed = m.MetricsLogger(tmp_path, "tensorboard", start_step=3)
    for step in range(3, 6):
        resumed.log(step, {"loss/total": 100.0 + step})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("loss/total")
    assert [(s.step, s.value) for s in scalars] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 103.0), (4, 104.0), (5, 105.0)]
