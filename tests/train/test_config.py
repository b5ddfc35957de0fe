from __future__ import annotations

from pathlib import Path

import pytest

from sagrflow.cli import main
from sagrflow.core.config import ConfigError
from sagrflow.data.config import load_data_section
from sagrflow.train.config import load_config, parse_overrides, save_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_embedded_default_is_the_shipped_tiny_config():
    assert load_config(CONFIGS / "tiny_cpu.yaml") == load_config(None)
    cfg = load_config(None)
    assert cfg.data.data_mix == "sim_all" and cfg.data.include_state
    assert cfg.framework.action_model.state_dim == 8


def test_libero_config_has_the_reference_choices():
    cfg = load_config(CONFIGS / "libero_qwen25vl_3b.yaml")
    assert cfg.data.data_mix == "libero_all" and cfg.data.observation_indices == (0, 7)
    assert cfg.framework.action_model.action_horizon == 8  # H = 8, k = 7
    assert "Qwen2.5-VL-3B" in cfg.framework.backbone.path
    assert cfg.trainer.learning_rate["backbone"] < cfg.trainer.learning_rate["base"]
    # check-temporal reads the same file
    assert load_data_section(CONFIGS / "libero_qwen25vl_3b.yaml") == cfg.data


@pytest.mark.parametrize(("override", "message"), [
    ({"trainer.max_train_step": 3}, "trainer.max_train_step: unknown key (did you mean 'max_train_steps'?)"),
    ({"framework.action_model.loss_w_dyns": 0.3}, "did you mean 'loss_w_dyn'?"),
    ({"datasets.vla_data.per_device_batchsize": 2}, "did you mean 'per_device_batch_size'?"),
    ({"trainer.max_train_steps": "ten"}, "trainer.max_train_steps: expected an integer"),
    ({"trainer.lr_scheduler": "linear"}, "'linear' is not one of"),
    ({"framework.name": "starVLA"}, "framework.name='starVLA'"),
    # NaN passes every range check, so it is no number at all; inf is no rate, weight or clip norm
    ({"trainer.max_grad_norm": "nan"}, "trainer.max_grad_norm: expected a number, got 'nan'"),
    ({"framework.action_model.loss_w_dyn": float("nan")}, "loss_w_dyn: expected a number, got nan"),
    ({"trainer.learning_rate.base": "inf"}, "rates must be finite and >= 0"),
    ({"trainer.weight_decay": float("inf")}, "trainer.weight_decay must be finite and >= 0"),
    ({"trainer.adam_eps": 0}, "trainer.adam_eps must be finite and > 0"),
    ({"framework.action_model.loss_w_geo": "inf"}, "loss_w_geo=inf must be finite and >= 0"),
    ({"framework.action_model.compile_world": "graph"}, "compile_world='graph': use one of (False, True, 'graphs')"),
    ({"framework.action_model.compile_world": 1}, "compile_world: expected bool or str, got 1"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)


def test_compile_world_takes_true_false_or_graphs_from_the_command_line():
    for token, value in (("graphs", "graphs"), ("true", True), ("false", False)):
        cfg = load_config(None, ["--framework.action_model.compile_world", token])
        assert cfg.framework.action_model.compile_world == value


def test_zero2_accelerate_config_parses():
    from accelerate.commands.config.config_args import load_config_from_file

    zero2 = load_config_from_file(str(CONFIGS / "accelerate" / "zero2.yaml"))
    assert str(zero2.distributed_type).endswith("DEEPSPEED") and zero2.deepspeed_config["zero_stage"] == 2
    assert "gradient_accumulation_steps" not in zero2.deepspeed_config  # the trainer's value rules


def test_yaml_file_typos_are_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trainer:\n  gradient_acumulation_steps: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'gradient_accumulation_steps'"):
        load_config(path)


def test_overrides_use_yaml_typing():
    parsed = parse_overrides(["--trainer.max_train_steps", "10", "--trainer.learning_rate.base=1e-4",
                              "--trainer.freeze_modules", "[backbone.vlm.visual]", "--trainer.fm_only", "true"])
    assert parsed == {"trainer.max_train_steps": 10, "trainer.learning_rate.base": 1e-4,
                      "trainer.freeze_modules": ["backbone.vlm.visual"], "trainer.fm_only": True}
    cfg = load_config(None, parsed)
    assert cfg.trainer.max_train_steps == 10 and cfg.trainer.learning_rate["base"] == 1e-4
    assert cfg.trainer.freeze_modules == ("backbone.vlm.visual",) and cfg.trainer.fm_only
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--trainer.max_train_steps"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, {"trainer.learning_rate.backbone": 5e-5, "framework.backbone.layers": [0, 1]})
    assert cfg.trainer.learning_rate["backbone"] == 5e-5
    assert load_config(save_config(cfg, tmp_path / "config.yaml")) == cfg


def test_check_temporal_reads_a_full_training_config(make_config, tmp_path, capsys):
    path = save_config(make_config(), tmp_path / "full.yaml")
    assert main(["check-temporal", "--config-yaml", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_cli_reports_a_typo_in_one_line(capsys):
    assert main(["train", "--trainer.save_intervall", "5"]) == 2
    err = capsys.readouterr().err
    assert "trainer.save_intervall: unknown key (did you mean 'save_interval'?)" in err
    assert main(["train", "--print-config", "--trainer.max_train_steps", "7"]) == 0
    assert "max_train_steps: 7" in capsys.readouterr().out


def test_an_infinite_rrr_threshold_means_never_replan():
    assert load_config(None, {"framework.action_model.rrr_threshold": "inf"}).framework.action_model.rrr_threshold == float("inf")


def test_a_number_over_per_module_rates_says_what_it_replaces():
    with pytest.warns(UserWarning, match=r"learning_rate 0.0002 replaces the whole mapping \{'base': 0.0003, 'backbone'"):
        cfg = load_config(None, {"trainer.learning_rate": 2e-4})
    assert cfg.trainer.learning_rate == {"base": 2e-4}  # the documented meaning stays
