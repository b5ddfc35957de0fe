"""Closed-loop rollouts with action chunking and RRR replanning.

Each environment slot executes the first `execute_steps` actions of a chunk, then asks
for a new one, telling the policy how many steps it executed: SA-GR's world model predicts
the tokens k = temporal_delta_k steps after a chunk is issued, so its residual (drift, RRR)
exists only at calls k steps after one. With `check_every` set, the slot also asks
mid-chunk every that many steps; when the answer's RRR signal says the world did not move
as the policy's world model predicted (`Chunk.replan`), the rest of the running chunk is
dropped and the new one is executed; otherwise the running chunk goes on and the answer
is discarded.

Parallelism: `num_envs` episodes run in lockstep so one batched policy call serves every
slot that needs a chunk (on a CPU, batching the model is the cheap parallelism: it
already uses every core). `workers > 1` additionally splits the tasks over processes,
each with its own policy: worth it only for policies that are cheap next to the
simulator (the expert, random), and measured in benchmarks/eval.py.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sagrflow.eval.policies import Chunk, Episode, Policy, PolicySpec
from sagrflow.eval.suites import Suite


@dataclass(frozen=True)
class RolloutConfig:
    execute_steps: int | None = None  # actions executed from each chunk; None: the whole chunk
    check_every: int | None = None  # also query mid-chunk every this many steps, replanning on RRR
    num_envs: int = 4  # episodes stepped in lockstep, one batched policy call
    max_steps: int | None = None  # None: each task's own limit

    def __post_init__(self):
        for key in ("execute_steps", "check_every", "max_steps"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1 or None, got {value}")
        if self.num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {self.num_envs}")

    def executed(self, chunk_length: int) -> int:
        """Actions executed from a chunk of `chunk_length` before the policy is asked again."""
        return chunk_length if self.execute_steps is None else min(self.execute_steps, chunk_length)

    def check_due(self, since_chunk: int) -> bool:
        """Whether a mid-chunk check (--check-every) falls `since_chunk` steps after a chunk was adopted."""
        return bool(self.check_every) and since_chunk > 0 and since_chunk % self.check_every == 0


def call_steps(cfg: RolloutConfig, horizon: int) -> list[int]:
    """The steps after a chunk is adopted at which the harness calls the policy again: its checks
    (multiples of `check_every` before the chunk runs out) and the chunk's end."""
    n = cfg.executed(horizon)
    return [*(step for step in range(1, n) if cfg.check_due(step)), n]


def residual_note(cfg: RolloutConfig, horizon: int, k: int | None) -> str | None:
    """A warning when no call comes k steps after its chunk: a world model predicting k steps on
    then never sees a residual (no drift, no RRR); None when one does, or k is unknown."""
    steps = call_steps(cfg, horizon)
    if k is None or k in steps:
        return None
    if k > horizon:
        fix = f"no call can come later than a chunk of {horizon} lasts"
    else:
        checks = f", or --execute-steps above {k} with --check-every a divisor of {k}," if k < horizon else ""
        fix = f"--execute-steps {k}{checks} makes them act"
    return (f"the policy's world model predicts {k} steps after a chunk, but this rollout calls it "
            f"{', '.join(map(str, steps))} steps after one: the drift and RRR will not act ({fix})")


@dataclass(frozen=True)
class Job:
    task: str
    seed: int
    film: bool = False


@dataclass
class EpisodeResult:
    task: str
    seed: int
    success: bool
    steps: int
    queries: int  # policy calls for this episode
    replans: int  # chunks cut short by the RRR signal
    video: str | None = None
    residuals: int = 0  # calls that saw a world-model residual (k steps after the chunk they follow)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Slot:
    """One running episode."""

    job: Job
    env: object
    obs: dict
    plan: deque = field(default_factory=deque)
    since_chunk: int = 0  # steps executed from the running chunk
    steps: int = 0
    queries: int = 0
    replans: int = 0
    residuals: int = 0
    frames: list | None = None


def plan_jobs(suite: Suite, episodes: int, videos: int = 0) -> list[Job]:
    """`episodes` per task, seeds from the suite's first; the first episode of the first `videos` tasks is filmed."""
    if episodes < 1:
        raise ValueError(f"episodes per task must be >= 1, got {episodes}")
    return [Job(t.name, suite.first_seed + e, film=(e == 0 and i < videos))
            for i, t in enumerate(suite.tasks()) for e in range(episodes)]


