"""predict_action's Euler loop replayed as a CUDA graph equals the eager loop (needs a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from sagrflow.model.cuda_graphs import GraphCache

from .conftest import build_policy, observation

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def test_off_cuda_the_function_runs_directly():
    cache = GraphCache()
    lin = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert torch.equal(cache.run("k", lin, lambda a: (lin(a),), [x])[0], lin(x))
    assert not cache.graphs  # nothing recorded on a CPU


@cuda
def test_graph_replay_equals_eager_and_follows_inputs_and_weights(tiny_dir):
    policy = build_policy(tiny_dir, drift_eta=0.5).cuda().eval()
    obs = [observation(0), observation(1, lang="open the drawer")]

    def chunk(graphs: bool, seed: int, episode_ids=(0, 1)):
        policy.config.action_model.cuda_graphs = graphs
        for o, e in zip(obs, episode_ids, strict=True):
            o["episode_id"] = e
        return policy.predict_action(obs, generator=torch.Generator().manual_seed(seed))["actions_normalized"]

    for seed in (0, 1):  # a second replay with new noise: the graph reads its inputs afresh
        policy.reset()
        eager = chunk(False, seed)
        policy.reset()
        graph = chunk(True, seed)
        torch.testing.assert_close(torch.as_tensor(graph), torch.as_tensor(eager), atol=1e-5, rtol=1e-4)
    # second call of the episodes: the drift path (a residual) is a graph of its own
    policy.reset()
    chunk(False, 0)
    eager = chunk(False, 3)
    policy.reset()
    chunk(False, 0)  # the same memory as the eager pair had
    torch.testing.assert_close(torch.as_tensor(chunk(True, 3)), torch.as_tensor(eager), atol=1e-5, rtol=1e-4)
    assert len(policy._graphs.graphs) == 2
    # weights changed in place are seen by the replay; moved weights make a new graph
    with torch.no_grad():
        policy.head.action_out.bias.add_(1.0)
    policy.reset()
    eager = chunk(False, 5)
    policy.reset()
    torch.testing.assert_close(torch.as_tensor(chunk(True, 5)), torch.as_tensor(eager), atol=1e-5, rtol=1e-4)
    policy.head.action_out.bias.data = policy.head.action_out.bias.data.clone()
    policy.reset()
    chunk(True, 5)
    assert len(policy._graphs.graphs) == 3
