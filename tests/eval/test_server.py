"""The policy server: round trip, malformed requests, several clients, openpi and starVLA clients."""

from __future__ import annotations

import threading
import time

import msgpack
import numpy as np
import pytest
import torch

from sagrflow.eval import msgpack_numpy
from sagrflow.eval.client import PolicyClient, RemoteError, RemotePolicy
from sagrflow.eval.server import PolicyServer, policy_metadata
from tests.eval.conftest import A, H, S, action_normalizer


def example(seed: int = 0, lang: str = "put the red block on the plate", **extra) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)], "lang": lang,
            "state": rng.normal(size=S), **extra}


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    from sagrflow.model.policy import SAGRPolicy

    return SAGRPolicy.load(tiny_checkpoint).eval()


@pytest.fixture
def server(policy, tiny_checkpoint):
    handle = PolicyServer(policy, policy_metadata(policy, str(tiny_checkpoint))).start_background("127.0.0.1", 0)
    yield handle
    handle.stop()
    assert not handle.thread.is_alive()


def raw_connection(port: int):
    from websockets.sync.client import connect

    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=10).__enter__()
    metadata = msgpack_numpy.unpackb(ws.recv(timeout=10))
    return ws, metadata


def ask(ws, msg) -> dict | str:
    ws.send(msg if isinstance(msg, bytes | str) else msgpack_numpy.packb(msg))
    reply = ws.recv(timeout=30)
    return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)


