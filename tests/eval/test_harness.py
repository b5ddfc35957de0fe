"""The rollout harness: chunking, RRR replanning, lockstep batching, the expert and random baselines."""

from __future__ import annotations

import numpy as np
import pytest

from sagrflow.eval.harness import Job, RolloutConfig, evaluate, plan_jobs, run_jobs
from sagrflow.eval.policies import Chunk, ExpertPolicy, PolicySpec, RandomPolicy, SAGRAdapter, ZeroPolicy
from sagrflow.eval.report import summarize
from sagrflow.eval.suites import SimSuite, get_suite
from sagrflow.sim import SimEnv, run_expert
from tests.eval.conftest import LogSuite


class CallIndexPolicy:
    """Chunk n (1-based, per slot) is H actions of value n; replans on the calls listed."""

    name = "calls"

    def __init__(self, horizon: int = 8, replan_calls=(), record=None):
        self.horizon, self.replan_calls = horizon, set(replan_calls)
        self.calls: dict[int, int] = {}
        self.batches = record if record is not None else []
        self.checks: list[list[bool]] = []
        self.elapsed: list[list[int]] = []

    def reset(self, slot, episode):
        self.calls[slot] = 0

    def act(self, observations, slots, checks=None, elapsed=None):
        self.batches.append(len(slots))
        self.checks.append(list(checks))
        self.elapsed.append(list(elapsed))
        out = []
        for s in slots:
            self.calls[s] += 1
            n = self.calls[s]
            out.append(Chunk(np.full((self.horizon, 7), float(n), np.float32), replan=n in self.replan_calls,
                             residual=elapsed[len(out)] == 3))  # as a policy whose world model predicts 3 on
        return out


def test_execute_steps_sets_how_often_the_policy_is_asked():
    suite = LogSuite(n_tasks=1, max_steps=10)
    [r] = run_jobs(ZeroPolicy(), suite, [Job("t0", 0)], RolloutConfig(execute_steps=3))
    assert (r.steps, r.queries, r.success) == (10, 4, False)  # asked at steps 0, 3, 6, 9
    [r] = run_jobs(ZeroPolicy(), LogSuite(1, 10), [Job("t0", 0)], RolloutConfig())
    assert r.queries == 2  # whole chunks of 8


def test_rrr_signal_drops_the_rest_of_the_chunk_and_a_calm_check_keeps_it():
    suite = LogSuite(n_tasks=1, max_steps=14)
    policy = CallIndexPolicy(replan_calls={2})
    [r] = run_jobs(policy, suite, [Job("t0", 0)], RolloutConfig(check_every=3))
    executed = [float(a[0]) for a in suite.envs[0].actions]
    # chunk 1 until the check at step 3 fires a replan; chunk 2 survives the calm checks at 6 and 9
    # and runs out after its 8 actions; chunk 5 follows
    assert executed == [1] * 3 + [2] * 8 + [5] * 3
    assert (r.queries, r.replans) == (5, 1)
    # the policy is told which calls only check a running chunk (steps 3, 6, 9), so it can keep the
    # running chunk's world-model memory when it does not replan
    assert policy.checks == [[False], [True], [True], [True], [False]]
    # and how many steps it executed since it adopted its last chunk (the world model's horizon)
    assert policy.elapsed == [[0], [3], [3], [6], [8]]
    assert r.residuals == 2


def test_success_ends_the_episode_early():
    suite = LogSuite(n_tasks=1, max_steps=50, goal=3.0)
    [r] = run_jobs(CallIndexPolicy(horizon=2), suite, [Job("t0", 0)], RolloutConfig())
    assert r.success and r.steps == 5  # values 1, 1, 2, 2, 3


def test_lockstep_slots_share_one_batched_call_and_keep_job_order():
    batches: list[int] = []
    suite = LogSuite(n_tasks=2, max_steps=8)
    jobs = plan_jobs(suite, episodes=3)
    results = run_jobs(CallIndexPolicy(record=batches), suite, jobs, RolloutConfig(num_envs=4))
    assert batches == [4, 2]  # 6 equal-length episodes: 4 in lockstep, then the last 2
    assert [(r.task, r.seed) for r in results] == [(j.task, j.seed) for j in jobs]
    assert all(env.closed for env in suite.envs)


def test_expert_through_the_harness_matches_the_expert_itself():
    suite = SimSuite("all", image_size=32)
    results, _ = evaluate(PolicySpec("expert"), suite, episodes=2, cfg=RolloutConfig(num_envs=8))
    direct = {}
    for t in suite.tasks():
        env = SimEnv(t.name, render=False)
        for seed in (suite.first_seed, suite.first_seed + 1):
            direct[(t.name, seed)] = run_expert(env, seed)
    assert {(r.task, r.seed): (r.success, r.steps) for r in results} == direct
    rate = summarize(results)["overall"]["success_rate"]
    assert rate == sum(ok for ok, _ in direct.values()) / len(direct)
    assert rate >= 0.95