def run_jobs(policy: Policy, suite: Suite, jobs: Sequence[Job], cfg: RolloutConfig = RolloutConfig(),
             video_dir: str | Path | None = None,
             progress: Callable[[EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Roll `jobs` out with `policy`, `cfg.num_envs` at a time; results in job order."""
    instructions = {t.name: t.instruction for t in suite.tasks()}
    pending = deque(enumerate(jobs))
    envs: dict[int, tuple[str, object]] = {}  # slot -> (task, env), reused while the task stays
    running: dict[int, tuple[int, _Slot]] = {}
    results: list[EpisodeResult | None] = [None] * len(jobs)
    try:
        while pending or running:
            for slot in range(cfg.num_envs):
                if slot not in running and pending:
                    index, job = pending.popleft()
                    running[slot] = (index, _start(policy, suite, envs, slot, job, instructions[job.task], cfg))
            _query(policy, running, cfg)
            for slot in list(running):
                index, s = running[slot]
                done, success = _step(s)
                if done:
                    del running[slot]
                    results[index] = _finish(s, success, instructions[s.job.task], video_dir)
                    if progress is not None:
                        progress(results[index])
    finally:
        for _, env in envs.values():
            getattr(env, "close", lambda: None)()
    return results  # type: ignore[return-value]


def _start(policy: Policy, suite: Suite, envs: dict, slot: int, job: Job, instruction: str,
           cfg: RolloutConfig) -> _Slot:
    task_env = envs.get(slot)
    if task_env is None or task_env[0] != job.task:
        if task_env is not None:
            getattr(task_env[1], "close", lambda: None)()
        envs[slot] = (job.task, suite.make_env(job.task, cfg.max_steps))
    env = envs[slot][1]
    obs, _ = env.reset(seed=job.seed)
    policy.reset(slot, Episode(job.task, instruction, job.seed, env))
    return _Slot(job, env, obs, frames=[_film_frame(obs)] if job.film else None)


def _query(policy: Policy, running: dict[int, tuple[int, _Slot]], cfg: RolloutConfig) -> None:
    """One batched policy call for every slot whose chunk ran out or whose mid-chunk check is due."""
    due = [slot for slot, (_, s) in running.items() if not s.plan or cfg.check_due(s.since_chunk)]
    if not due:
        return
    slots = [running[slot][1] for slot in due]
    chunks = policy.act([s.obs for s in slots], due, [bool(s.plan) for s in slots], [s.since_chunk for s in slots])
    for s, chunk in zip(slots, chunks, strict=True):
        s.queries += 1
        s.residuals += chunk.residual
        if not s.plan:
            _adopt(s, chunk, cfg)
        elif chunk.replan:  # the world surprised the policy: drop the rest of the running chunk
            s.replans += 1
            _adopt(s, chunk, cfg)


def _adopt(s: _Slot, chunk: Chunk, cfg: RolloutConfig) -> None:
    n = cfg.executed(len(chunk.actions))
    s.plan = deque(np.asarray(chunk.actions[:n], dtype=np.float32))
    s.since_chunk = 0


def _step(s: _Slot) -> tuple[bool, bool]:
    obs, _, terminated, truncated, info = s.env.step(s.plan.popleft())
    s.obs = obs
    s.steps += 1
    s.since_chunk += 1
    if s.frames is not None:
        s.frames.append(_film_frame(obs))
    return bool(terminated or truncated), bool(info.get("success", False))


def _finish(s: _Slot, success: bool, instruction: str, video_dir: str | Path | None) -> EpisodeResult:
    video = None
    if s.frames is not None and video_dir is not None:
        from sagrflow.sim.play import write_rollout_video

        path = Path(video_dir) / f"{s.job.task.replace('/', '_')}_seed{s.job.seed}.mp4"
        video = str(write_rollout_video(s.frames, instruction, path, label=f"{s.job.task} seed {s.job.seed}",
                                        success=success))
    return EpisodeResult(s.job.task, s.job.seed, success, s.steps, s.queries, s.replans, video, s.residuals)


def _film_frame(obs: dict) -> dict:
    return {"image": obs["image"], "wrist_image": obs["wrist_image"]}


# ---------------------------------------------------------------------- whole suites
def evaluate(spec: PolicySpec | None, suite: Suite, episodes: int, cfg: RolloutConfig = RolloutConfig(),
             video_dir: str | Path | None = None, videos: int = 0, workers: int = 1,
             policy: Policy | None = None, progress: Callable[[EpisodeResult], None] | None = None,
             ) -> tuple[list[EpisodeResult], float]:
    """Every task of `suite`, `episodes` times each -> (results in task order, wall seconds).

    `policy` overrides `spec.build()` in this process (a remote client, a test double);
    with `workers > 1` each worker process builds its own from `spec`.
    """
    if spec is None and policy is None:
        raise ValueError("evaluate needs a policy spec or a policy")
    jobs = plan_jobs(suite, episodes, videos)
    start = time.perf_counter()
    if workers <= 1 or policy is not None:
        results = run_jobs(policy if policy is not None else spec.build(), suite, jobs, cfg, video_dir, progress)
    else:
        results = _run_in_processes(spec, suite, jobs, cfg, video_dir, workers, progress)
    return results, time.perf_counter() - start


def _run_in_processes(spec: PolicySpec, suite: Suite, jobs: list[Job], cfg: RolloutConfig,
                      video_dir: str | Path | None, workers: int,
                      progress: Callable[[EpisodeResult], None] | None) -> list[EpisodeResult]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    tasks = list(dict.fromkeys(j.task for j in jobs))
    groups = [[j for j in jobs if j.task in tasks[w::workers]] for w in range(workers)]
    groups = [g for g in groups if g]
    # spawn, not fork: the parent may hold torch / codec threads that a forked child would deadlock on
    with ProcessPoolExecutor(len(groups), mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_worker, spec, suite, g, cfg, video_dir) for g in groups]
        by_job = {}
        for group, future in zip(groups, futures, strict=True):
            for job, result in zip(group, future.result(), strict=True):
                by_job[job] = result
                if progress is not None:
                    progress(result)
    return [by_job[j] for j in jobs]


def _worker(spec: PolicySpec, suite: Suite, jobs: list[Job], cfg: RolloutConfig,
            video_dir: str | Path | None) -> list[EpisodeResult]:
    import sys

    policy = spec.build()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)  # the workers share the cores
    return run_jobs(policy, suite, jobs, cfg, video_dir)
