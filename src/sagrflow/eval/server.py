"""A websocket policy server that existing openpi / starVLA LIBERO clients talk to unchanged.

Wire format: binary websocket frames, msgpack with openpi's NumPy encoding
(`sagrflow.eval.msgpack_numpy`). On connect the server sends a metadata dict. Then each
request gets exactly one reply:

- starVLA envelope: `{"type": "ping" | "infer" | "reset", "request_id": ..., "payload": {...}}`,
  or the same keys flat (no `type`: infer). An infer payload holds `examples`: a list of
  `{"image": [HWC uint8, camera order], "lang": str, "state"?: array, "episode_id"?: ...,
  "check"?: bool (a mid-chunk check: the drift memory moves only if the answer replans),
  "elapsed"?: int (steps executed since the episode's chunk was issued: the drift and RRR act only
  at the metadata's `temporal_delta_k`)}`
  and optionally `num_steps` (alias `num_ddim_steps`). The reply is
  `{"status": "ok", "ok": True, "type": "inference_result", "request_id", "data": {"actions",
  "normalized_actions" (both (B, H, A)), "rrr", "replan", "residual"}}`, or `status "error"`, `ok False`
  and `error: {"message": ...}`. starVLA's legacy reset (`{"reset": True, ...}`) is a reset.
- openpi observation: a flat dict with `observation/image`, `observation/wrist_image`,
  `observation/state` and `prompt` -> `{"actions": (H, A), "server_timing": {...}}`; its
  `__ctrl__` episode messages get `{"__ack__": ...}`; its errors are a text frame, as openpi
  clients expect.

Every failure while handling one request becomes an error reply; the connection and the
server stay up. Inference runs on one worker thread off the event loop, so other clients
are answered (pings, resets, malformed requests) while a chunk is being computed, and the
policy's world-model memory is namespaced per connection so clients never share residuals.
"""

from __future__ import annotations

import asyncio
import functools
import http
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sagrflow.eval import msgpack_numpy

logger = logging.getLogger(__name__)
OPENPI_CAMERAS = ("observation/image", "observation/wrist_image")


class RequestError(ValueError):
    """A request the server cannot serve; its message goes back to the client."""


@dataclass
class _Connection:
    id: int
    keys: set = field(default_factory=set)  # policy memory keys this connection created