def test_random_policy_succeeds_about_never():
    results, _ = evaluate(PolicySpec("random"), SimSuite("all", image_size=32), episodes=2)
    overall = summarize(results)["overall"]
    assert overall["episodes"] == 30
    assert overall["success_rate"] <= 0.05
    assert overall["ci95"][1] < 0.2


def test_worker_processes_give_the_same_results():
    suite = SimSuite("goal", image_size=32)
    cfg = RolloutConfig(max_steps=20)
    one, _ = evaluate(PolicySpec("random"), suite, 2, cfg)
    two, _ = evaluate(PolicySpec("random"), suite, 2, cfg, workers=2)
    assert [r.to_dict() for r in one] == [r.to_dict() for r in two]


def test_expert_refuses_environments_it_cannot_read():
    with pytest.raises(ValueError, match="built-in sim"):
        run_jobs(ExpertPolicy(), LogSuite(1, 5), [Job("t0", 0)])


def test_sagr_checkpoint_rolls_out_batched_and_films(tiny_checkpoint, tmp_path):
    from sagrflow.eval.policies import load_sagr

    policy = load_sagr(str(tiny_checkpoint), num_steps=2)
    assert isinstance(policy, SAGRAdapter) and policy.horizon == 8
    suite = SimSuite("goal", image_size=48)
    results, _ = evaluate(None, suite, 1, RolloutConfig(max_steps=16, num_envs=4), tmp_path / "videos",
                          videos=1, policy=policy)
    assert [r.queries for r in results] == [2, 2, 2, 2] and all(r.steps == 16 for r in results)
    assert [r.video is not None for r in results] == [True, False, False, False]
    import av

    with av.open(results[0].video) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 17 + 10  # the 17 observations, then the last held for a second


def test_sagr_episode_actions_do_not_depend_on_the_other_environments(tiny_checkpoint):
    from sagrflow.eval.policies import Episode, load_sagr

    env = LogSuite(1, 10).make_env("t0", 10)
    obs, _ = env.reset()
    ep, other = Episode("t0", "do t0", 0), Episode("t0", "do t0", 1)
    alone, beside = load_sagr(str(tiny_checkpoint), num_steps=2), load_sagr(str(tiny_checkpoint), num_steps=2)
    alone.reset(0, ep)
    beside.reset(0, other)
    beside.reset(1, ep)
    for _ in range(2):  # two calls: the second one's noise too is the episode's own
        a = alone.act([obs], [0])[0].actions
        b = beside.act([obs, obs], [0, 1])[1].actions
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_suite_names_and_bad_configs():
    assert get_suite("sim_goal").name == "sim_goal" and get_suite("long").first_seed == 100_000
    assert get_suite("libero_10").name == "libero_10"
    with pytest.raises(ValueError, match="valid suites"):
        get_suite("libero_100")
    with pytest.raises(ValueError, match="execute_steps"):
        RolloutConfig(execute_steps=0)
    with pytest.raises(ValueError, match="episodes"):
        plan_jobs(LogSuite(), 0)
    with pytest.raises(ValueError, match="unknown policy"):
        PolicySpec("oracle").build()
    with pytest.raises(ValueError, match="checkpoint"):
        PolicySpec("sagr").build()


def test_random_policy_is_seeded_per_episode():
    a, b = RandomPolicy(), RandomPolicy()
    from sagrflow.eval.policies import Episode

    a.reset(0, Episode("t", "i", 7))
    b.reset(3, Episode("t", "i", 7))
    np.testing.assert_array_equal(a.act([{}], [0])[0].actions, b.act([{}], [3])[0].actions)


def test_resolve_checkpoint_accepts_trainer_layouts(tmp_path):
    from sagrflow.eval.policies import resolve_checkpoint

    for step, complete in ((1, True), (2, True), (3, False)):  # step 3 is being written
        policy = tmp_path / "run" / "checkpoints" / f"step_{step:07d}" / "policy"
        policy.mkdir(parents=True)
        (policy / "model.safetensors").write_bytes(b"")
        if complete:
            (policy.parent / "COMPLETE").write_text("")
    latest = tmp_path / "run" / "checkpoints" / "step_0000002" / "policy"
    assert resolve_checkpoint(tmp_path / "run") == latest
    assert resolve_checkpoint(latest.parent) == latest and resolve_checkpoint(latest) == latest
    with pytest.raises(ValueError, match="holds no policy"):
        resolve_checkpoint(tmp_path)

