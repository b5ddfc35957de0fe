"""Small caches of the data layer: a per-process LRU of open files, and where derived files live."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

V = TypeVar("V")


class ProcessLocalLRU(Generic[V]):
    """A bounded LRU of opened resources, private to the process that opened them.

    Keys are paths (a str is taken as a Path) or any hashable; `open_fn` may return None
    (remembered like any value: "this key has nothing to open").

    DataLoader workers fork the parent; an open file handle must never be shared
    across that fork, so the cache empties itself when it sees a new pid. Pickling
    (spawn-started workers) ships the settings, not the handles.
    """

    def __init__(self, open_fn: Callable[[Hashable], V], capacity: int, close_fn: Callable[[V], None] | None = None):
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.open_fn = open_fn
        self.close_fn = close_fn
        self.capacity = capacity
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._pid = os.getpid()
        self.opened = 0  # files opened by this process: lets tests and benchmarks see reuse

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V:
        if os.getpid() != self._pid:
            self._items = OrderedDict()  # inherited from the parent: drop, never close
            self._pid = os.getpid()
            self.opened = 0
        key = Path(key) if isinstance(key, str) else key
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        item = self.open_fn(key)
        self.opened += 1
        self._items[key] = item
        if len(self._items) > self.capacity:
            _, evicted = self._items.popitem(last=False)
            if self.close_fn is not None and evicted is not None:
                self.close_fn(evicted)
        return item

    def __getstate__(self) -> dict:
        return {"open_fn": self.open_fn, "close_fn": self.close_fn, "capacity": self.capacity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["open_fn"], state["capacity"], state["close_fn"])


def derived_path(dataset_root: Path, name: str) -> Path:
    """Where sagrflow keeps files it derives from a dataset (index, stats).

    `<dataset>/.sagrflow/<name>` when the dataset folder is writable, so the cache
    travels with the data; otherwise under `$SAGRFLOW_CACHE` (default
    `~/.cache/sagrflow`), keyed by the dataset's absolute path. LeRobot's own files
    are never touched.
    """
    dataset_root = Path(dataset_root).resolve()
    local = dataset_root / ".sagrflow"
    if os.access(dataset_root, os.W_OK) and (not local.exists() or os.access(local, os.W_OK)):
        local.mkdir(exist_ok=True)
        return local / name
    base = Path(os.environ.get("SAGRFLOW_CACHE", Path.home() / ".cache" / "sagrflow"))
    key = hashlib.sha1(str(dataset_root).encode()).hexdigest()[:16]
    folder = base / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
