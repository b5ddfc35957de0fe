"""A small bounded memo for host-side computations that repeat from step to step (prompt token ids,
VLM position inputs): the latest `size` results by key, safe to share between threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class Memo:
    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The result remembered for `key`, else `make()` (outside the lock), remembered."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __getstate__(self) -> dict:  # a lock does not pickle; the copy starts empty
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])
