"""End to end on the tiny backbone and a tiny sim_all mix: metrics, checkpoints, resume, NaN steps."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from sagrflow.data.loader import TemporalLoader
from sagrflow.model.policy import WEIGHTS_FILE, SAGRPolicy
from sagrflow.train import metrics as m
from sagrflow.train.checkpoint import COMPLETE, latest_checkpoint
from sagrflow.train.config import load_config
from sagrflow.train.stability import NonFiniteError
from sagrflow.train.trainer import Trainer


def _rows(cfg):
    return m.read_metrics(cfg.run_dir / "metrics.jsonl")


def _weights(checkpoint):
    return load_file(str(checkpoint / "policy" / WEIGHTS_FILE))


def test_short_run_logs_every_metric_and_checkpoints(make_config):
    cfg = make_config(**{"trainer.max_train_steps": 3, "trainer.save_interval": 2, "trainer.logger": "tensorboard",
                         "trainer.sagr_phase_a_steps": 1, "trainer.sagr_phase_b_ramp_steps": 1})
    state = Trainer(cfg).fit()
    assert state.step == 3 and state.skipped_steps == 0
    rows = _rows(cfg)
    assert [r["step"] for r in rows] == [0, 1, 2]
    for name in m.ALL:
        assert all(name in r for r in rows), name
    assert {"optim/lr/base", "optim/lr/backbone"} <= set(rows[0])
    assert [r["debug/sagr_schedule/phase"] for r in rows] == [0, 1, 2]
    assert [r["debug/loss/weight_dyn"] for r in rows] == pytest.approx([0.0, 0.1, 0.2])
    assert all(math.isfinite(r["loss/total"]) and r["perf/samples_per_s"] > 0 for r in rows)
    assert all(r["perf/vlm_t_time_s"] > 0 for r in rows)
    # the t+k pass runs exactly when some sample of the batch has a valid target
    assert all((r["perf/vlm_tk_time_s"] > 0) == (r["debug/temporal/task_tokens_next_available"] > 0) for r in rows)
    assert 0 < rows[0]["debug/temporal/valid_tk_ratio"] <= 1
    for r in rows:  # the world model against "nothing changes": a ratio only where a pair was valid
        change = r["debug/world/token_change"]
        assert (change > 0) == (r["debug/temporal/valid_tk_ratio"] > 0)
        assert r.get(m.WORLD_SKILL) == (pytest.approx(r["loss/dyn"] / change) if change > 0 else None)
    assert any(m.WORLD_SKILL in r for r in rows)
    # run directory: resolved config, first-step report, checkpoints at step 2 and the end
    assert load_config(cfg.run_dir / "config.yaml") == cfg
    assert (cfg.run_dir / "first_step_report.json").is_file()
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]
    last = latest_checkpoint(cfg.run_dir)
    assert last.name == "step_0000003"
    for name in ("config.yaml", "normalizers.json", "optimizer.pt", "scheduler.pt", "trainer_state.json",
                 "rng_rank0.pt", "loader_rank0.json", COMPLETE):
        assert (last / name).is_file(), name
    policy = SAGRPolicy.load(last / "policy")
    assert policy.action_normalizer is not None and policy.state_normalizer is not None
    if any((cfg.run_dir / "tensorboard").glob("events.*")):
        assert (cfg.run_dir / "tensorboard").is_dir()


def test_resume_continues_exactly(make_config):
    common = {"trainer.max_train_steps": 6, "trainer.save_interval": 3, "trainer.sagr_phase_a_steps": 1,
              "trainer.sagr_phase_b_ramp_steps": 2}
    full = make_config(**common, **{"trainer.run_name": "full"})
    Trainer(full).fit()
    part = make_config(**common, **{"trainer.run_name": "part"})
    Trainer(part).fit(stop_at_step=3)  # as if preempted after the step-3 checkpoint
    # a crash in the middle of writing the next checkpoint leaves a temp folder and no COMPLETE
    (part.run_dir / "checkpoints" / ".tmp_step_0000004").mkdir()
    torn = part.run_dir / "checkpoints" / "step_0000005"
    torn.mkdir()
    (torn / "trainer_state.json").write_text("{")
    with (part.run_dir / "metrics.jsonl").open("a") as f:  # logged by the crashed run after its checkpoint
        f.write('{"step": 3, "loss/total": 123.0}\n')
    resumed = Trainer(part)
    assert resumed.state.step == 3 and resumed.loader.position.batch == 3
    torn.rename(torn.with_name(".torn"))  # out of the way of the resumed run's own step-5 save
    resumed.fit()
    full_losses = [(r["step"], r["loss/total"], r["loss/dyn"]) for r in _rows(full)]
    part_losses = [(r["step"], r["loss/total"], r["loss/dyn"]) for r in _rows(part)]
    assert part_losses == full_losses  # exact, step for step
    a, b = _weights(latest_checkpoint(full.run_dir)), _weights(latest_checkpoint(part.run_dir))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_that_misses_a_tensor(make_config):
    from safetensors.torch import save_file

    cfg = make_config(**{"trainer.max_train_steps": 1})
    Trainer(cfg).fit()
    path = latest_checkpoint(cfg.run_dir) / "policy" / WEIGHTS_FILE
    weights = load_file(str(path))
    dropped = next(k for k in weights if k.startswith("head."))
    del weights[dropped]
    save_file(weights, str(path))
    with pytest.raises(RuntimeError, match=f"missing: {dropped}"):
        Trainer(replace(cfg, trainer=replace(cfg.trainer, max_train_steps=2)))


def _poison(monkeypatch, which):
    plain = TemporalLoader.__iter__

    def poisoned(self):
        for i, batch in enumerate(plain(self)):
            if which(i):
                action = batch.action.clone()
                action[0, 0, 0] = float("nan")
                batch = replace(batch, action=action)
            yield batch

    monkeypatch.setattr(TemporalLoader, "__iter__", poisoned)


def test_nonfinite_step_is_skipped_and_training_continues(make_config, monkeypatch):
    _poison(monkeypatch, lambda i: i == 1)
    cfg = make_config(**{"trainer.max_train_steps": 4, "trainer.save_interval": 2})
    trainer = Trainer(cfg)
    state = trainer.fit()
    assert state.step == 4 and state.skipped_steps == 1
    rows = _rows(cfg)
    assert [r["stability/step_skipped"] for r in rows] == [0, 1, 0, 0]
    assert [r["stability/skipped_steps"] for r in rows] == [0, 1, 1, 1]
    assert not math.isfinite(rows[1]["loss/total"])
    assert all(math.isfinite(rows[i]["loss/total"]) for i in (0, 2, 3))
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    adam_steps = {int(s["step"]) for s in trainer.optimizer.state_dict()["state"].values()}
    assert adam_steps == {3}  # four steps, one without an update
    assert all(torch.isfinite(v).all() for v in _weights(latest_checkpoint(cfg.run_dir)).values())


def test_a_nonfinite_step_stops_a_run_whose_engine_steps_inside_backward(make_config, monkeypatch):
    _poison(monkeypatch, lambda i: i == 1)
    cfg = make_config(**{"trainer.max_train_steps": 4, "trainer.save_interval": 1})
    trainer = Trainer(cfg)
    trainer._steps_in_backward = True  # as under DeepSpeed (not installed here)
    with pytest.raises(NonFiniteError, match="step 1: non-finite loss nan .* under DeepSpeed"):
        trainer.fit()
    assert latest_checkpoint(cfg.run_dir).name == "step_0000001"  # nothing saved after the bad step


def test_too_many_nonfinite_steps_stop_the_run(make_config, monkeypatch):
    _poison(monkeypatch, lambda i: True)
    cfg = make_config(**{"trainer.max_train_steps": 5, "trainer.max_consecutive_skips": 2})
    with pytest.raises(NonFiniteError, match="2 non-finite steps in a row"):
        Trainer(cfg).fit()


def test_detect_anomaly_names_the_first_nonfinite_tensor(make_config, monkeypatch):
    cfg = make_config(**{"trainer.max_train_steps": 1, "trainer.detect_anomaly": True})
    trainer = Trainer(cfg)
    handle = trainer.policy.head.action_in.register_forward_hook(lambda mod, args, out: out * float("nan"))
    with pytest.raises(NonFiniteError, match="output of module 'head.action_in' \\(Linear\\); its inputs were finite"):
        trainer.fit()
    handle.remove()
    _poison(monkeypatch, lambda i: True)
    with pytest.raises(NonFiniteError, match=r"batch.action \(4, 8, 7\)"):
        Trainer(replace(cfg, trainer=replace(cfg.trainer, run_name="poisoned"))).fit()


def _deterministic_noise(monkeypatch):
    """Flow time and noise as functions of each sample alone, so batch composition cannot matter."""
    import sagrflow.model.action_head as action_head

    monkeypatch.setattr(action_head, "sample_time", lambda n, eps, device=None: torch.full((n,), 0.37, device=device))
    monkeypatch.setattr(torch, "randn_like", lambda x, **kw: torch.sin(7.3 * x + 1.1))


def test_gradient_accumulation_matches_the_large_batch(make_config, monkeypatch):
    _deterministic_noise(monkeypatch)
    common = {"trainer.max_train_steps": 2, "trainer.sagr_phase_a_steps": 0}
    big = make_config(**common, **{"trainer.run_name": "big", "datasets.vla_data.per_device_batch_size": 8})
    small = make_config(**common, **{"trainer.run_name": "small", "datasets.vla_data.per_device_batch_size": 4,
                                     "trainer.gradient_accumulation_steps": 2})
    tb = Trainer(big)
    grads_big = _first_step_grads(tb)
    tb.fit()
    ts = Trainer(small)
    grads_small = _first_step_grads(ts)
    # the micro-batches hold different numbers of valid t+k samples: a mean of their masked means would be wrong
    probe = iter(TemporalLoader(ts.dataset, small.data))
    valid = [int(next(probe).valid_tk.sum()) for _ in range(4)]
    assert valid[0] != valid[1] or valid[2] != valid[3], valid
    ts.fit()
    rb, rs = _rows(big), _rows(small)
    for key in ("loss/total", "loss/fm", "loss/dyn", "loss/geo", "optim/grad_norm", "debug/world/token_change",
                m.WORLD_SKILL):
        assert [r[key] for r in rs] == pytest.approx([r[key] for r in rb], rel=1e-5), key
    # the accumulated gradient is the large batch's; Adam's first update is about sign(grad) * lr,
    # so weights are compared to a fraction of lr (gradients that are 0 up to rounding may flip sign)
    scale = max(g.abs().max() for g in grads_big.values())
    for name, g in grads_big.items():
        torch.testing.assert_close(grads_small[name], g, rtol=1e-4, atol=1e-6 * scale, msg=name)
    lr = big.trainer.learning_rate["base"]
    for (name, pb), ps in zip(tb.policy.named_parameters(), ts.policy.parameters(), strict=True):
        torch.testing.assert_close(ps, pb, rtol=0, atol=0.05 * lr, msg=name)


def _first_step_grads(trainer) -> dict[str, torch.Tensor]:
    """The gradients the optimizer sees at its first step."""
    grads: dict[str, torch.Tensor] = {}
    names = {id(p): n for n, p in trainer.policy.named_parameters()}

    def snapshot(optimizer, args, kwargs):
        if not grads:
            grads.update({names[id(p)]: p.grad.clone() for g in optimizer.param_groups for p in g["params"]
                          if p.grad is not None})

    trainer.optimizer.optimizer.register_step_pre_hook(snapshot)
    return grads


def test_sigterm_saves_and_stops_after_the_next_step(make_config):
    import os
    import signal

    cfg = make_config(**{"trainer.max_train_steps": 5})
    trainer = Trainer(cfg)
    sent = []

    def preempt(optimizer, args, kwargs):
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    trainer.optimizer.optimizer.register_step_post_hook(preempt)
    state = trainer.fit()
    assert state.step == 2 and latest_checkpoint(cfg.run_dir).name == "step_0000002"
    assert signal.getsignal(signal.SIGTERM) is not trainer._request_stop


def test_resume_refuses_a_changed_model_or_parameter_groups_but_takes_runtime_settings(make_config):
    from sagrflow.core.config import ConfigError

    cfg = make_config(**{"trainer.max_train_steps": 1})
    Trainer(cfg).fit()
    with pytest.raises(ConfigError, match="framework section differs from the checkpoint"):
        Trainer(make_config(**{"trainer.max_train_steps": 2, "framework.action_model.drift_eta": 0.5}))
    with pytest.raises(ConfigError, match="trainer.freeze_modules, trainer.learning_rate paths or"):
        Trainer(make_config(**{"trainer.max_train_steps": 2, "trainer.freeze_modules": ["backbone"]}))
    # how the policy runs (RUNTIME_KEYS) is the resumed run's, with a warning
    with pytest.warns(UserWarning, match=r"framework.action_model.compile_world: False -> 'graphs'"):
        resumed = Trainer(make_config(**{"trainer.max_train_steps": 2, "framework.action_model.compile_world": "graphs"}))
    assert resumed.policy.config.action_model.compile_world == "graphs"
    assert resumed.policy.head.world._compiled_call_impl is not None and resumed.state.step == 1
    assert resumed.fit().step == 2  # and it trains on


def test_cuda_graphs_of_the_world_modules_are_refused_where_parameters_move(make_config):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from sagrflow.core.config import ConfigError

    cfg = make_config(**{"framework.action_model.compile_world": "graphs"})
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match=f"compile_world 'graphs' records CUDA graphs .* which {kind.value} moves"):
            Trainer(cfg, accelerator=SimpleNamespace(distributed_type=kind, gradient_accumulation_steps=1))


def test_graphed_gradients_are_moved_between_micro_batches_only(make_config):
    """unpool_grads (compile_world graphs) runs after each micro-batch's backward but the last, whose
    gradients the optimizer takes before any replay."""
    trainer = Trainer(make_config(**{"trainer.max_train_steps": 1, "trainer.gradient_accumulation_steps": 3}))
    batches = iter(trainer.loader)
    calls = []
    trainer.policy.unpool_grads = lambda: calls.append(trainer.policy.head.world.out.weight.grad is not None)
    trainer.train_step([next(batches) for _ in range(3)])
    assert calls == [True, True]


def test_training_and_inference_image_sizes_must_agree(make_config):
    from sagrflow.core.config import ConfigError

    with pytest.raises(ConfigError, match=r"framework.backbone.image_size=\[112, 112\] but the data is resized to \[56, 56\]"):
        Trainer(make_config(**{"datasets.vla_data.image_size": [56, 56], "framework.backbone.image_size": [112, 112]}))


def test_the_camera_count_and_k_are_recorded_checked_and_kept_on_resume(make_config):
    """The trainer writes the data's camera count and temporal_delta_k into the policy config (which
    predict_action checks cameras by and aligns its residual by), refuses others, and resumes a
    checkpoint saved before either was recorded."""
    import json

    import yaml

    from sagrflow.core.config import ConfigError
    from sagrflow.train.checkpoint import POLICY_DIR, latest_checkpoint

    with pytest.raises(ConfigError, match=r"framework.backbone.cameras=1 but the data has 2 cameras"):
        Trainer(make_config(**{"framework.backbone.cameras": 1}))
    with pytest.raises(ConfigError, match=r"framework.action_model.temporal_delta_k=5 but the data has 7"):
        Trainer(make_config(**{"framework.action_model.temporal_delta_k": 5}))
    with pytest.raises(ConfigError, match=r"k=7 is not in observation_indices \[0, 3\]: no sample would have"):
        Trainer(make_config(**{"datasets.vla_data.observation_indices": [0, 3]}))
    with pytest.raises(ConfigError, match=r"drift_residual='previous' .* set datasets.vla_data.chain_length >= 2"):
        Trainer(make_config(**{"framework.action_model.drift_residual": "previous"}))
    trainer = Trainer(make_config(**{"trainer.max_train_steps": 1, "trainer.save_interval": 1}))
    trainer.fit()
    saved = latest_checkpoint(trainer.run_dir) / POLICY_DIR
    policy_config = json.loads((saved / "config.json").read_text())
    run_config = yaml.safe_load((trainer.run_dir / "config.yaml").read_text())["framework"]
    for config in (policy_config, run_config):
        assert config["backbone"]["cameras"] == 2 and config["action_model"]["temporal_delta_k"] == 7
    del policy_config["backbone"]["cameras"]  # a checkpoint from before the count and k were recorded
    del policy_config["action_model"]["temporal_delta_k"]
    (saved / "config.json").write_text(json.dumps(policy_config))
    resumed = Trainer(make_config(**{"trainer.max_train_steps": 2, "trainer.save_interval": 1}))
    assert resumed.policy.config.backbone.cameras == 2 and resumed.policy.config.action_model.temporal_delta_k == 7


def test_an_accelerate_config_cannot_silently_change_accumulation(make_config, monkeypatch):
    from sagrflow.core.config import ConfigError

    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "3")
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3 but trainer.gradient_accumulation_steps=1"):
        Trainer(make_config())


def test_logged_learning_rate_is_the_one_the_step_used(make_config):
    from sagrflow.train.schedule import lr_factor

    cfg = make_config(**{"trainer.max_train_steps": 4, "trainer.warmup_steps": 2})
    Trainer(cfg).fit()
    t = cfg.trainer
    for r in _rows(cfg):
        used = t.learning_rate["base"] * lr_factor(r["step"], t.max_train_steps, t.warmup_steps, t.lr_scheduler,
                                                   t.min_lr_ratio)
        assert r["optim/lr"] == pytest.approx(used) and r["optim/lr/base"] == pytest.approx(used)


def test_rates_changed_on_resume_are_the_rates_trained_with(make_config):
    from sagrflow.train.schedule import lr_factor

    Trainer(make_config(**{"trainer.max_train_steps": 2})).fit()
    cfg = make_config(**{"trainer.max_train_steps": 4, "trainer.learning_rate.base": 3e-3,
                         "trainer.learning_rate.backbone": 2e-6, "trainer.adam_eps": 1e-6})
    with pytest.warns(UserWarning, match="changed settings"):
        trainer = Trainer(cfg)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["base"]["initial_lr"] == 3e-3 and groups["backbone"]["initial_lr"] == 2e-6
    assert all(g["eps"] == 1e-6 for g in groups.values())
    assert trainer.optimizer.state  # the moments came from the checkpoint
    trainer.fit()
    t = cfg.trainer
    step2 = next(r for r in _rows(cfg) if r["step"] == 2)
    assert step2["optim/lr/base"] == pytest.approx(3e-3 * lr_factor(2, 4, t.warmup_steps, t.lr_scheduler, t.min_lr_ratio))


def test_resuming_an_older_checkpoint_sets_the_later_ones_aside(make_config):
    Trainer(make_config(**{"trainer.max_train_steps": 6, "trainer.save_interval": 3})).fit()
    cfg = make_config(**{"trainer.max_train_steps": 6, "trainer.save_interval": 1, "trainer.save_total_limit": 2})
    root = cfg.run_dir / "checkpoints"
    branch = replace(cfg, trainer=replace(cfg.trainer, resume=str(root / "step_0000003"), max_train_steps=5))
    Trainer(branch).fit()
    # the branch's own checkpoints survive save_total_limit, and a later `resume: auto` continues the branch
    assert latest_checkpoint(cfg.run_dir).name == "step_0000005"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000004", "step_0000005"]
    [aside] = root.glob("abandoned_after_step_0000003_*")
    assert [p.name for p in aside.iterdir()] == ["step_0000006"] and (aside / "step_0000006" / COMPLETE).is_file()
    assert Trainer(cfg).state.step == 5


def test_a_fresh_start_refuses_an_earlier_runs_directory(make_config):
    from sagrflow.core.config import ConfigError

    Trainer(make_config(**{"trainer.max_train_steps": 1})).fit()
    with pytest.raises(ConfigError, match="holds checkpoints of an earlier run"):
        Trainer(make_config(**{"trainer.max_train_steps": 2, "trainer.resume": "never"}))


def test_a_rank_added_on_resume_is_told_it_has_no_saved_random_stream(make_config):
    from sagrflow.train import checkpoint as ckpt

    cfg = make_config(**{"trainer.max_train_steps": 1})
    trainer = Trainer(cfg)
    trainer.fit()
    path, old = latest_checkpoint(cfg.run_dir), trainer.state
    # resumed on 3 processes from a 1-process run: rank 0 restores its generator; ranks 1 and 2,
    # told they have none, seed their own (Trainer._resume) instead of all keeping one shared seed
    assert [ckpt.load_rank_state(path, rank, 3, old, 4, trainer.loader) for rank in (0, 1, 2)] == [True, False, False]


def test_each_forward_gets_the_target_plan_made_from_the_host_batch(make_config, monkeypatch):
    """The trainer plans each micro-batch's t+k targets before the batch moves to the device, so the
    forward has nothing to read back (test_model's meta-device step; on CUDA the test below)."""
    trainer = Trainer(make_config(**{"trainer.max_train_steps": 2, "trainer.gradient_accumulation_steps": 2}))
    seen = []
    forward = SAGRPolicy.forward

    def spy(self, batch, fm_only=False, plan=None):
        seen.append((plan, self.plan_targets(batch)))
        return forward(self, batch, fm_only, plan)

    monkeypatch.setattr(SAGRPolicy, "forward", spy)
    trainer.fit()
    assert len(seen) == 4 and all(given is not None and given == own for given, own in seen)
    assert any(own.run for _, own in seen) and any(given != seen[0][0] for given, _ in seen)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_step_waits_for_the_gpu_only_to_read_its_metrics(make_config, monkeypatch):
    """Under CUDA's sync debug mode a host read of device data raises: a training step reads once,
    its metrics (`_reduce`); the host can queue the next step while the GPU finishes this one."""
    trainer = Trainer(make_config(**{"trainer.max_train_steps": 3}))
    assert trainer.accelerator.device.type == "cuda"
    batches = iter(trainer.loader)
    trainer.train_step([next(batches)])  # the first step's report reads each parameter group's norm
    reads = []
    reduce = trainer._reduce

    def allowed(*args):
        torch.cuda.set_sync_debug_mode(0)
        try:
            reads.append(args)
            return reduce(*args)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(trainer, "_reduce", allowed)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.train_step([next(batches)])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(reads) == 2


def test_the_gradient_norm_is_read_whatever_form_the_clip_returns(tmp_path):
    """accelerate's clip returns a tensor (DDP, one process), None (DeepSpeed) or, under FSDP2, a DTensor."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from sagrflow.train.trainer import _norm_vector

    like = torch.zeros(3)
    assert _norm_vector(torch.tensor(2.5, dtype=torch.float64), like).tolist() == [2.5]
    assert math.isnan(_norm_vector(None, like).item())
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        p = torch.nn.Parameter(distribute_tensor(torch.full((8, 4), 1.0), init_device_mesh("cpu", (1,)), [Shard(0)]))
        (p.sum() * 2).backward()
        norm = torch.nn.utils.clip_grad_norm_([p], float("inf"))
        assert type(norm).__name__ == "DTensor"
        assert torch.cat([like, _norm_vector(norm, like)]).tolist() == [0.0, 0.0, 0.0, pytest.approx(2 * 32**0.5)]
    finally:
        dist.destroy_process_group()


def test_previous_drift_residual_trains_on_chains(make_config):
    """drift_residual "previous" with chains of 2: half the samples reuse their successor's tokens, and
    the drift, reading the predecessors' residuals, is nonzero and every loss finite."""
    cfg = make_config(**{"framework.action_model.drift_residual": "previous", "datasets.vla_data.chain_length": 2,
                         "framework.action_model.drift_eta": 1.0, "trainer.max_train_steps": 2})
    state = Trainer(cfg).fit()
    assert state.step == 2 and state.skipped_steps == 0
    rows = _rows(cfg)
    assert all(math.isfinite(r["loss/fm"]) and math.isfinite(r["loss/dyn"]) for r in rows)
    assert all(r["perf/target_reuse_ratio"] > 0 for r in rows)  # tk_index filled: predecessors exist
    assert any(r["debug/absmax/drift"] > 0 for r in rows)
