"""Wilson intervals, the JSON / Markdown report, and openpi-compatible msgpack-numpy."""

from __future__ import annotations

import json

import msgpack
import numpy as np
import pytest

from sagrflow.eval import msgpack_numpy
from sagrflow.eval.harness import EpisodeResult
from sagrflow.eval.report import summarize, to_markdown, wilson_interval, write_report


@pytest.mark.parametrize("k, n, lo, hi", [
    (0, 10, 0.0, 0.2775),  # upper bound z^2 / (n + z^2)
    (5, 10, 0.2366, 0.7634),
    (10, 10, 0.7225, 1.0),
    (81, 100, 0.7222, 0.8749),
])
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def _results(tmp_path):
    video = tmp_path / "run" / "videos" / "a_seed0.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(b"")
    return [EpisodeResult("a", 0, True, 10, 2, 0, str(video)), EpisodeResult("a", 1, False, 20, 3, 1),
            EpisodeResult("b", 0, True, 5, 1, 0)]


def test_summary_json_and_markdown(tmp_path):
    summary = summarize(_results(tmp_path), {"policy": "sagr", "suite": "sim_all"})
    assert summary["overall"]["successes"] == 2 and summary["overall"]["episodes"] == 3
    assert summary["per_task"]["a"]["success_rate"] == 0.5 and summary["per_task"]["b"]["mean_steps"] == 5
    assert summary["per_task"]["a"]["replans"] == 1
    json_path, md_path = write_report(summary, tmp_path / "run")
    loaded = json.loads(json_path.read_text())
    assert loaded["videos"] == ["videos/a_seed0.mp4"] and loaded["episodes"][0]["video"] == "videos/a_seed0.mp4"
    assert loaded["overall"]["ci95"] == pytest.approx(list(wilson_interval(2, 3)))
    md = md_path.read_text()
    assert md == to_markdown(loaded)
    assert "**Overall: 66.7%** (2/3" in md and "| a | 50.0% | 2 |" in md and "(videos/a_seed0.mp4)" in md


@pytest.mark.parametrize("value", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.zeros((2, 5, 5, 3), np.uint8),
    np.array([True, False]),
    np.array([], dtype=np.int64),
    np.float32(2.5),  # np.float64 is a Python float: msgpack writes it natively, as in openpi
    np.int32(-3),
])
def test_numpy_round_trip(value):
    out = msgpack_numpy.unpackb(msgpack_numpy.packb({"x": value, "nested": [value, "s", 1]}))
    for got in (out["x"], out["nested"][0]):
        assert type(got) is type(value) and got.dtype == value.dtype
        np.testing.assert_array_equal(got, value)


def test_wire_format_is_openpis():
    """The exact map openpi_client.msgpack_numpy writes, so either side of a connection can be theirs."""
    arr = np.arange(6, dtype="<i2").reshape(2, 3)
    plain = msgpack.unpackb(msgpack_numpy.packb(arr))
    assert plain == {b"__ndarray__": True, b"data": arr.tobytes(), b"dtype": "<i2", b"shape": [2, 3]}
    scalar = msgpack.unpackb(msgpack_numpy.packb(np.float32(1.5)))
    assert scalar == {b"__npgeneric__": True, b"data": 1.5, b"dtype": "<f4"}
    # what an openpi peer sends decodes here, str keys included
    theirs = msgpack.packb({"__ndarray__": True, "data": arr.tobytes(), "dtype": "<i2", "shape": (2, 3)})
    np.testing.assert_array_equal(msgpack_numpy.unpackb(theirs), arr)


def test_object_arrays_are_refused():
    with pytest.raises(ValueError, match="unsupported dtype"):
        msgpack_numpy.packb(np.array([object()], dtype=object))
