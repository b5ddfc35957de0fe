from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from sagrflow.core.config import ConfigError, from_dict, to_dict


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-4
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    steps: int = 10
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    inner: Inner = field(default_factory=Inner)
    mix: str | list[dict] = "x"
    size: tuple[int, ...] | None = None


def test_nested_build_and_round_trip():
    cfg = from_dict(Outer, {"steps": 3, "inner": {"lr": "3e-4", "names": ["a"]}, "mix": [{"path": "p"}], "size": [2, 2]})
    assert cfg == Outer(steps=3, inner=Inner(lr=3e-4, names=("a",)), mix=[{"path": "p"}], size=(2, 2))
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"step": 1}, "step: unknown key (did you mean 'steps'?)"),
        ({"inner": {"lrr": 1}}, "inner.lrr: unknown key (did you mean 'lr'?)"),
        ({"steps": "ten"}, "steps: expected an integer, got 'ten'"),
        ({"steps": 1.5}, "steps: expected an integer"),
        ({"mode": "c"}, "mode: 'c' is not one of ['a', 'b']"),
        ({"inner": {"lr": "fast"}}, "inner.lr: expected a number"),
        ({"zzz": 1}, "zzz: unknown key (valid keys:"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(Outer, data)
    assert message in str(err.value)
