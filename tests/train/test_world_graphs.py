"""The world predictor and the drift under torch.compile's CUDA graphs (mode "reduce-overhead") train as
eagerly, through gradient accumulation, a checkpoint and predict_action's own CUDA graph.

What a trainer option for CUDA graphs (issue 7: the host-bound step at batch 64) would need first.
Those two modules only: their shapes are fixed by the config, where the anchor's follow the prompt's
length, and a CUDA graph is recorded (with its memory) per shape. On a CPU torch.compile runs
without CUDA graphs, which checks the rest (about 20 s); `bash benchmarks/gpu_run.sh` runs it on a GPU."""

from __future__ import annotations

import numpy as np
import torch

from sagrflow.model.policy import SAGRPolicy
from sagrflow.train.trainer import Trainer


def _config(make_config):  # accelerate puts the run on the GPU where there is one
    return make_config(**{"trainer.max_train_steps": 3, "trainer.gradient_accumulation_steps": 2,
                          "datasets.vla_data.chain_length": 2})


def _train(trainer: Trainer, steps: list[list]) -> list[float]:
    return [trainer.train_step(micro)["loss/total"] for micro in steps]


def _observations(batch) -> list[dict]:
    return [{"image": [img.permute(1, 2, 0).numpy() for img in batch.image_t[i]], "lang": batch.lang[i],
             "state": batch.state_t[i].numpy()} for i in range(len(batch.lang))]


def test_world_and_drift_in_cuda_graphs_train_and_act_as_eagerly(make_config, tmp_path):
    eager = Trainer(_config(make_config))
    batches = iter(eager.loader)
    steps = [[next(batches), next(batches)] for _ in range(3)]  # 3 optimizer steps of 2 micro-batches
    eager_losses = _train(eager, steps)

    graphed = Trainer(_config(make_config))  # the same seed: the same initial weights and noise
    graphed.policy.compile_world(("world", "drift"), mode="reduce-overhead", dynamic=False)
    torch._dynamo.utils.counters.clear()
    graphed_losses = _train(graphed, steps)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # both ran compiled

    np.testing.assert_allclose(graphed_losses, eager_losses, rtol=2e-3)
    for (name, a), (_, b) in zip(eager.policy.state_dict().items(), graphed.policy.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=2e-3, atol=2e-4, msg=name)

    # the compiled modules keep their parameter names: the checkpoint loads into an eager policy
    loaded = SAGRPolicy.load(graphed.policy.save(tmp_path / "policy"), device=graphed.accelerator.device)
    obs = _observations(steps[0][0])
    chunks = [p.eval().predict_action(obs, seed=3)["actions"] for p in (graphed.policy, loaded)]
    np.testing.assert_allclose(chunks[0], chunks[1], rtol=2e-3, atol=2e-4)
    assert np.isfinite(chunks[0]).all()
