"""framework.action_model.compile_world: graphs. The world predictor and the drift under torch.compile's
CUDA graphs (mode "reduce-overhead") train as eagerly, through gradient accumulation, and the policy
saves, loads and acts (predict_action, with its own CUDA graph) as an eager one.

Those two modules only: for a given batch their shapes are fixed by the config, where the anchor's
follow the prompt's length, and a CUDA graph is recorded (with its memory) per shape. On a CPU
torch.compile runs without CUDA graphs, which checks the rest (about 20 s); `bash
benchmarks/gpu_run.sh` runs it on a GPU (part graphs_trainer)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from sagrflow.model.policy import SAGRPolicy
from sagrflow.train.trainer import Trainer


def _config(make_config, compile_world):
    # accelerate puts the run on the GPU where there is one; fp32 there too, so that what differs is
    # the CUDA graphs, not where bf16 rounds (inductor's fused kernels round less often than eager)
    return make_config(**{"trainer.max_train_steps": 3, "trainer.gradient_accumulation_steps": 2,
                          "datasets.vla_data.chain_length": 2, "trainer.mixed_precision": "no",
                          "framework.action_model.compile_world": compile_world})


def _train(trainer: Trainer, steps: list[list]) -> list[dict[str, float]]:
    return [trainer.train_step(micro) for micro in steps]


def _observations(batch, elapsed: int | None = None) -> list[dict]:
    extra = {} if elapsed is None else {"elapsed": elapsed}
    return [{"image": [img.permute(1, 2, 0).numpy() for img in batch.image_t[i]], "lang": batch.lang[i],
             "state": batch.state_t[i].numpy(), "episode_id": f"ep{i}", **extra} for i in range(len(batch.lang))]


def test_world_and_drift_in_cuda_graphs_train_and_act_as_eagerly(make_config, tmp_path):
    eager = Trainer(_config(make_config, False))
    batches = iter(eager.loader)
    steps = [[next(batches), next(batches)] for _ in range(3)]  # 3 optimizer steps of 2 micro-batches
    eager_values = _train(eager, steps)

    graphed = Trainer(_config(make_config, "graphs"))  # the same seed: the same initial weights and noise
    torch._dynamo.reset()  # compiled code is cached per code object: count this test's graphs alone
    torch._dynamo.utils.counters.clear()
    graphed_values = _train(graphed, steps)
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 2  # one each, no recompilation
    if graphed.accelerator.device.type == "cuda":
        assert counters["inductor"]["cudagraph_skips"] == 0  # replayed as CUDA graphs, not eagerly

    # every metric of every step: a replay overwriting an output another micro-batch still needs
    # would show in the losses, the gradient norm or the diagnostics
    for step, (want, got) in enumerate(zip(eager_values, graphed_values, strict=True)):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float) and math.isfinite(value):
                assert math.isclose(got[key], value, rel_tol=2e-3, abs_tol=2e-5), (step, key, got[key], value)
    for (name, a), (_, b) in zip(eager.policy.state_dict().items(), graphed.policy.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-4, msg=name)

    # the compiled modules keep their parameter names: the checkpoint loads compiled, as its config says,
    # and eagerly. predict_action runs them eagerly (a compiled module's CUDA graphs cannot be recorded
    # inside its own), and its CUDA graph must not fall back to eager; a second call k steps after the
    # first gives the drift a residual, so the drift runs inside that graph
    saved = graphed.policy.save(tmp_path / "policy")
    loaded = SAGRPolicy.load(saved, device=graphed.accelerator.device)
    loaded_eager = SAGRPolicy.load(saved, device=graphed.accelerator.device, compile_world=False)
    assert loaded.head.world._compiled_call_impl is not None and loaded_eager.head.world._compiled_call_impl is None
    k = graphed.policy.config.action_model.temporal_delta_k
    out = []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="CUDA graph capture failed")
        for policy in (graphed.policy.eval(), loaded.eval(), loaded_eager.eval()):
            policy.predict_action(_observations(steps[0][0]), seed=3)
            out.append(policy.predict_action(_observations(steps[1][0], elapsed=k), seed=3))
    assert out[0]["residual"].all()  # the drift read a residual
    for other in out[1:]:
        np.testing.assert_allclose(other["actions"], out[0]["actions"], rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(other["rrr"], out[0]["rrr"], rtol=2e-3, atol=2e-4)
