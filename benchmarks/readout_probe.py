"""Is it the data, the features or the head? Plain-regression probes on the demo's sim data.

Each probe maps (two camera images, state, instruction) straight to the expert's action
chunk with an MSE loss (no flow matching, no world model), trains for `--steps` at
`--batch-size` on the demo's cached demonstrations, and reports the relative MSE per action
dimension on the training data and the closed-loop success on the goal suite's evaluation
seeds, with the same harness as `sagrflow eval`. A probe that succeeds where the SA-GR
policy does not says the budget and the data suffice and the gap is in the policy's head.

    python benchmarks/readout_probe.py --probe cnn_keypoints            # small CNN + spatial softmax
    python benchmarks/readout_probe.py --probe vlm --image-size 224     # the tiny VLM's vision tokens + the summary

`--data-dir` is the demo's cache (`sagrflow demo` writes it); the probe reads its sim_goal.
Legend: B batch, C cameras (2), H chunk (8), A action dim (7), S state dim (8).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sagrflow.core.image import to_chw_uint8
from sagrflow.data.config import VlaDataConfig
from sagrflow.data.loader import TemporalLoader, build_dataset

H, A, S = 8, 7, 8


class CNNKeypoints(nn.Module):
    """Per camera: 3 convolutions (stride 4 in all), FiLM by the instruction, a spatial softmax."""

    def __init__(self, n_tasks: int, channels: int = 64):
        super().__init__()
        self.enc = nn.ModuleList(nn.Sequential(nn.Conv2d(3, 32, 5, 2, 2), nn.GELU(), nn.Conv2d(32, channels, 3, 2, 1),
                                               nn.GELU(), nn.Conv2d(channels, channels, 3, 1, 1)) for _ in range(2))
        self.task = nn.Embedding(n_tasks, 64)
        self.film = nn.Linear(64, 2 * channels)
        self.mlp = nn.Sequential(nn.Linear(2 * channels * 2 + S + 64, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                                 nn.Linear(512, H * A))

    def forward(self, images: torch.Tensor, state: torch.Tensor, task: torch.Tensor, lang: list[str]) -> torch.Tensor:
        """images (B, C, 3, h, w) uint8, state (B, S), task (B,) ids -> (B, H, A)."""
        x = images.float() / 127.5 - 1
        te = self.task(task)
        gain, shift = self.film(te).chunk(2, -1)
        points = []
        for c, enc in enumerate(self.enc):
            f = enc(x[:, c]) * (1 + gain[..., None, None]) + shift[..., None, None]  # (B, F, h', w')
            p = f.flatten(2).softmax(-1).view_as(f)
            points += [(p.sum(3) * torch.linspace(-1, 1, f.shape[2])).sum(-1),
                       (p.sum(2) * torch.linspace(-1, 1, f.shape[3])).sum(-1)]
        return self.mlp(torch.cat([*points, state, te], 1)).view(-1, H, A)


class VLMSummary(nn.Module):
    """The tiny default VLM and the policy's observation summary (its default layer), then an MLP."""

    def __init__(self, n_tasks: int):
        super().__init__()
        from sagrflow.model.backbone import VLMBackbone
        from sagrflow.model.config import ActionModelConfig
        from sagrflow.model.observation import ObservationSummary

        self.backbone = VLMBackbone.from_pretrained("tiny:qwen2_5_vl")
        self.layer = ActionModelConfig(action_horizon=H, action_dim=A).observation_layer
        self.summary = ObservationSummary(self.backbone.hidden_size, 256, 4)
        self.mlp = nn.Sequential(nn.Linear(256 + S, 512), nn.GELU(), nn.Linear(512, 512), nn.GELU(),
                                 nn.Linear(512, H * A))

    def forward(self, images: torch.Tensor, state: torch.Tensor, task: torch.Tensor, lang: list[str]) -> torch.Tensor:
        out = self.backbone(images, lang)
        z = self.summary(out.hidden_states[self.layer], out.visual_mask, out.visual_pos, out.text_mask, out.cameras)
        return self.mlp(torch.cat([z, state], 1)).view(-1, H, A)


PROBES = {"cnn_keypoints": CNNKeypoints, "vlm": VLMSummary}


class ProbePolicy:
    """The harness's policy protocol around a probe: one chunk per call, normalization undone."""

    name = "probe"

    def __init__(self, net: nn.Module, tasks: dict[str, int], size: int, state_norm, action_norm):
        self.net, self.tasks, self.size, self.sn, self.an = net.eval(), tasks, size, state_norm, action_norm
        self.lang: dict[int, str] = {}

    def reset(self, slot, episode) -> None:
        self.lang[slot] = episode.instruction

    def act(self, observations, slots, checks=None, elapsed=None):
        from sagrflow.eval.policies import CAMERAS, Chunk

        # the loader's own resize, so the probe sees at evaluation what it trained on
        img = torch.stack([to_chw_uint8(np.stack([o[k] for k in CAMERAS]), (self.size, self.size))
                           for o in observations])  # (B, C, 3, h, w) uint8
        state = torch.from_numpy(self.sn.normalize(np.stack([o["state"] for o in observations]).astype(np.float32)))
        lang = [self.lang[s] for s in slots]
        with torch.no_grad():
            out = self.net(img, state.float(), torch.tensor([self.tasks[x] for x in lang]), lang)
        actions = self.an.unnormalize(out.double().numpy()).astype(np.float32)
        return [Chunk(a) for a in actions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe", choices=sorted(PROBES), default="cnn_keypoints")
    ap.add_argument("--data-dir", default=str(Path.home() / ".cache/sagrflow/demo_data/sim_128px_2000ep_seed0"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = VlaDataConfig(data_root_dir=args.data_dir, data_mix="sim_goal", per_device_batch_size=args.batch_size,
                        num_workers=1, image_size=[args.image_size] * 2)
    dataset = build_dataset(cfg)
    state_norm, action_norm = dataset.datasets[0].normalizers
    from sagrflow.sim.tasks import get_task, task_names

    tasks = {get_task(n).instruction: i for i, n in enumerate(task_names("goal"))}
    net = PROBES[args.probe](len(tasks))
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=0.01)
    batches, start = iter(TemporalLoader(dataset, cfg)), time.perf_counter()
    for step in range(args.steps):
        b = next(batches)
        pred = net(b.image_t, b.state_t.float(), torch.tensor([tasks[x] for x in b.lang]), list(b.lang))
        loss = F.mse_loss(pred, b.action.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    b = next(batches)
    with torch.no_grad():
        pred = net.eval()(b.image_t, b.state_t.float(), torch.tensor([tasks[x] for x in b.lang]), list(b.lang))
    rel = ((pred - b.action) ** 2).mean((0, 1)) / b.action.var((0, 1)).clamp_min(1e-8)
    print("relative MSE (x, y, z, gripper) on a training batch:", [round(float(v), 3) for v in rel[[0, 1, 2, 6]]])

    from sagrflow.eval.harness import RolloutConfig, plan_jobs, run_jobs
    from sagrflow.eval.suites import SimSuite

    suite = SimSuite("goal", 128)
    results = run_jobs(ProbePolicy(net, tasks, args.image_size, state_norm, action_norm), suite,
                       plan_jobs(suite, args.episodes), RolloutConfig(execute_steps=4, num_envs=8))
    print(f"closed loop: {sum(r.success for r in results)} / {len(results)} "
          f"(execute 4 of 8, seeds from {suite.first_seed})")


if __name__ == "__main__":
    main()
