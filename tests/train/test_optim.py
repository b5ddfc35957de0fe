from __future__ import annotations

import pytest
from torch import nn

from sagrflow.core.config import ConfigError
from sagrflow.train.config import TrainerConfig
from sagrflow.train.optim import build_optimizer, build_scheduler, freeze, param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.ModuleDict({"dit": nn.Linear(4, 4), "world": nn.Linear(4, 2)})


def test_groups_take_the_longest_matching_path():
    cfg = TrainerConfig(learning_rate={"base": 1e-3, "backbone": 1e-5, "head.world": 1e-4}, weight_decay=0.1)
    groups = {g["name"]: g for g in param_groups(Toy(), cfg)}
    assert groups["backbone"]["lr"] == 1e-5 and groups["head.world"]["lr"] == 1e-4 and groups["base"]["lr"] == 1e-3
    assert groups["base"]["param_names"] == ["head.dit.weight"]
    assert set(groups["backbone/no_decay"]["param_names"]) == {"backbone.0.bias", "backbone.1.weight", "backbone.1.bias"}
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0 and groups["backbone"]["weight_decay"] == 0.1


def test_freeze_by_path_and_typos_name_the_closest_module():
    model = Toy()
    freeze(model, ["backbone"])
    assert not any(p.requires_grad for p in model.backbone.parameters())
    cfg = TrainerConfig(learning_rate=1e-3)
    names = [n for g in param_groups(model, cfg) for n in g["param_names"]]
    assert names and not any(n.startswith("backbone") for n in names)
    with pytest.raises(ConfigError, match="trainer.freeze_modules: no module or parameter 'head.wrld'.*'head.world'"):
        freeze(Toy(), ["head.wrld"])
    with pytest.raises(ConfigError, match="trainer.learning_rate: no module or parameter 'backbones'"):
        param_groups(Toy(), TrainerConfig(learning_rate={"base": 1.0, "backbones": 0.1}))
    everything = Toy()
    freeze(everything, ["backbone", "head"])
    with pytest.raises(ConfigError, match="froze every parameter"):
        param_groups(everything, cfg)


def test_scheduler_scales_each_group():
    cfg = TrainerConfig(learning_rate={"base": 1e-3, "backbone": 1e-5}, warmup_steps=2, max_train_steps=10)
    opt = build_optimizer(Toy(), cfg)
    sched = build_scheduler(opt, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"backbone": pytest.approx(0.5e-5), "base": pytest.approx(0.5e-3)}
    opt.step()
    sched.step()
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {"backbone": pytest.approx(1e-5), "base": pytest.approx(1e-3)}
