"""predict_action (Euler steps, un-normalization, drift memory, RRR), padding, state, save / load."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sagrflow.model.inference import sample_chunk
from sagrflow.model.policy import WEIGHTS_FILE, SAGRPolicy

from .conftest import A, H, S, build_policy, normalizer, observation


@pytest.fixture(scope="module")
def policy(tiny_dir):
    p = build_policy(tiny_dir, action_normalizer=normalizer(A, -2.0, 4.0), state_normalizer=normalizer(S, -1.0, 1.0))
    return p.eval()


def predict(policy, obs, seed=0, **kw):
    return policy.predict_action(obs, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("steps", [1, 10])
def test_predict_action_shapes_and_unnormalization(policy, steps):
    policy.reset()
    out = predict(policy, [observation(0), observation(1)], num_steps=steps)
    assert out["actions"].shape == out["actions_normalized"].shape == (2, H, A)
    assert out["rrr"].shape == out["replan"].shape == (2,) and out["replan"].dtype == bool
    assert np.isfinite(out["actions"]).all()
    # min_max over [-2, 4]: a = 3 * a_norm + 1
    np.testing.assert_allclose(out["actions"], 3 * out["actions_normalized"] + 1, rtol=1e-5, atol=1e-5)


def test_euler_reuses_cached_cross_attention(policy):
    obs = [observation(0)]
    calls, vlm_calls = [], []
    kv = policy.head.dit.blocks[0].cross_attn.kv
    hooks = [kv.register_forward_hook(lambda *a: calls.append(1)),
             policy.backbone.register_forward_hook(lambda *a: vlm_calls.append(1))]
    try:
        policy.reset()
        predict(policy, obs, num_steps=10)
    finally:
        for h in hooks:
            h.remove()
    assert len(calls) == 1 and len(vlm_calls) == 1  # one VLM pass, keys/values projected once, attended 10 times


def test_state_changes_predicted_actions(policy):
    obs = observation(0, state=np.zeros(S))
    other = dict(obs, state=np.full(S, 0.9))
    policy.reset()
    a = predict(policy, [obs])["actions"]
    policy.reset()
    b = predict(policy, [other])["actions"]
    assert np.abs(a - b).max() > 1e-4


def test_padding_in_the_vlm_input_does_not_change_outputs(policy):
    short = observation(0, lang="go")
    long = observation(1, lang="pick up the red cup and put it in the top drawer")
    with torch.no_grad():
        batch = policy.backbone.prepare_inputs(torch.zeros(2, 1, 3, 56, 56, dtype=torch.uint8), ["go", long["lang"]])
        assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # "go" really is padded
    from sagrflow.model.inference import prepare_observations

    def velocity(obs_list):
        images, lang, state, _, _ = prepare_observations(policy, obs_list, torch.device("cpu"))
        with torch.no_grad():
            enc = policy.encode(images, lang)
            x = torch.linspace(-1, 1, H * A).view(1, H, A).expand(len(obs_list), H, A)
            residual = torch.zeros_like(enc.task_tokens)
            g = torch.Generator().manual_seed(0)
            chunk, _ = sample_chunk(policy.head, enc, state, residual, 3, g)
            ctx = policy.head.prepare_context(enc.vl_embs_list, enc.mask)
            v = policy.head.velocity(ctx, x, policy.head.time(torch.full((len(obs_list),), 0.3)), state)
        return enc.task_tokens, v, chunk

    tt_alone, v_alone, _ = velocity([short])
    tt_batch, v_batch, _ = velocity([short, long])
    torch.testing.assert_close(tt_alone[0], tt_batch[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v_alone[0], v_batch[0], atol=1e-5, rtol=1e-4)


def test_drift_memory_rrr_and_reset(tiny_dir):
    policy = build_policy(tiny_dir, drift_eta=0.5, rrr_threshold=0.0).eval()
    obs = observation(0)
    first = predict(policy, [obs])
    assert first["rrr"][0] == 0.0 and not first["replan"][0]  # nothing remembered yet
    second = predict(policy, [observation(3)])
    assert second["rrr"][0] > 0 and second["replan"][0]  # residual > 0 = threshold
    # the drift used the observed residual: same noise, different actions than without memory
    policy.reset()
    fresh = predict(policy, [observation(3)])
    assert fresh["rrr"][0] == 0.0
    assert np.abs(fresh["actions"] - second["actions"]).max() > 1e-6
    # memory is per episode
    policy.reset()
    predict(policy, [dict(obs, episode_id="a")])
    other = predict(policy, [dict(observation(3), episode_id="b")])
    assert other["rrr"][0] == 0.0


def test_a_calm_check_keeps_the_issued_chunks_memory_and_a_replan_replaces_it(tiny_dir):
    policy = build_policy(tiny_dir, drift_eta=0.5, rrr_threshold=1e9).eval()  # no check replans
    predict(policy, [dict(observation(0), episode_id="e")])
    memory = policy._memory["e"].pred_next.clone()
    calm = predict(policy, [dict(observation(2), episode_id="e", check=True)])
    assert not calm["replan"][0]
    torch.testing.assert_close(policy._memory["e"].pred_next, memory, rtol=0, atol=0)  # the chunk still running
    # the chunk runs out: the next call compares with what the issued chunk predicted, as if no check had run
    after_check = predict(policy, [dict(observation(3), episode_id="e")], seed=1)
    policy.reset()
    predict(policy, [dict(observation(0), episode_id="e")])
    no_check = predict(policy, [dict(observation(3), episode_id="e")], seed=1)
    np.testing.assert_array_equal(after_check["rrr"], no_check["rrr"])
    np.testing.assert_array_equal(after_check["actions"], no_check["actions"])
    # a check with nothing remembered (the running chunk is not this policy's) is dropped: still nothing
    policy.reset("e")
    predict(policy, [dict(observation(2), episode_id="e", check=True)])
    assert "e" not in policy._memory
    predict(policy, [dict(observation(0), episode_id="e")])
    # a check that replans issues its chunk: its prediction is remembered
    policy.config.action_model.rrr_threshold = 0.0
    replanned = predict(policy, [dict(observation(5), episode_id="e", check=True)])
    assert replanned["replan"][0]
    assert not torch.equal(policy._memory["e"].pred_next, policy._memory["e"].task_tokens)
    assert (policy._memory["e"].pred_next - memory).abs().max() > 1e-6



def test_only_a_call_k_steps_after_its_chunk_sees_a_residual(tiny_dir):
    policy = build_policy(tiny_dir, drift_eta=0.5, rrr_threshold=0.0, temporal_delta_k=3).eval()

    def second_call(**kw):  # call 1 issues a chunk (and its prediction for 3 steps on), call 2 comes later
        policy.reset()
        predict(policy, [dict(observation(0), episode_id="e", elapsed=0)])
        return predict(policy, [dict(observation(3), episode_id="e", **kw)], seed=1)

    at_k = second_call(elapsed=3)
    assert at_k["residual"][0] and at_k["rrr"][0] > 0 and at_k["replan"][0]
    # 2 steps on, the prediction is for another step: no residual, so no drift and no RRR
    early = second_call(elapsed=2)
    assert not early["residual"][0] and early["rrr"][0] == 0.0 and not early["replan"][0]
    policy.reset()
    no_memory = predict(policy, [dict(observation(3), episode_id="e")], seed=1)
    np.testing.assert_array_equal(early["actions"], no_memory["actions"])  # the plain flow chunk
    assert np.abs(at_k["actions"] - early["actions"]).max() > 1e-6  # at k, the drift acts
    # without "elapsed" the call is taken to come k steps on, and the policy says so
    with pytest.warns(UserWarning, match="without 'elapsed'") as said:
        unsaid = second_call()
    assert said[0].filename == __file__  # it names the caller of predict_action
    np.testing.assert_array_equal(unsaid["actions"], at_k["actions"])
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="'elapsed' must be an int"):
            second_call(elapsed=bad)
    # a checkpoint from before k was recorded: every call with memory sees its residual, as before
    policy.config.action_model.temporal_delta_k = None
    assert second_call(elapsed=2)["residual"][0]

def test_seeded_noise_follows_the_episode_not_the_batch(policy):
    a, b = dict(observation(0), episode_id="a"), dict(observation(1), episode_id="b")
    policy.reset()
    alone = [policy.predict_action([a], seed=7)["actions_normalized"][0] for _ in range(2)]
    policy.reset()
    # "a" now shares each batch with "b", in second place: its chunks are those it made alone
    batched = [policy.predict_action([b, a], seed=7)["actions_normalized"][1] for _ in range(2)]
    for x, y in zip(alone, batched, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
    assert np.abs(alone[0] - alone[1]).max() > 1e-3  # each call draws anew
    policy.reset("a")  # a new episode "a" starts its noise over
    np.testing.assert_allclose(policy.predict_action([a], seed=7)["actions_normalized"][0], alone[0], atol=1e-5)
    policy.reset("a")
    assert np.abs(policy.predict_action([a], seed=8)["actions_normalized"][0] - alone[0]).max() > 1e-3
    with pytest.raises(ValueError, match="generator or a seed"):
        policy.predict_action([a], generator=torch.Generator(), seed=7)


def test_predict_action_validates_observations(policy):
    with pytest.raises(ValueError, match="no 'state'"):
        policy.predict_action([{"image": observation(0)["image"], "lang": "x"}])
    with pytest.raises(ValueError, match="no 'image'"):
        policy.predict_action([{"lang": "x", "state": np.zeros(S)}])


def test_predict_action_refuses_another_camera_count(tiny_dir):
    policy = build_policy(tiny_dir).eval()
    two = observation(0)
    assert len(two["image"]) == 2
    one = {**two, "image": two["image"][:1]}
    policy.predict_action([one], seed=0)  # cameras not recorded (null): unchecked
    with pytest.raises(ValueError, match="1 and 2 cameras in one call"):
        policy.predict_action([one, two], seed=0)
    policy.config.backbone.cameras = 2
    policy.predict_action([two], seed=0)
    with pytest.raises(ValueError, match="trained on 2 cameras per observation; these observations have 1"):
        policy.predict_action([one], seed=0)


def test_save_then_load_gives_identical_predictions(policy, tmp_path):
    policy.save(tmp_path / "ckpt")
    loaded = SAGRPolicy.load(tmp_path / "ckpt").eval()
    assert loaded.config == policy.config
    assert loaded.action_normalizer.to_json() == policy.action_normalizer.to_json()
    obs = [observation(0), observation(1)]
    policy.reset()
    a = predict(policy, obs, seed=7)
    b = predict(loaded, obs, seed=7)
    np.testing.assert_array_equal(a["actions"], b["actions"])
    for (n1, p1), (n2, p2) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_how_a_policy_runs_may_differ_from_its_checkpoint_and_acting_compiles_nothing(policy, tmp_path):
    """RUNTIME_KEYS load in place of the saved values, no other key does; predict_action runs every
    module eagerly whatever compile_world (a training setting)."""
    policy.save(tmp_path / "ckpt")
    graphed = SAGRPolicy.load(tmp_path / "ckpt", compile_world="graphs", cuda_graphs=False).eval()
    assert (graphed.config.action_model.compile_world, graphed.config.action_model.cuda_graphs) == ("graphs", False)
    assert graphed.head.world._compiled_call_impl is not None
    obs = [observation(0), observation(1)]
    policy.reset()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for elapsed in (None, policy.config.action_model.temporal_delta_k):  # the second call: the drift runs
        extra = {} if elapsed is None else {"elapsed": elapsed}
        got, want = (predict(p, [{**o, **extra} for o in obs], seed=7) for p in (graphed, policy))
        np.testing.assert_array_equal(got["actions"], want["actions"])
    assert got["residual"].all()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    assert graphed.head.world._compiled_call_impl is not None  # compiled again for training
    with pytest.raises(ValueError, match=r"\['drift_eta'\] is not one of \['compile_world', 'cuda_graphs'\]"):
        SAGRPolicy.load(tmp_path / "ckpt", drift_eta=0.5)
    with pytest.raises(ValueError, match="compile_world='graph': use one of"):
        SAGRPolicy.load(tmp_path / "ckpt", compile_world="graph")
    with pytest.raises(ValueError, match="cuda_graphs='no' must be true or false"):
        SAGRPolicy.load(tmp_path / "ckpt", cuda_graphs="no")


def test_strict_load_names_missing_and_unexpected(policy, tmp_path):
    ckpt = policy.save(tmp_path / "bad")
    weights = load_file(str(ckpt / WEIGHTS_FILE))
    dropped = "head.action_out.weight"
    vlm_key = next(k for k in weights if k.startswith("backbone.vlm."))
    del weights[dropped], weights[vlm_key]
    weights["head.not_a_param"] = torch.zeros(1)
    save_file(weights, str(ckpt / WEIGHTS_FILE))
    with pytest.raises(RuntimeError) as err:
        SAGRPolicy.load(ckpt)
    msg = str(err.value)
    assert f"missing: {dropped}" in msg and "unexpected: head.not_a_param" in msg
    assert f"missing: {vlm_key}" in msg  # the VLM parameter left on the meta device is named too
