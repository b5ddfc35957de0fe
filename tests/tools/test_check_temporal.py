from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sagrflow.cli import main
from sagrflow.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixroot")
    for i, name in enumerate(("sim_spatial", "sim_object", "sim_goal", "sim_long")):
        write_synthetic(root / name, [20, 12, 5], seed=i, video_codec=None)
    return root


def _config(tmp_path, data_root, **vla):
    path = tmp_path / "config.yaml"
    section = {"data_root_dir": str(data_root), "data_mix": "sim_all", "image_size": [32, 32], **vla}
    path.write_text(yaml.safe_dump({"datasets": {"vla_data": section}}))
    return path


def test_good_config_passes(tmp_path, data_root, capsys):
    assert main(["check-temporal", "--config-yaml", str(_config(tmp_path, data_root)), "--check-runtime"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    for name in ("sim_spatial", "sim_object", "sim_goal", "sim_long"):
        assert name in out
    # 37 frames, k = 7: (13 + 5 + 0) / 37 valid
    assert "(episode lengths imply 0.486)" in out
    assert "timestamps monotonic" in out


def test_observation_indices_without_k_fail_with_the_fix(tmp_path, data_root, capsys):
    config = _config(tmp_path, data_root, observation_indices=[0])
    assert main(["check-temporal", "--config-yaml", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL: k=7 is not in observation_indices=[0]" in out
    assert "set observation_indices to [0, 7]" in out


def test_a_config_that_sets_k_is_checked_with_it(tmp_path, data_root, capsys):
    config = _config(tmp_path, data_root, temporal_delta_k=3)
    assert main(["check-temporal", "--config-yaml", str(config), "--check-runtime"]) == 0
    out = capsys.readouterr().out
    assert "k=3, observation_indices=[0, 3]" in out
    assert "(episode lengths imply 0.757)" in out  # (17 + 9 + 2) / 37 frames have t + 3 inside the episode


def test_missing_dataset_fails(tmp_path, data_root, capsys):
    mix = [{"path": "sim_spatial"}, {"path": "libero_goal_no_noops_1.0.0_lerobot"}]
    config = _config(tmp_path, data_root, data_mix=mix)
    assert main(["check-temporal", "--config-yaml", str(config), "--check-runtime"]) == 1
    out = capsys.readouterr().out
    assert "libero_goal_no_noops_1.0.0_lerobot" in out and "has no meta/info.json" in out


def test_shim_with_reference_flags(tmp_path, data_root):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "check_temporal_supervision.py"), "--data-mix", "sim_goal",
         "--data-root-dir", str(data_root), "--check-runtime"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sim_goal" in proc.stdout and "PASS" in proc.stdout


def test_typo_in_config_is_named(tmp_path, data_root, capsys):
    config = _config(tmp_path, data_root, per_device_batchsize=4)
    assert main(["check-temporal", "--config-yaml", str(config)]) == 2
    err = capsys.readouterr().err
    assert "datasets.vla_data.per_device_batchsize: unknown key (did you mean 'per_device_batch_size'?)" in err
