"""`sagrflow eval` and `sagrflow serve` from the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from sagrflow.cli import main


def test_eval_baseline_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--policy", "expert", "--suite", "goal", "--episodes", "2", "--videos", "1",
                 "--image-size", "32", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["episodes"] == 8 and report["overall"]["success_rate"] == 1.0
    assert report["meta"]["suite"] == "sim_goal" and list(report["per_task"]) == [
        "goal/red_on_plate", "goal/blue_in_bowl", "goal/stack_green_on_red", "goal/lift_blue"]
    assert (out / report["videos"][0]).stat().st_size > 0
    assert "| goal/lift_blue | 100.0% | 2 |" in (out / "report.md").read_text()
    assert "expert on sim_goal: 100.0% (8/8)" in capsys.readouterr().out


def test_eval_checkpoint(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--suite", "object", "--episodes", "1",
                 "--max-steps", "8", "--num-steps", "2", "--execute-steps", "4", "--videos", "0",
                 "--image-size", "32", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [e["queries"] for e in report["episodes"]] == [2, 2, 2, 2]
    assert report["meta"]["policy"] == "sagr" and report["videos"] == []
    # the checkpoint's world model predicts 4 steps on: each episode's second call sees its residual
    assert report["overall"]["residuals"] == 4


def test_eval_warns_when_no_call_comes_k_steps_after_its_chunk(tiny_checkpoint, tmp_path, capsys):
    from sagrflow.eval.harness import RolloutConfig, call_steps, residual_note

    assert call_steps(RolloutConfig(), 8) == [8]
    assert call_steps(RolloutConfig(execute_steps=7, check_every=2), 8) == [2, 4, 6, 7]
    assert residual_note(RolloutConfig(execute_steps=6, check_every=2), 8, 4) is None  # the check at 4
    assert residual_note(RolloutConfig(), 8, None) is None
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--suite", "object", "--episodes", "1",
                 "--max-steps", "7", "--num-steps", "2", "--execute-steps", "6", "--check-every", "3",
                 "--videos", "0", "--image-size", "32", "--out", str(tmp_path / "run")]) == 0
    assert "warning: the policy's world model predicts 4 steps after a chunk, but this rollout calls it 3, 6 steps" \
        in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "report.json").read_text())["overall"]["residuals"] == 0
    # the fix it names can be taken: checks help only when the executed steps pass k
    assert "--execute-steps 7, or --execute-steps above 7 with --check-every" in residual_note(RolloutConfig(), 8, 7)
    assert "check-every" not in residual_note(RolloutConfig(execute_steps=4), 8, 8)
    # a served policy: k and the horizon come from the server's metadata
    from types import SimpleNamespace

    from sagrflow.eval.cli import _warn_if_no_residual

    server = SimpleNamespace(metadata={"action_horizon": 8, "temporal_delta_k": 7})
    _warn_if_no_residual(RolloutConfig(), None, server)
    assert "predicts 7 steps after a chunk, but this rollout calls it 8 steps" in capsys.readouterr().err
    assert "no call can come later" in residual_note(RolloutConfig(), 8, 9)


def test_eval_user_mistakes_are_one_line_errors(capsys):
    assert main(["eval", "--suite", "goal"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["eval", "--policy", "random", "--suite", "kitchen"]) == 2
    assert "valid suites" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command(tiny_checkpoint):
    from sagrflow.eval.client import PolicyClient

    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sagrflow.cli", "serve", "--checkpoint", str(tiny_checkpoint),
                             "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with PolicyClient("127.0.0.1", port, connect_timeout=60) as client:
            assert client.metadata["checkpoint"] == str(tiny_checkpoint)
            assert client.ping()["ok"]
    finally:
        proc.terminate()
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
