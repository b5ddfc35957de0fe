"""NumPy arrays over msgpack, byte-compatible with openpi's `openpi_client.msgpack_numpy`.

An array travels as a map {b"__ndarray__": True, b"data": raw bytes, b"dtype": dtype.str,
b"shape": shape}; a NumPy scalar as {b"__npgeneric__": True, b"data": item, b"dtype": ...}.
openpi and starVLA clients and servers pack and unpack exactly this, so either side of a
connection can be theirs. Object, void and complex arrays are refused (no pickle fallback).
"""

from __future__ import annotations

import functools

import msgpack
import numpy as np

_UNSUPPORTED_KINDS = ("V", "O", "c")


def pack_array(obj):
    """msgpack `default` hook: ndarray / np.generic -> their map form; anything else unchanged."""
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind in _UNSUPPORTED_KINDS:
        raise ValueError(f"unsupported dtype for msgpack-numpy: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def unpack_array(obj: dict):
    """msgpack `object_hook`: the map forms back to ndarray / np.generic (bytes or str keys)."""
    for array_key, data, dtype, shape in ((b"__ndarray__", b"data", b"dtype", b"shape"),
                                          ("__ndarray__", "data", "dtype", "shape")):
        if array_key in obj:
            return np.ndarray(buffer=obj[data], dtype=np.dtype(obj[dtype]), shape=obj[shape])
    for scalar_key, data, dtype in ((b"__npgeneric__", b"data", b"dtype"), ("__npgeneric__", "data", "dtype")):
        if scalar_key in obj:
            return np.dtype(obj[dtype]).type(obj[data])
    return obj


Packer = functools.partial(msgpack.Packer, default=pack_array)
packb = functools.partial(msgpack.packb, default=pack_array)
Unpacker = functools.partial(msgpack.Unpacker, object_hook=unpack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=unpack_array)
