"""What gguf-py knows about metadata keys: their value types, and which keys are protected.

The types are read from gguf-py's own writer (``gguf/gguf_writer.py``): each ``add_*`` helper
names a ``Keys.*`` constant and the ``add_uint32``/``add_string``/... call that writes it, so
ggufx checks ``llama.context_length`` as u32 and ``tokenizer.chat_template`` as a string exactly as
llama.cpp's converter writes them, and learns new keys by upgrading ``gguf``. Key templates such as
``{arch}.context_length`` match any architecture.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from functools import lru_cache
from types import ModuleType
from typing import Any

from ggufx.format.values import SHORT_NAMES, ValueType

_PRIVATE_NAME = "_ggufx_gguf_constants"


@lru_cache(maxsize=1)
def constants() -> ModuleType:
    """gguf-py's ``gguf.constants`` module, loaded without importing numpy when possible."""
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    spec = importlib.util.find_spec("gguf")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = f"{loc}/constants.py"
        try:
            cspec = importlib.util.spec_from_file_location(_PRIVATE_NAME, path)
            if cspec is None or cspec.loader is None:
                continue
            mod = importlib.util.module_from_spec(cspec)
            sys.modules[_PRIVATE_NAME] = mod
            cspec.loader.exec_module(mod)
            return mod
        except (OSError, ImportError):
            sys.modules.pop(_PRIVATE_NAME, None)
            continue
    import gguf.constants  # noqa: PLC0415 - fallback, pulls numpy via the package __init__

    return gguf.constants


_ADD_TYPES = {
    "uint8": ValueType.UINT8,
    "int8": ValueType.INT8,
    "uint16": ValueType.UINT16,
    "int16": ValueType.INT16,
    "uint32": ValueType.UINT32,
    "int32": ValueType.INT32,
    "float32": ValueType.FLOAT32,
    "bool": ValueType.BOOL,
    "string": ValueType.STRING,
    "array": ValueType.ARRAY,
    "uint64": ValueType.UINT64,
    "int64": ValueType.INT64,
    "float64": ValueType.FLOAT64,
}

PADDING_KEY = "ggufx.padding"
"""The key ggufx uses to absorb slack so the data section does not move: an array of u8 zeros (or,
for a slack of 33 to 36 bytes, a string of at most 3 spaces). llama.cpp ignores keys it does not
know; ggufx rewrites it on every edit and never reports it as a change."""

# keys that locate tensor data or tie shards together: editing them moves or orphans data
PROTECTED = {
    "general.alignment": "it sets where every tensor's data starts; changing it misplaces all tensors",
    "split.no": "it ties this file to its shard position; llama.cpp would load the wrong shards",
    "split.count": "it ties the shards together; llama.cpp would look for the wrong files",
    "split.tensors.count": "llama.cpp checks it against the tensors of all shards",
}


def protected_reason(key: str) -> str | None:
    if key in PROTECTED:
        return PROTECTED[key]
    if key.startswith("split."):
        return "split.* keys tie the shards of a split model together"
    return None


@lru_cache(maxsize=1)
def known_key_types() -> list[tuple[re.Pattern[str], frozenset[ValueType], str]]:
    """(key pattern, allowed value types, template) for every key gguf-py's writer sets."""
    c = constants()
    spec = importlib.util.find_spec("gguf")
    src = ""
    for loc in (spec.submodule_search_locations or []) if spec else []:
        try:
            with open(f"{loc}/gguf_writer.py", encoding="utf-8") as f:
                src = f.read()
            break
        except OSError:
            continue
    table: dict[str, set[ValueType]] = {}
    for block in re.split(r"\n    def ", src):
        refs = re.findall(r"Keys\.(\w+)\.(\w+)", block)
        adds = re.findall(r"self\.add_(\w+)\(", block)
        direct = re.findall(r"self\.add_(\w+)\(\s*Keys\.(\w+)\.(\w+)", block)
        for add, group, name in direct:
            _note(table, c, group, name, add)
        if len(set(refs)) == 1:
            group, name = refs[0]
            for add in adds:
                _note(table, c, group, name, add)
    out = []
    for template, types in table.items():
        pattern = re.escape(template)
        pattern = re.sub(r"\\\{(\w+)\\\}", lambda m: r"\d+" if m.group(1) == "id" else r"[^.]+", pattern)
        out.append((re.compile(pattern + r"\Z"), frozenset(types), template))
    return out


