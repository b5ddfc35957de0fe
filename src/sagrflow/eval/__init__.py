"""Closed-loop evaluation and serving.

- `harness`: rollouts with action chunking and RRR replanning, episodes in lockstep
  (one batched policy call), optional worker processes; `suites`: the sim and LIBERO.
- `policies`: the tiny policy protocol and its adapters (SA-GR checkpoint, expert, random, zero).
- `report`: success per task and overall with Wilson intervals, as JSON and Markdown.
- `libero`: the LIBERO simulator behind the same environment surface (optional extra).
- `server` / `client`: the openpi / starVLA websocket + msgpack-numpy policy protocol.

Nothing here is imported by the model or the trainer; torch is imported only to run a checkpoint.
"""
