"""The training loop on accelerate: one process on CPU/GPU, or many under `accelerate launch`.

    trainer = Trainer(load_config("configs/tiny_cpu.yaml"))
    trainer.fit()

One optimizer step = `gradient_accumulation_steps` micro-batches on every rank. The
trainer owns the loss weights (SA-GR schedule), the reduction (`loss.loss_share`), the
device, the precision (bf16 autocast on CUDA only) and the optimizer; the model only
returns per-sample terms. A step whose loss or gradient is not finite is skipped on every
rank: no update, counted, logged.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext

import torch

from sagrflow.core.batch import Batch
from sagrflow.core.config import ConfigError, to_dict
from sagrflow.core.device import to_device
from sagrflow.data.loader import TemporalLoader, build_dataset
from sagrflow.model.config import RUNTIME_KEYS
from sagrflow.model.policy import SAGRPolicy
from sagrflow.model.target_cache import TargetCache
from sagrflow.train import checkpoint as ckpt
from sagrflow.train import metrics as m
from sagrflow.train.config import RunConfig, config_to_yaml, read_yaml, save_config
from sagrflow.train.loss import loss_share, valid_share
from sagrflow.train.optim import build_optimizer, build_scheduler, freeze
from sagrflow.train.schedule import sagr_weights
from sagrflow.train.stability import NonFiniteError, NonFiniteFinder, first_step_report, group_grad_norms
from sagrflow.train.timing import VlmPassTimer

_DIAGNOSTICS = {"has_image_tk": "debug/temporal/has_image_tk",
                "task_tokens_next_available": "debug/temporal/task_tokens_next_available",
                # where the t+k targets came from (shares of the samples): VLM pass, reuse, frozen-VLM cache
                "target_pass_ratio": "perf/target_pass_ratio", "target_reuse_ratio": "perf/target_reuse_ratio",
                "target_cache_ratio": "perf/target_cache_ratio"}
_ABSMAX = ("task_tokens", "pred_velocity", "drift")


class Trainer:
    def __init__(self, cfg: RunConfig, accelerator=None):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        t = cfg.trainer
        self.cfg = cfg
        precision = t.mixed_precision if torch.cuda.is_available() else "no"  # no CPU autocast
        # fm-only leaves the anchor, world predictor and drift head out of the graph: DDP must know
        ddp = DistributedDataParallelKwargs(find_unused_parameters=t.fm_only)
        self.accelerator = acc = accelerator or Accelerator(
            gradient_accumulation_steps=t.gradient_accumulation_steps, mixed_precision=precision,
            kwargs_handlers=[ddp])
        if cfg.framework.action_model.compile_world == "graphs" and ckpt.sharded(acc):
            raise ConfigError("framework.action_model.compile_world 'graphs' records CUDA graphs over the parameters' "
                              f"addresses, which {acc.distributed_type.value} moves every step: use true or false")
        self.run_dir = cfg.run_dir
        self.gas = t.gradient_accumulation_steps
        if acc.gradient_accumulation_steps != self.gas:  # `accelerate launch` exports its config's value
            raise ConfigError(f"the accelerate config sets gradient_accumulation_steps={acc.gradient_accumulation_steps} "
                              f"but trainer.gradient_accumulation_steps={self.gas}: remove it from the accelerate "
                              "config; the trainer's value is the one used")
        set_seed(t.seed)  # the same initial weights on every rank
        self.dataset = build_dataset(cfg.data)
        self.loader = TemporalLoader(self.dataset, cfg.data, rank=acc.process_index, world_size=acc.num_processes,
                                     pin_memory=acc.device.type == "cuda")
        resume_from = ckpt.resolve_resume(t.resume, self.run_dir)
        if resume_from is None:
            ckpt.check_fresh_start(self.run_dir)
        self.policy = self._build_policy(resume_from)
        freeze(self.policy, t.freeze_modules)
        self.policy.to(acc.device)  # before the optimizer: on CUDA it is built fused (one kernel per step)
        self.policy.target_cache = _target_cache(self.policy, t)
        optimizer = build_optimizer(self.policy, t)
        self.scheduler = build_scheduler(optimizer, t)
        self.state = ckpt.TrainState(world_size=acc.num_processes, per_device_batch_size=cfg.data.per_device_batch_size,
                                     gradient_accumulation_steps=self.gas)
        settings = ckpt.group_settings(optimizer)  # this run's, before a checkpoint's state replaces them
        if resume_from is not None:
            ckpt.load_optimizer_state(acc, resume_from, optimizer, self.scheduler)
        if acc.state.deepspeed_plugin is not None:  # DeepSpeed reads it from a prepared dataloader, which we keep
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.per_device_batch_size
        self.model, self.optimizer = acc.prepare(self.policy, optimizer)
        # DeepSpeed's engine clips and steps inside `accelerator.backward`: a non-finite step cannot be skipped
        self._steps_in_backward = acc.state.deepspeed_plugin is not None
        self.base_weights = cfg.framework.action_model.loss_weights
        self.timer = VlmPassTimer(self.policy.backbone)
        self._last_saved = -1
        self._untimed_steps = 0  # steps whose VLM pass times have not been read yet
        self._consecutive_skips = 0
        self._reported = False
        self._stop_requested = False  # set by SIGTERM (preemption); every rank stops after the same step
        if resume_from is not None:
            self._resume(resume_from)
            ckpt.apply_settings(self.optimizer, self.scheduler, settings)
        else:
            set_seed(t.seed + acc.process_index)  # each rank draws its own noise and flow times
            if acc.is_main_process:  # a start that crashed before its first checkpoint left records
                m.truncate_metrics(self.run_dir / "metrics.jsonl", 0)
        if acc.is_main_process:
            save_config(cfg, self.run_dir / "config.yaml")
        self.logger = m.MetricsLogger(self.run_dir, t.logger, acc.is_main_process, wandb_project=t.wandb_project,
                                      wandb_mode=t.wandb_mode, run_name=t.run_name, start_step=self.state.step)

    # --- construction --------------------------------------------------------------------
    def _build_policy(self, resume_from) -> SAGRPolicy:
        self._check_data_matches_model()
        if resume_from is not None:
            # strict: names each missing parameter. How the policy runs is this run's (a change is warned of)
            runtime = {key: getattr(self.cfg.framework.action_model, key) for key in RUNTIME_KEYS}
            policy = SAGRPolicy.load(resume_from / ckpt.POLICY_DIR, **runtime)
            if policy.config.backbone.cameras is None:  # saved before the camera count was recorded
                policy.config.backbone.cameras = self.cfg.framework.backbone.cameras
            if policy.config.action_model.temporal_delta_k is None:  # saved before k was recorded
                policy.config.action_model.temporal_delta_k = self.cfg.framework.action_model.temporal_delta_k
            if policy.config != self.cfg.framework:
                raise ConfigError(f"the framework section differs from the checkpoint's ({resume_from}); "
                                  "resume with the checkpoint's framework config or start a new run_name")
            return policy
        norms = self.dataset.normalizers
        if len(norms) != 1:
            warnings.warn(f"the mix holds robot types {sorted(norms)}; the policy gets no normalizers "
                          "(normalizers.json in each checkpoint keeps them all)", stacklevel=2)
            return SAGRPolicy.from_config(self.cfg.framework)
        (pair,) = norms.values()
        state = pair["state"] if self.cfg.framework.action_model.state_dim else None
        return SAGRPolicy.from_config(self.cfg.framework, pair["action"], state)

    def _check_data_matches_model(self) -> None:
        """The model's shapes against the data's (a mismatch is a ConfigError naming the key); an unset
        framework.backbone.cameras takes the data's camera count, an unset temporal_delta_k the data's k
        (the mix's datasets share one)."""
        am, ds = self.cfg.framework.action_model, self.dataset.datasets[0]
        if am.temporal_delta_k is None:  # recorded in every checkpoint: predict_action aligns its residual by it
            am.temporal_delta_k = ds.embodiment.k
        checks = [("action_dim", ds.action.shape[1], am.action_dim),
                  ("action_horizon", ds.embodiment.horizon, am.action_horizon),
                  ("temporal_delta_k", ds.embodiment.k, am.temporal_delta_k)]
        if self.cfg.data.include_state and am.state_dim:
            checks.append(("state_dim", ds.state.shape[1], am.state_dim))
        for name, data_value, model_value in checks:
            if data_value != model_value:
                raise ConfigError(f"framework.action_model.{name}={model_value} but the data has {data_value}: "
                                  f"set framework.action_model.{name}: {data_value}")
        if not ds.embodiment.has_tk_observation and not self.cfg.trainer.fm_only:
            indices, k = list(ds.embodiment.observation_indices), ds.embodiment.k
            raise ConfigError(f"k={k} is not in observation_indices {indices}: no sample would have a t+k pair, "
                              f"so the world model would learn nothing; set datasets.vla_data.observation_indices "
                              f"to [0, {k}] (or leave it unset with datasets.vla_data.temporal_delta_k)")
        if am.drift_residual == "previous" and self.cfg.data.chain_length < 2 and not self.cfg.trainer.fm_only:
            raise ConfigError("framework.action_model.drift_residual='previous' reads the residual of the chain member "
                              "before each sample: set datasets.vla_data.chain_length >= 2 (a batch of B then "
                              "holds B/L independent draws: raise per_device_batch_size with it)")
        backbone, cameras = self.cfg.framework.backbone, len(ds.embodiment.video_keys)
        if backbone.cameras is None:  # recorded in config.yaml and every checkpoint, and checked at inference
            backbone.cameras = cameras
        elif backbone.cameras != cameras:
            raise ConfigError(f"framework.backbone.cameras={backbone.cameras} but the data has {cameras} cameras "
                              f"({', '.join(ds.embodiment.video_keys)}): set it to {cameras}, or null")
        data_size, model_size = list(ds.embodiment.image_size), list(backbone.image_size)
        if data_size != model_size:  # predict_action resizes to the backbone's size
            raise ConfigError(f"framework.backbone.image_size={model_size} but the data is resized to {data_size} "
                              "(datasets.vla_data.image_size, else the embodiment's): inference would show the policy "
                              "another size than it trained on; set both to one size")

    def _resume(self, path) -> None:
        from accelerate.utils import set_seed

        acc = self.accelerator
        old = ckpt.load_train_state(path)
        self.state.step, self.state.skipped_steps, self.state.samples_seen = old.step, old.skipped_steps, old.samples_seen
        ckpt.load_sharded_state(acc, path)
        if not ckpt.load_rank_state(path, acc.process_index, acc.num_processes, old, self.cfg.data.per_device_batch_size,
                                    self.loader):  # RNG last: nothing after it may draw
            # a rank added on resume: its own stream, not the shared seed every new rank would hold
            set_seed(self.cfg.trainer.seed + acc.process_index)
        self._last_saved = old.step
        self._reported = True  # the first-step report stays the first step's
        if acc.is_main_process:
            for moved in ckpt.set_aside_later(self.run_dir, old.step):
                print(f"{moved.name} is later than the step resumed from: moved to {moved.parent}")
            changed = _changed_keys(read_yaml(path / "config.yaml"), to_dict(self.cfg))
            if changed:
                warnings.warn(f"resuming {path.name} with changed settings: {', '.join(changed)}", stacklevel=2)
            dropped = m.truncate_metrics(self.run_dir / "metrics.jsonl", old.step)
            print(f"resumed from {path} at step {old.step}" + (f" ({dropped} later metric records dropped)"
                                                                if dropped else ""))

    # --- the step ------------------------------------------------------------------------
    def train_step(self, micro_batches: list[Batch]) -> dict[str, float]:
        acc, t = self.accelerator, self.cfg.trainer
        w = sagr_weights(self.state.step, t.sagr_phase_a_steps, t.sagr_phase_b_ramp_steps, self.base_weights)
        n_samples, n_valid = self._global_counts(micro_batches)
        stats: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            # the t+k plan from the host copy, so the forward reads nothing back from the device
            plan = None if t.fm_only else self.policy.plan_targets(batch)
            batch = batch.to(acc.device, non_blocking=True)
            with acc.accumulate(self.model):
                with self._anomaly_finder(batch):
                    out = self.model(batch, fm_only=t.fm_only, plan=plan)
                total, terms = loss_share(out, w.as_dict(), n_samples, n_valid, scale=acc.num_processes)
                # the world model against "nothing changes" (see _world_skill), reduced exactly as loss/dyn
                change = valid_share(out["token_change"], out["valid_tk"], n_valid) * acc.num_processes
                with self._backward_anomaly():
                    acc.backward(total * self.gas)  # accelerate divides by gas; the shares already sum to the step loss
                if i < len(micro_batches) - 1:  # the next micro-batch's CUDA-graph replays would overwrite them
                    self.policy.unpool_grads()
            self._accumulate(stats, total, terms, change, out, len(micro_batches))
        report_groups = group_grad_norms(self.optimizer) if not self._reported else None
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm or float("inf"))
        values = self._reduce(stats, grad_norm, n_valid / n_samples)  # the step's one read from the device
        # under DeepSpeed the engine owns clipping and reports no norm before its step: loss only
        norm_ok = grad_norm is None or _finite(values["optim/grad_norm"])
        skipped = not (_finite(values["loss/total"]) and norm_ok)
        if skipped and self._steps_in_backward:  # every rank holds the same reduced values: all raise
            raise NonFiniteError(
                f"step {self.state.step}: non-finite loss {values['loss/total']:.4g} or grad norm "
                f"{values['optim/grad_norm']:.4g} under DeepSpeed, whose engine steps inside backward "
                "(accelerate), before a step can be skipped: stopped; resume from the last checkpoint, and "
                "rerun with --trainer.detect_anomaly true to find the first non-finite tensor")
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}  # this step's
        with warnings.catch_warnings():  # torch warns when a skipped first step leaves the optimizer unstepped
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.scheduler.step()
        values.update(self._schedule_metrics(w, skipped, lrs))
        if report_groups is not None:
            self._report_first_step(values, report_groups)
        return values

    def _global_counts(self, micro_batches: list[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and valid_tk samples of the whole step (every micro-batch, every rank), on the device:
        counted in the loader's host batches and copied without waiting for the queued work."""
        valid = torch.cat([b.valid_tk for b in micro_batches])
        counts = to_device(torch.tensor([float(valid.numel()), float((valid > 0).sum())]), self.accelerator.device)
        counts = self.accelerator.reduce(counts, "sum") if self.accelerator.num_processes > 1 else counts
        return counts[0], counts[1]

    def _accumulate(self, stats: dict, total: torch.Tensor, terms: dict, token_change: torch.Tensor, out: dict,
                    n_micro: int) -> None:
        # loss terms and token_change are shares of the step's value (they add up); diagnostics are averaged
        rows = {"loss/total": total.detach(), **{f"loss/{k}": v.detach() for k, v in terms.items()},
                "debug/world/token_change": token_change.detach()}
        rows.update({name: out[key].detach().float() / n_micro for key, name in _DIAGNOSTICS.items()})
        for key, value in rows.items():
            stats[key] = stats.get(key, 0) + value
        for key in _ABSMAX:
            v = out[f"absmax/{key}"].detach().float()
            name = f"debug/absmax/{key}"
            stats[name] = torch.maximum(stats[name], v) if name in stats else v

    def _reduce(self, stats: dict, grad_norm, valid_ratio: torch.Tensor) -> dict[str, float]:
        """The step's metrics, reduced over the ranks, in one read: `stats` (shares and diagnostics of
        this rank), the clipped gradient's norm (None under DeepSpeed) and the step's global valid_tk ratio."""
        acc = self.accelerator
        names = [k for k in stats if not k.startswith("debug/absmax/")]
        names.append(_STOP)
        stats[_STOP] = to_device(torch.tensor(float(self._stop_requested)), acc.device)
        vec = torch.stack([stats[k].float() for k in names])
        peaks = torch.stack([stats[f"debug/absmax/{k}"] for k in _ABSMAX])
        if acc.num_processes > 1:
            vec = acc.reduce(vec, "mean")  # shares are scaled by the world size: their mean is the global value
            torch.distributed.all_reduce(peaks, op=torch.distributed.ReduceOp.MAX)
        norm = _norm_vector(grad_norm, vec)
        read = torch.cat([vec, peaks.float(), norm, valid_ratio.float().reshape(1)]).tolist()  # one read for all
        keys = [*names, *(f"debug/absmax/{k}" for k in _ABSMAX), "optim/grad_norm", "debug/loss/valid_tk_ratio"]
        out = dict(zip(keys, read, strict=True))
        out["debug/temporal/valid_tk_ratio"] = out["debug/loss/valid_tk_ratio"]
        out.update(_world_skill(out))
        return out

    def _schedule_metrics(self, w, skipped: bool, lrs: dict[str, float]) -> dict[str, float]:
        out = {
            "debug/sagr_schedule/phase": w.phase, "debug/sagr_schedule/alpha": w.alpha,
            "debug/sagr_schedule/loss_w_fm": w.fm, "debug/sagr_schedule/loss_w_dyn": w.dyn,
            "debug/sagr_schedule/loss_w_geo": w.geo, "debug/sagr_schedule/loss_w_reg": w.reg,
            "debug/loss/weight_dyn": w.dyn, "debug/loss/weight_geo": w.geo, "debug/loss/weight_reg": w.reg,
            "stability/step_skipped": float(skipped),
        }
        out.update({f"optim/lr/{name}": lr for name, lr in lrs.items()})
        out["optim/lr"] = lrs.get("base", next(iter(lrs.values())))
        return out

    def _anomaly_finder(self, batch: Batch):
        if not self.cfg.trainer.detect_anomaly:
            return nullcontext()
        finder = NonFiniteFinder(self.policy)
        finder.check_batch(batch)
        return finder

    def _backward_anomaly(self):
        # debug only: names the first backward function that returns NaN (slow, so off by default)
        return torch.autograd.detect_anomaly(check_nan=True) if self.cfg.trainer.detect_anomaly else nullcontext()

    def _report_first_step(self, values: dict, groups: dict) -> None:
        self._reported = True
        if not self.accelerator.is_main_process:
            return
        keys = [f"debug/absmax/{k}" for k in _ABSMAX] + list(m.LOSSES) + ["optim/grad_norm"]
        text = first_step_report({k: values[k] for k in keys}, groups, self.run_dir / "first_step_report.json")
        print(text)

    # --- the loop ------------------------------------------------------------------------
    def fit(self, stop_at_step: int | None = None) -> ckpt.TrainState:
        """Train to `trainer.max_train_steps` (or stop after `stop_at_step`, as a preemption would)."""
        from tqdm.auto import tqdm

        t, acc = self.cfg.trainer, self.accelerator
        end = t.max_train_steps if stop_at_step is None else min(stop_at_step, t.max_train_steps)
        global_batch = self.cfg.data.per_device_batch_size * self.gas * acc.num_processes
        # accelerate keeps the accumulation count in a process-wide singleton: a second Accelerator
        # made in this process (another Trainer) would otherwise change how this one scales and syncs
        acc.gradient_accumulation_steps = self.gas
        batches = iter(self.loader)
        previous = _on_sigterm(self._request_stop)
        bar = tqdm(total=t.max_train_steps, initial=self.state.step, disable=not acc.is_main_process,
                   dynamic_ncols=True, desc="train")
        try:
            while self.state.step < end:
                values = self._timed_step(batches, global_batch)
                stop = values.pop(_STOP) > 0
                self._after_step(values, bar)
                if stop:
                    if acc.is_main_process:
                        bar.write(f"stop requested (SIGTERM): saving at step {self.state.step} and exiting")
                    break
            if self._last_saved != self.state.step:
                self.save()
        finally:
            _on_sigterm(previous)
            bar.close()
            self.logger.close()
        return self.state

    def _request_stop(self, signum, frame) -> None:
        self._stop_requested = True

    def _timed_step(self, batches: Iterator[Batch], global_batch: int) -> dict[str, float]:
        start = time.perf_counter()
        # torch's DataLoader draws its base seed from the global generator whenever it starts an
        # epoch's iterator; fenced off, resuming mid-epoch leaves the model's noise stream intact
        with torch.random.fork_rng(devices=[]):
            micro = [next(batches) for _ in range(self.gas)]
        data_time = time.perf_counter() - start
        values = self.train_step(micro)
        step_time = time.perf_counter() - start
        values.update({"perf/step_time_s": step_time, "perf/data_time_s": data_time,
                       "perf/samples_per_s": global_batch / step_time})
        return values

    def _after_step(self, values: dict[str, float], bar) -> None:
        t = self.cfg.trainer
        step = self.state.step  # the index of the step just taken, as its schedule saw it
        skipped = values["stability/step_skipped"] > 0
        self.state.step += 1
        self._untimed_steps += 1
        self.state.samples_seen += self.cfg.data.per_device_batch_size * self.gas * self.accelerator.num_processes
        self.state.skipped_steps += int(skipped)
        self._consecutive_skips = self._consecutive_skips + 1 if skipped else 0
        values["stability/skipped_steps"] = self.state.skipped_steps
        if skipped and self.accelerator.is_main_process:
            bar.write(f"step {step}: non-finite loss {values['loss/total']:.4g} or grad norm "
                      f"{values['optim/grad_norm']:.4g}; step skipped ({self.state.skipped_steps} so far)")
        if skipped or step % t.log_interval == 0 or self.state.step == t.max_train_steps:
            # per step, averaged since the last log: read here, not every step (on CUDA it waits for the GPU)
            passes = self.timer.collect(self._untimed_steps)
            self._untimed_steps = 0
            values.update({f"perf/vlm_{k}_time_s": v for k, v in passes.items()})
            self.logger.log(step, values)
        bar.set_postfix(loss=f"{values['loss/total']:.4f}", samples_s=f"{values['perf/samples_per_s']:.1f}",
                        refresh=False)
        bar.update(1)
        if t.max_consecutive_skips and self._consecutive_skips >= t.max_consecutive_skips:
            raise NonFiniteError(f"{self._consecutive_skips} non-finite steps in a row (last: step {step}); "
                                 "rerun with --trainer.detect_anomaly true to find the first non-finite tensor")
        if t.save_interval and self.state.step % t.save_interval == 0:
            self.save()

    def save(self):
        path = ckpt.save_checkpoint(
            self.accelerator, self.run_dir, self.state, policy=self.policy, optimizer=self.optimizer.optimizer
            if hasattr(self.optimizer, "optimizer") else self.optimizer, scheduler=self.scheduler,
            loader=self.loader, config_yaml=config_to_yaml(self.cfg), normalizers=self.dataset.normalizers,
            save_total_limit=self.cfg.trainer.save_total_limit)
        self._last_saved = self.state.step
        return path


_STOP = "control/stop_requested"


def _changed_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts, as 'key: old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in _changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))]
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _on_sigterm(handler):
    """Install `handler` for SIGTERM where signals can be handled (the main thread); returns the old one."""
    import signal
    import threading

    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def _target_cache(policy: SAGRPolicy, t) -> TargetCache | None:
    """A frozen VLM's t+k outputs are cacheable (model/target_cache.py); the policy checks at every
    step that the backbone is still frozen and unchanged, and bypasses the cache otherwise."""
    frozen = not any(p.requires_grad for p in policy.backbone.parameters())
    return TargetCache(t.target_cache_mb << 20) if frozen and t.target_cache_mb and not t.fm_only else None


def _norm_vector(grad_norm, like: torch.Tensor) -> torch.Tensor:
    """The gradient norm that `accelerator.clip_grad_norm_` returned -> (1,) float32 on `like`'s device:
    NaN for None (DeepSpeed reports none before its step); FSDP2's DTensor, replicated over its mesh,
    as its full value."""
    if grad_norm is None:
        return like.new_full((1,), float("nan"), dtype=torch.float32)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor (not imported: torch builds without distributed lack it)
        grad_norm = grad_norm.full_tensor()
    return torch.as_tensor(grad_norm, dtype=torch.float32, device=like.device).reshape(1)


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


def _world_skill(values: dict[str, float]) -> dict[str, float]:
    """loss/dyn over debug/world/token_change, the loss_dyn of predicting no change: below 1, the world
    predictor beats that; at or above 1 it has learned nothing of the dynamics. Absent when no pair
    was valid or the tokens did not move at all (fm-only, an all-invalid step)."""
    change = values.get("debug/world/token_change", 0.0)
    return {m.WORLD_SKILL: values["loss/dyn"] / change} if change > 0 else {}
