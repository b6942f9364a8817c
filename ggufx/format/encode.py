"""Serialise metadata values and KV records in a file's byte order (the inverse of the reader)."""

from __future__ import annotations

import struct
from typing import Any

from ggufx.format.values import SCALAR_FORMAT, GGUFArray, ValueType, encode_str


def encode_string(bo: str, text: str | bytes) -> bytes:
    raw = text if isinstance(text, bytes) else encode_str(text)
    return struct.pack(bo + "Q", len(raw)) + raw


def encode_value(bo: str, vtype: ValueType, value: Any, elem_type: ValueType | None = None) -> bytes:
    """The value bytes (without the type tag) of ``value`` as ``vtype``."""
    if vtype is ValueType.STRING:
        return encode_string(bo, value)
    if vtype is ValueType.ARRAY:
        if isinstance(value, GGUFArray):
            # an unchanged array is copied byte for byte (a 262K vocabulary stays identical)
            return struct.pack(bo + "iQ", int(value.elem_type), value.count) + value.raw()
        if elem_type is None:
            raise ValueError("array needs an element type")
        out = [struct.pack(bo + "iQ", int(elem_type), len(value))]
        if elem_type is ValueType.STRING:
            out.extend(encode_string(bo, v) for v in value)
        elif elem_type is ValueType.ARRAY:
            raise ValueError("writing nested arrays is not supported")
        else:
            out.append(struct.pack(f"{bo}{len(value)}{SCALAR_FORMAT[elem_type]}", *value))
        return b"".join(out)
    return struct.pack(bo + SCALAR_FORMAT[vtype], value)


def encode_kv(bo: str, key: str, vtype: ValueType, value: Any, elem_type: ValueType | None = None) -> bytes:
    """A whole KV record: key, type tag, value."""
    return (
        encode_string(bo, key.encode("utf-8"))
        + struct.pack(bo + "i", int(vtype))
        + encode_value(bo, vtype, value, elem_type)
    )