class PolicyServer:
    """`PolicyServer(policy, metadata).run(host, port)`; `policy` has `predict_action` and `reset`
    like `SAGRPolicy`. `start_background()` runs it on a thread (tests, notebooks)."""

    def __init__(self, policy: Any, metadata: dict | None = None, max_examples: int = 64, seed: int | None = None,
                 client_steps: int | None = None):
        """`seed`: the policy draws each episode's noise from the episode's own generator, seeded by
        (seed, connection number, episode id) (`predict_action`'s `seed`), so a chunk does not depend on
        which other examples share its request; None: the policy's global generator.
        `client_steps`: the actions clients execute between requests, the "elapsed" of every example
        that sends none (openpi's and starVLA's clients do not); None: such examples carry none."""
        if client_steps is not None and client_steps < 1:
            raise ValueError(f"client_steps must be >= 1 or None, got {client_steps}")
        self.policy = policy
        self.seed = seed
        self.client_steps = client_steps
        self.metadata = dict(metadata or {})
        self.max_examples = max_examples
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sagrflow-infer")
        self._ids = itertools.count()

    # ------------------------------------------------------------------ running
    async def serve(self, host: str, port: int, ready: asyncio.Future | None = None,
                    stop: asyncio.Event | None = None) -> None:
        from websockets.asyncio.server import serve

        async with serve(self._handler, host, port, compression=None, max_size=None,
                         process_request=_health_check) as server:
            bound = server.sockets[0].getsockname()[1] if server.sockets else port
            logger.info("sagrflow policy server on ws://%s:%d", host, bound)
            if ready is not None:
                ready.set_result(bound)
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()

    def run(self, host: str = "0.0.0.0", port: int = 10093) -> None:
        asyncio.run(self.serve(host, port))

    def start_background(self, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> ServerHandle:
        """Serve on a daemon thread; `port=0` lets the OS pick a free one (see `handle.port`)."""
        loop = asyncio.new_event_loop()
        ready: asyncio.Future = loop.create_future()
        stop = asyncio.Event()
        thread = threading.Thread(target=loop.run_until_complete, args=(self.serve(host, port, ready, stop),),
                                  name="sagrflow-server", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not ready.done():
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the policy server did not start on {host}:{port}")
            time.sleep(0.01)
        return ServerHandle(host, ready.result(), loop, stop, thread, self)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ one connection
    async def _handler(self, websocket) -> None:
        from websockets.exceptions import ConnectionClosed

        conn = _Connection(next(self._ids))
        packer = msgpack_numpy.Packer()
        try:
            await websocket.send(packer.pack(self.metadata))
            async for frame in websocket:
                reply = await self._reply(frame, conn)
                await websocket.send(reply if isinstance(reply, str) else packer.pack(reply))
        except ConnectionClosed:
            pass
        finally:
            await self._forget(conn, None)

    async def _reply(self, frame: bytes | str, conn: _Connection) -> dict | str:
        """Never raises: whatever goes wrong becomes an error reply."""
        msg: Any = None
        try:
            if isinstance(frame, str):
                raise RequestError("send binary msgpack frames, not text")
            try:
                msg = msgpack_numpy.unpackb(frame)
            except Exception as exc:
                raise RequestError(f"the frame is not valid msgpack: {exc}") from None
            if not isinstance(msg, dict):
                raise RequestError(f"a request must be a map, got {type(msg).__name__}")
            if "__ctrl__" in msg:
                if msg["__ctrl__"] == "episode_start":
                    await self._forget(conn, None)
                return {"__ack__": msg["__ctrl__"] if msg["__ctrl__"] in ("episode_start", "episode_end") else "ignored"}
            if _is_openpi(msg):
                return await self._openpi_infer(msg, conn)
            return await self._route(msg, conn)
        except Exception as exc:  # a bug in one request must not take the connection down
            if msg is not None and isinstance(msg, dict) and _is_openpi(msg):
                return f"sagrflow policy server: {exc}"
            if not isinstance(exc, RequestError):
                logger.exception("request failed")
            return _error(msg, exc)

    async def _route(self, msg: dict, conn: _Connection) -> dict:
        rid = msg.get("request_id", "default")
        mtype = msg.get("type", "reset" if msg.get("reset") is True else "infer")
        payload = msg.get("payload", msg)
        if mtype == "ping":
            return {"status": "ok", "ok": True, "type": "ping", "request_id": rid}
        if mtype == "reset":
            episode = payload.get("episode_id") if isinstance(payload, dict) else None
            await self._forget(conn, episode)
            return {"status": "ok", "ok": True, "type": "reset", "request_id": rid}
        if mtype not in ("infer", "predict_action"):
            return {"status": "error", "ok": False, "type": "unknown", "request_id": rid,
                    "error": {"message": f"unsupported request type {mtype!r}; use ping, infer or reset"}}
        if not isinstance(payload, dict):
            raise RequestError(f"an infer payload must be a map, got {type(payload).__name__}")
        examples = self._examples(payload.get("examples"), conn)
        num_steps = _num_steps(payload)
        start = time.monotonic()
        out = await self._predict(examples, num_steps)
        data = {"actions": out["actions"], "normalized_actions": out["actions_normalized"],
                "rrr": out["rrr"], "replan": out["replan"], "residual": out["residual"]}
        return {"status": "ok", "ok": True, "type": "inference_result", "request_id": rid, "data": data,
                "server_timing": {"infer_ms": 1000 * (time.monotonic() - start)}}

    async def _openpi_infer(self, msg: dict, conn: _Connection) -> dict:
        missing = [k for k in (*OPENPI_CAMERAS, "prompt") if k not in msg]
        if missing:
            raise RequestError(f"openpi observation lacks {missing}")
        example = {"image": [msg[k] for k in OPENPI_CAMERAS], "lang": msg["prompt"]}
        if "observation/state" in msg:
            example["state"] = msg["observation/state"]
        examples = self._examples([example], conn)
        start = time.monotonic()
        out = await self._predict(examples, None)
        return {"actions": out["actions"][0], "server_timing": {"infer_ms": 1000 * (time.monotonic() - start)}}

    # ------------------------------------------------------------------ helpers
    def _examples(self, examples: Any, conn: _Connection) -> list[dict]:
        if not isinstance(examples, list | tuple) or not examples:
            raise RequestError("an infer payload needs 'examples': a non-empty list of "
                               "{image: [HWC uint8 arrays], lang: str, state?: array}")
        if len(examples) > self.max_examples:
            raise RequestError(f"at most {self.max_examples} examples per request, got {len(examples)}")
        return [self._example(e, i, conn) for i, e in enumerate(examples)]

    def _example(self, ex: Any, i: int, conn: _Connection) -> dict:
        if not isinstance(ex, dict):
            raise RequestError(f"examples[{i}] must be a map, got {type(ex).__name__}")
        images = ex.get("image")
        if not isinstance(images, list | tuple) or not images:
            raise RequestError(f"examples[{i}]['image'] must be a non-empty list of HWC uint8 arrays")
        for c, img in enumerate(images):
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise RequestError(f"examples[{i}]['image'][{c}] must be an (h, w, 3) uint8 array, got {got}")
        lang = ex.get("lang")
        if not isinstance(lang, str):
            raise RequestError(f"examples[{i}]['lang'] must be a string, got {type(lang).__name__}")
        out = {"image": [np.array(img) for img in images], "lang": lang}  # copies: unpacked arrays are read-only
        if ex.get("state") is not None:
            state = np.asarray(ex["state"])
            if state.dtype.kind not in "fiu" or not np.all(np.isfinite(state)):
                raise RequestError(f"examples[{i}]['state'] must be a finite numeric array")
            out["state"] = state.astype(np.float64).reshape(-1)
        check = ex.get("check", False)
        if not isinstance(check, bool | np.bool_):
            raise RequestError(f"examples[{i}]['check'] must be a bool, got {type(check).__name__}")
        elapsed = ex.get("elapsed", self.client_steps)
        if elapsed is not None:  # checked by predict_action
            out["elapsed"] = elapsed
        key = (conn.id, _hashable(ex.get("episode_id", i)))
        conn.keys.add(key)
        out["episode_id"], out["check"] = key, bool(check)
        return out

    async def _predict(self, examples: list[dict], num_steps: int | None) -> dict:
        try:
            noise = {} if self.seed is None else {"seed": self.seed}
            return await self._in_worker(self.policy.predict_action, examples, num_steps=num_steps, **noise)
        except ValueError as exc:  # the policy's own input checks (state size, cameras)
            raise RequestError(str(exc)) from None

    async def _forget(self, conn: _Connection, episode: Any) -> None:
        keys = set(conn.keys) if episode is None else {(conn.id, _hashable(episode))}
        conn.keys -= keys
        if keys:
            await self._in_worker(self._reset_keys, keys)

    def _reset_keys(self, keys: set) -> None:
        for key in keys:
            self.policy.reset(key)

    async def _in_worker(self, fn, *args, **kwargs):
        """Run on the single inference thread: the policy (and its memory) is only ever touched
        there, one call at a time, while the event loop keeps answering other clients."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))


@dataclass
class ServerHandle:
    host: str
    port: int
    loop: asyncio.AbstractEventLoop
    stop_event: asyncio.Event
    thread: threading.Thread
    server: PolicyServer

    def stop(self, timeout: float = 10.0) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        self.server.close()


def _is_openpi(msg: dict) -> bool:
    return "examples" not in msg and "payload" not in msg and ("prompt" in msg or OPENPI_CAMERAS[0] in msg)


def _num_steps(payload: dict) -> int | None:
    value = payload.get("num_steps", payload.get("num_ddim_steps"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise RequestError(f"num_steps must be a positive integer, got {value!r}")
    return int(value)


def _hashable(x: Any) -> Any:
    """An episode id -> a memory key: a NumPy scalar is its Python value (np.int64(3) and 3 are one
    episode); a list (msgpack has no tuple) a tuple; anything else unhashable its repr."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, list):
        x = tuple(_hashable(v) for v in x)
    return x if isinstance(x, str | int | float | bytes | tuple) else repr(x)


def _error(msg: Any, exc: Exception) -> dict:
    rid = msg.get("request_id", "default") if isinstance(msg, dict) else "default"
    rtype = "inference_result" if isinstance(msg, dict) and msg.get("type", "infer") == "infer" else "error"
    return {"status": "error", "ok": False, "type": rtype, "request_id": rid,
            "error": {"message": str(exc), "kind": type(exc).__name__}}


def _health_check(connection, request):
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def policy_metadata(policy: Any, checkpoint: str = "") -> dict:
    """What a client learns on connect: shapes, cameras, normalization, the protocol."""
    am, bb = policy.config.action_model, policy.config.backbone
    return {
        "server": "sagrflow", "protocol": "websocket+msgpack-numpy (openpi / starVLA)",
        "checkpoint": str(checkpoint), "action_horizon": am.action_horizon, "action_dim": am.action_dim,
        "state_dim": am.state_dim, "image_size": list(bb.image_size), "cameras": ["image", "wrist_image"],
        "num_cameras": bb.cameras,  # images per example the policy takes (framework.backbone.cameras); None: unchecked
        "rrr_threshold": am.rrr_threshold, "num_inference_timesteps": am.num_inference_timesteps,
        "temporal_delta_k": am.temporal_delta_k,  # call k steps after a chunk for the drift to act; None: unknown
        "actions_normalized": policy.action_normalizer is not None,
    }