def test_round_trip_metadata_ping_infer(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        meta = client.metadata
        assert (meta["server"], meta["action_horizon"], meta["action_dim"], meta["state_dim"]) == ("sagrflow", H, A, S)
        assert meta["num_cameras"] == 2 and meta["temporal_delta_k"] == 4  # the fixture records k as a trainer does
        assert client.ping()["type"] == "ping"
        latencies = []
        for i in range(5):
            start = time.perf_counter()
            data = client.infer([example(i), example(i + 10)])
            latencies.append(time.perf_counter() - start)
        print(f"\nround trip, 2 examples: median {1000 * sorted(latencies)[2]:.1f} ms")
        assert data["actions"].shape == data["normalized_actions"].shape == (2, H, A)
        assert data["rrr"].shape == data["replan"].shape == (2,)
        np.testing.assert_allclose(data["actions"], action_normalizer().unnormalize(data["normalized_actions"]),
                                   rtol=1e-5, atol=1e-5)
        assert not np.allclose(data["actions"], data["normalized_actions"])


def test_seeded_server_chunks_depend_on_the_episode_alone(policy, tiny_checkpoint):
    """With a seed, an episode's chunk is the same alone in a request and second in a batch, on two
    fresh servers (the first connection of each); another seed gives another chunk."""
    chunks = []
    for batch in ([example(1, episode_id=5)], [example(2, episode_id=9), example(1, episode_id=5)]):
        handle = PolicyServer(policy, seed=0).start_background("127.0.0.1", 0)
        try:
            with PolicyClient("127.0.0.1", handle.port) as client:
                chunks.append(client.infer(batch)["normalized_actions"][-1])
        finally:
            handle.stop()
    np.testing.assert_allclose(chunks[1], chunks[0], atol=1e-5, rtol=0)  # batched matmuls: last bits only
    handle = PolicyServer(policy, seed=1).start_background("127.0.0.1", 0)
    try:
        with PolicyClient("127.0.0.1", handle.port) as client:
            assert np.abs(client.infer([example(1, episode_id=5)])["normalized_actions"][0] - chunks[0]).max() > 1e-3
    finally:
        handle.stop()


def test_reply_envelope_on_the_wire(server):
    ws, _ = raw_connection(server.port)
    try:
        reply = ask(ws, {"type": "infer", "request_id": "abc", "payload": {"examples": [example()]}})
        assert {k: reply[k] for k in ("status", "ok", "type", "request_id")} == {
            "status": "ok", "ok": True, "type": "inference_result", "request_id": "abc"}
        # starVLA's client: a flat dict, no type, its sampling options alongside
        reply = ask(ws, {"examples": [example()], "do_sample": False, "use_ddim": True, "num_ddim_steps": 2})
        assert reply["ok"] and reply["data"]["normalized_actions"].shape == (1, H, A)
        assert ask(ws, {"reset": True, "instruction": "x"})["type"] == "reset"  # starVLA's legacy reset
    finally:
        ws.close()


@pytest.mark.parametrize("msg, needle", [
    (b"\xc1\xff not msgpack", "not valid msgpack"),
    ("a text frame", "binary"),
    ([1, 2, 3], "must be a map"),
    ({"type": "infer", "payload": {}}, "examples"),
    ({"type": "infer", "payload": "nope"}, "must be a map"),
    ({"type": "infer", "payload": {"examples": [{"image": [np.zeros((8, 8, 3), np.float32)], "lang": "x"}]}},
     "uint8"),
    ({"type": "infer", "payload": {"examples": [{"image": [np.zeros((8, 8), np.uint8)], "lang": "x"}]}}, "(h, w, 3)"),
    ({"type": "infer", "payload": {"examples": [{"image": [np.zeros((8, 8, 3), np.uint8)]}]}}, "lang"),
    ({"type": "infer", "payload": {"examples": [example(state=None)]}}, "state"),
    ({"type": "infer", "payload": {"examples": [example(state=np.zeros(3))]}}, "dims"),
    ({"type": "infer", "payload": {"examples": [example()], "num_steps": 0}}, "num_steps"),
    ({"type": "infer", "payload": {"examples": [example(check="yes")]}}, "['check'] must be a bool"),
    ({"type": "infer", "payload": {"examples": [example(elapsed=-2)]}}, "'elapsed' must be an int >= 0"),
    ({"type": "dance", "request_id": 7}, "unsupported request type"),
])
def test_malformed_requests_get_error_replies_and_the_server_lives_on(server, msg, needle):
    ws, _ = raw_connection(server.port)
    try:
        if isinstance(msg, list):
            msg = msgpack.packb(msg)
        reply = ask(ws, msg)
        assert reply["status"] == "error" and reply["ok"] is False
        assert needle in reply["error"]["message"]
        assert ask(ws, {"type": "ping", "request_id": 1}) == {"status": "ok", "ok": True, "type": "ping",
                                                              "request_id": 1}
    finally:
        ws.close()


def test_client_raises_remote_error(server):
    with PolicyClient("127.0.0.1", server.port) as client:
        with pytest.raises(RemoteError, match="examples"):
            client.infer([])
        assert client.ping()["ok"]


def test_two_clients_at_once_keep_their_own_memory(server, policy):
    results: dict[str, list] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def run(name: str, seed: int):
        try:
            with PolicyClient("127.0.0.1", server.port) as client:
                for i in range(4):
                    results[name].append(client.infer([example(seed + i, episode_id="ep")]))
        except BaseException as exc:  # surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(n, s)) for n, s in (("a", 0), ("b", 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and all(not t.is_alive() for t in threads)
    for name in ("a", "b"):
        assert len(results[name]) == 4
        # the same episode_id on two connections: each starts with no memory (rrr 0), then has its own
        assert results[name][0]["rrr"][0] == 0.0 and all(r["rrr"][0] > 0 for r in results[name][1:])
    deadline = time.monotonic() + 10  # the server notices the closed connections asynchronously
    while policy._memory and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not policy._memory  # both connections closed: their memory is forgotten


def test_episode_ids_and_checks_reach_the_policy_memory(server, policy, monkeypatch):
    monkeypatch.setattr(policy.config.action_model, "rrr_threshold", 1e9)  # no check replans
    with PolicyClient("127.0.0.1", server.port) as client:
        client.infer([example(0, episode_id=np.int64(3))])  # a NumPy id and a Python int are one episode
        assert len(policy._memory) == 1
        kept = next(iter(policy._memory.values())).pred_next.clone()
        calm = client.infer([example(1, episode_id=3, check=True)])
        assert not calm["replan"][0]  # a calm check leaves the running chunk's prediction in place
        assert torch.equal(next(iter(policy._memory.values())).pred_next, kept)
        # elapsed says when a call comes: only k steps after the chunk does it see a residual
        k = policy.config.action_model.temporal_delta_k
        early = client.infer([example(2, episode_id=3, check=True, elapsed=k - 1)])
        at_k = client.infer([example(2, episode_id=3, check=True, elapsed=k)])
        assert (early["residual"][0], early["rrr"][0], at_k["residual"][0]) == (False, 0.0, True) and at_k["rrr"][0] > 0
        client.infer([example(2, episode_id=3)])  # an issued chunk replaces it
        assert not torch.equal(next(iter(policy._memory.values())).pred_next, kept)
        client.reset(3)
        deadline = time.monotonic() + 10
        while policy._memory and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not policy._memory


class SlowPolicy:
    """Takes `delay` seconds per inference: shows that one client's inference does not block another."""

    def __init__(self, delay: float):
        self.delay = delay

    def predict_action(self, observations, num_steps=None):
        time.sleep(self.delay)
        b = len(observations)
        return {"actions": np.ones((b, 2, 3)), "actions_normalized": np.zeros((b, 2, 3)), "rrr": np.zeros(b),
                "replan": np.zeros(b, bool), "residual": np.zeros(b, bool)}

    def reset(self, key=None):
        pass


def test_client_steps_give_requests_without_elapsed_their_elapsed():
    """openpi and starVLA clients send no "elapsed": `--client-steps` says how many actions they execute."""
    class RecordingPolicy(SlowPolicy):
        def predict_action(self, observations, num_steps=None):
            seen.extend(observations)
            return super().predict_action(observations, num_steps)

    seen: list[dict] = []
    policy = RecordingPolicy(0.0)
    handle = PolicyServer(policy, {}, client_steps=5).start_background("127.0.0.1", 0)
    try:
        with PolicyClient("127.0.0.1", handle.port) as client:
            client.infer([example(), example(elapsed=2)])
        ws, _ = raw_connection(handle.port)
        ex = example()
        ask(ws, {"observation/image": ex["image"][0], "observation/wrist_image": ex["image"][1],
                 "observation/state": ex["state"], "prompt": ex["lang"]})
        ws.close()
    finally:
        handle.stop()
    assert [o["elapsed"] for o in seen] == [5, 2, 5]
    with pytest.raises(ValueError, match="client_steps must be >= 1"):
        PolicyServer(policy, {}, client_steps=0)


def test_a_slow_inference_does_not_block_other_clients():
    handle = PolicyServer(SlowPolicy(1.0), {"slow": True}).start_background("127.0.0.1", 0)
    try:
        a, b = PolicyClient("127.0.0.1", handle.port), PolicyClient("127.0.0.1", handle.port)
        done = {}
        worker = threading.Thread(target=lambda: done.setdefault("a", a.infer([example()])))
        start = time.perf_counter()
        worker.start()
        time.sleep(0.2)  # a's inference is under way
        assert b.ping()["ok"]
        ping_at = time.perf_counter() - start
        worker.join(10)
        assert ping_at < 0.9 and done["a"]["actions"].shape == (1, 2, 3)
        a.close()
        b.close()
    finally:
        handle.stop()


def test_openpi_client_messages(server):
    ws, meta = raw_connection(server.port)
    try:
        assert meta["action_horizon"] == H
        ex = example()
        obs = {"observation/image": ex["image"][0], "observation/wrist_image": ex["image"][1],
               "observation/state": ex["state"], "prompt": ex["lang"]}
        reply = ask(ws, obs)
        assert reply["actions"].shape == (H, A) and "infer_ms" in reply["server_timing"]
        assert ask(ws, {"__ctrl__": "episode_start", "__task__": "t"}) == {"__ack__": "episode_start"}
        error = ask(ws, {"prompt": "no cameras"})
        assert isinstance(error, str) and "observation/image" in error  # openpi clients expect a text frame
        assert ask(ws, {"type": "ping"})["ok"]
    finally:
        ws.close()


def test_harness_evaluates_through_the_server(server):
    from sagrflow.eval.harness import RolloutConfig, evaluate
    from sagrflow.eval.suites import SimSuite

    with PolicyClient("127.0.0.1", server.port) as client:
        cfg = RolloutConfig(max_steps=8, num_envs=2, execute_steps=4)  # calls 4 = k steps apart
        results, _ = evaluate(None, SimSuite("goal", image_size=32), 1, cfg, policy=RemotePolicy(client, num_steps=2))
    assert [r.steps for r in results] == [8] * 4 and all(r.queries == 2 for r in results)
    assert all(r.residuals == 1 for r in results)  # "elapsed" crossed the wire: each second call saw its residual


def test_health_check(server):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=10) as response:
        assert response.status == 200
