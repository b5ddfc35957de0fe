"""Datasets written once per session with the writer, in every format the reader supports."""

from __future__ import annotations

import pytest

from sagrflow.data.embodiments import get_embodiment
from sagrflow.data.synthetic import write_synthetic

# lengths chosen around k = 7: 8 (t+k = T-1 at t=0), 7 (= k: no valid step), 3 (< k), 20 (long)
LENGTHS = [20, 8, 7, 3, 12]
FORMATS = [
    ("v2.1", "h264"),
    ("v2.1", "av1"),
    ("v3.0", "h264"),
    ("v3.0", "av1"),
    ("v2.1", None),  # images inside the parquet (openpi's LIBERO conversion layout)
    ("v3.0", None),
]


def format_id(fmt: tuple[str, str | None]) -> str:
    return f"{fmt[0]}-{fmt[1] or 'parquet_images'}"


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory):
    """`dataset_root(version, codec)` -> path of a synthetic dataset, written on first use."""
    made = {}

    def make(version: str = "v2.1", codec: str | None = "h264"):
        key = (version, codec)
        if key not in made:
            root = tmp_path_factory.mktemp(f"ds-{format_id(key)}")
            made[key] = write_synthetic(root / "data", LENGTHS, version=version, video_codec=codec, episodes_per_file=2)
        return made[key]

    return make


@pytest.fixture
def embodiment():
    return get_embodiment("libero_franka", image_size=(64, 64))