def _note(table: dict[str, set[ValueType]], c: Any, group: str, name: str, add: str) -> None:
    vt = _ADD_TYPES.get(add)
    if vt is None:
        return
    try:
        template = getattr(getattr(c.Keys, group), name)
    except AttributeError:
        return
    if isinstance(template, str):
        table.setdefault(template, set()).add(vt)


def expected_types(key: str) -> frozenset[ValueType] | None:
    """Value types gguf-py writes for ``key``, or None when gguf-py does not know the key."""
    if key.startswith("tokenizer.chat_template"):
        return frozenset({ValueType.STRING}) if key != "tokenizer.chat_templates" else frozenset({ValueType.ARRAY})
    for pattern, types, _ in known_key_types():
        if pattern.match(key):
            return types
    return None


# -- turning command-line text into typed values -----------------------------------------------

_INT_RANGES = {
    ValueType.UINT8: (0, 2**8 - 1),
    ValueType.INT8: (-(2**7), 2**7 - 1),
    ValueType.UINT16: (0, 2**16 - 1),
    ValueType.INT16: (-(2**15), 2**15 - 1),
    ValueType.UINT32: (0, 2**32 - 1),
    ValueType.INT32: (-(2**31), 2**31 - 1),
    ValueType.UINT64: (0, 2**64 - 1),
    ValueType.INT64: (-(2**63), 2**63 - 1),
}


def parse_type(name: str) -> ValueType:
    """``u32``, ``str``, ``uint32``, ``string``... as a ValueType."""
    n = name.strip().lower()
    aliases = {"string": "str", "array": "arr", "float": "f32", "double": "f64", "boolean": "bool"}
    n = aliases.get(n, n)
    if n in SHORT_NAMES:
        return SHORT_NAMES[n]
    for vt in ValueType:
        if vt.name.lower() == n:
            return vt
    raise ValueError(f"unknown value type {name!r} (use one of {', '.join(SHORT_NAMES)})")


def coerce(vtype: ValueType, value: Any, what: str) -> Any:
    """Check and convert a Python value (or command-line text) to ``vtype``."""
    if vtype is ValueType.STRING:
        if not isinstance(value, str):
            raise ValueError(f"{what}: expected a string")
        return value
    if vtype is ValueType.BOOL:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    if vtype in _INT_RANGES:
        if isinstance(value, bool):
            raise ValueError(f"{what}: expected an integer, got a boolean")
        if isinstance(value, str):
            try:
                value = int(value.strip(), 0)
            except ValueError:
                raise ValueError(f"{what}: expected an integer ({vtype.short}), got {value!r}") from None
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{what}: expected an integer ({vtype.short}), got {value!r}")
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"{what}: expected an integer ({vtype.short})")
        lo, hi = _INT_RANGES[vtype]
        if not lo <= value <= hi:
            raise ValueError(f"{what}: {value} does not fit in {vtype.short} ({lo}..{hi})")
        return value
    if vtype in (ValueType.FLOAT32, ValueType.FLOAT64):
        if isinstance(value, bool):
            raise ValueError(f"{what}: expected a number, got a boolean")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: expected a number ({vtype.short}), got {value!r}") from None
        if vtype is ValueType.FLOAT32 and math.isfinite(f) and abs(f) > 3.4028234663852886e38:
            raise ValueError(f"{what}: {f} does not fit in f32")
        return f
    raise ValueError(f"{what}: cannot set a value of type {vtype.short} here")


def infer_scalar_type(value: Any) -> ValueType | None:
    """The type of a Python value when it is unambiguous (str, bool); None for numbers."""
    if isinstance(value, bool):
        return ValueType.BOOL
    if isinstance(value, str):
        return ValueType.STRING
    return None


def parse_json_list(text: str, what: str) -> list[Any] | None:
    """A JSON list given on the command line, or None when ``text`` is not one."""
    t = text.strip()
    if not t.startswith("["):
        return None
    try:
        value = json.loads(t)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: invalid JSON list ({e.msg} at column {e.colno})") from None
    if not isinstance(value, list):
        return None
    return value
