"""A Python client for `sagrflow serve` (and any starVLA-style policy server), and a harness
policy that acts through it.

    with PolicyClient("127.0.0.1", 10093) as client:
        client.metadata                                  # sent by the server on connect
        data = client.infer([{"image": [agent, wrist], "lang": "put the red block on the plate",
                              "state": state}])
        data["actions"]                                  # (B, H, A), normalization undone
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sagrflow.eval import msgpack_numpy
from sagrflow.eval.policies import CAMERAS, Chunk, Episode, model_inputs


class RemoteError(RuntimeError):
    """The server answered with an error reply."""

    def __init__(self, reply: dict | str):
        self.reply = reply
        message = reply if isinstance(reply, str) else reply.get("error", {}).get("message", str(reply))
        super().__init__(f"policy server error: {message}")


class PolicyClient:
    def __init__(self, host: str = "127.0.0.1", port: int = 10093, timeout: float = 60.0,
                 connect_timeout: float = 30.0):
        from contextlib import ExitStack

        from websockets.sync.client import connect

        self.uri = host if host.startswith("ws") else f"ws://{host}:{port}"
        self.timeout = timeout
        self._ids = itertools.count()
        self._packer = msgpack_numpy.Packer()
        self._stack = ExitStack()  # websockets >= 17 wants connect() entered as a context manager
        deadline = time.monotonic() + connect_timeout
        while True:  # the server may still be loading its checkpoint
            try:
                self._ws = self._stack.enter_context(
                    connect(self.uri, compression=None, max_size=None, open_timeout=connect_timeout))
                break
            except (ConnectionRefusedError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.metadata: dict = self._recv()

    # ------------------------------------------------------------------ requests
    def request(self, msg: dict) -> dict:
        """Send one request and return the raw reply (raises RemoteError on a text error frame)."""
        self._ws.send(self._packer.pack(msg))
        return self._recv()

    def ping(self) -> dict:
        return self._checked(self.request({"type": "ping", "request_id": self._rid()}))

    def reset(self, episode_id: Any = None) -> dict:
        """Forget the world-model memory of this connection (or of one of its episodes)."""
        payload = {} if episode_id is None else {"episode_id": episode_id}
        return self._checked(self.request({"type": "reset", "request_id": self._rid(), "payload": payload}))

    def infer(self, examples: Sequence[dict], num_steps: int | None = None) -> dict:
        """examples: [{"image": [HWC uint8...], "lang": str, "state"?: array, "episode_id"?: ...}]
        -> data {"actions", "normalized_actions" (B, H, A), "rrr" (B,), "replan" (B,), "residual" (B,)}."""
        payload: dict = {"examples": list(examples)}
        if num_steps is not None:
            payload["num_steps"] = num_steps
        rid = self._rid()
        reply = self._checked(self.request({"type": "infer", "request_id": rid, "payload": payload}))
        if reply.get("request_id") != rid:
            raise RuntimeError(f"reply to request {reply.get('request_id')!r}, expected {rid!r}")
        return reply["data"]

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _recv(self) -> dict:
        frame = self._ws.recv(timeout=self.timeout)
        if isinstance(frame, str):
            raise RemoteError(frame)
        return msgpack_numpy.unpackb(frame)

    def _rid(self) -> str:
        return f"req-{next(self._ids)}"

    @staticmethod
    def _checked(reply: dict) -> dict:
        if not reply.get("ok", False):
            raise RemoteError(reply)
        return reply


class RemotePolicy:
    """The harness's policy protocol over a `PolicyClient`: evaluate a served checkpoint."""

    name = "remote"

    def __init__(self, client: PolicyClient, cameras: tuple[str, ...] = CAMERAS, num_steps: int | None = None):
        self.client, self.cameras, self.num_steps = client, cameras, num_steps
        self._episodes: dict[int, Episode] = {}

    def reset(self, slot: int, episode: Episode) -> None:
        self._episodes[slot] = episode
        self.client.reset(episode.key)

    def act(self, observations: Sequence[dict], slots: Sequence[int],
            checks: Sequence[bool] | None = None, elapsed: Sequence[int] | None = None) -> list[Chunk]:
        examples = model_inputs(observations, [self._episodes[s] for s in slots], self.cameras, checks, elapsed)
        data = self.client.infer(examples, self.num_steps)
        residual = data.get("residual", [False] * len(examples))  # absent from servers before it
        return [Chunk(np.asarray(data["actions"][i], np.float32), bool(data["replan"][i]), float(data["rrr"][i]),
                      bool(residual[i])) for i in range(len(examples))]
