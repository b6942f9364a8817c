"""llama.cpp's Jinja values (``common/jinja/value.h``, ``value.cpp``'s conversions): undefined,
arrays, objects, strings with input marks, functions and their arguments, and the rules every
part of the engine shares (truthiness, conversions, printing, ``tojson``, equality, comparison,
hashability, usage statistics).

* undefined is chainable (``x.y.z`` of an undefined ``x`` is undefined) and prints as nothing;
* strings that come from the messages keep their input mark through concatenation
  (:class:`JStr`'s parts), as ``common/jinja/string.h`` does;
* strings are bytes for ``length``, indexing and comparison;
* ``used``/``ops`` on input values are llama.cpp's usage statistics, read by :mod:`.caps`.

Only values made here reach a template: there is no Python attribute access at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

from ggufx.chat.render import Limits
from ggufx.errors import JinjaError, RaisedError


class Engine(Protocol):
    """What a built-in may ask of the running renderer (:class:`.runtime.Runtime`): its bounds,
    whether usage statistics are on, and strftime_now's clock. llama.cpp's ``func_args`` carries
    the ``context`` the same way (``value.h`` only declares it)."""

    limits: Limits
    stats: bool
    now: float

    def poll(self) -> None: ...

    def check_size(self, v: Any) -> None: ...

    def checked(self, s: Any) -> Any: ...


class Undefined:
    """llama.cpp's undefined: falsy, chainable, printed as nothing."""

    __slots__ = ("hint",)

    def __init__(self, hint: str = "") -> None:
        self.hint = hint


class Arr(list[Any]):
    """An array (mutable). ``used``/``ops``: llama.cpp's usage statistics."""

    __slots__ = ("used", "ops")

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.used = False
        self.ops: set[str] | None = None


class Obj(dict[Any, Any]):
    """An object: keys in insertion order. ``builtins`` is False for the context and loop objects."""

    __slots__ = ("used", "ops", "builtins")

    def __init__(self, items: Any = (), builtins: bool = True) -> None:
        super().__init__(items)
        self.used = False
        self.ops: set[str] | None = None
        self.builtins = builtins


class JStr(str):
    """A string with parts: ``parts`` is a tuple of (text, is_input); plain ``str`` is template
    text. Input strings carry usage statistics too."""

    parts: tuple[tuple[str, bool], ...]
    used: bool
    ops: set[str] | None

    def __new__(cls, text: str, parts: tuple[tuple[str, bool], ...] | None = None, is_input: bool = False) -> JStr:
        self = super().__new__(cls, text)
        self.parts = parts if parts is not None else (((text, is_input),) if text else ())
        self.used = False
        self.ops = None
        return self


class Func:
    __slots__ = ("name", "fn", "this")

    def __init__(self, name: str, fn: Callable[[Args], Any], this: Any = None) -> None:
        self.name = name
        self.fn = fn
        self.this = this


class KwArg:
    __slots__ = ("key", "val")

    def __init__(self, key: str, val: Any) -> None:
        self.key = key
        self.val = val


def type_name(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, Undefined):
        return "Undefined" + (f" (hint: '{v.hint}')" if v.hint else "")
    if isinstance(v, bool):
        return "Boolean"
    if isinstance(v, int):
        return "Integer"
    if isinstance(v, float):
        return "Float"
    if isinstance(v, str):
        return "String"
    if isinstance(v, tuple):
        return "Tuple"
    if isinstance(v, list):
        return "Array"
    if isinstance(v, dict):
        return "Object"
    if isinstance(v, Func):
        return "Function"
    if isinstance(v, KwArg):
        return "KwArg"
    return "Unknown"


def is_int(v: Any) -> bool:
    return type(v) is int


def is_num(v: Any) -> bool:
    return (type(v) is int) or isinstance(v, float)


def is_arr(v: Any) -> bool:
    return isinstance(v, (list, tuple))


def is_undef(v: Any) -> bool:
    return isinstance(v, Undefined)


def as_bool(v: Any) -> bool:
    if v is None or isinstance(v, Undefined):
        return False
    if isinstance(v, (bool, int, float, str, list, tuple, dict)):
        return bool(v)
    raise JinjaError(f"{type_name(v)} is not a bool value")


def as_int(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return int(v) if math.isfinite(v) else 0
    raise JinjaError(f"{type_name(v)} is not an int value")


def as_float(v: Any) -> float:
    if isinstance(v, (bool, int, float)):
        return float(v)
    raise JinjaError(f"{type_name(v)} is not a float value")


def float_str(x: float) -> str:
    """std::to_string(double) with trailing zeros removed, one kept after the point."""
    s = "%f" % x
    s = s.rstrip("0")
    if s.endswith("."):
        s += "0"
    return s


def parts_of(s: str) -> tuple[tuple[str, bool], ...]:
    if isinstance(s, JStr):
        return s.parts
    return ((s, False),) if s else ()


def all_input(s: str) -> bool:
    return all(inp for _, inp in parts_of(s))


def make_str(text: str, parts: tuple[tuple[str, bool], ...]) -> str:
    if all(not inp for _, inp in parts):
        return text
    return JStr(text, parts)


def like(text: str, source: str) -> str:
    """A string made from ``source`` by a one-to-many transformation (mark_input_based_on)."""
    if isinstance(source, JStr) and all_input(source) and text:
        return JStr(text, ((text, True),))
    return text


def map_parts(s: str, fn: Callable[[str], str]) -> str:
    """A one-to-one transformation applied part by part (the marks are kept)."""
    if not isinstance(s, JStr):
        return fn(s)
    parts = tuple((fn(t), inp) for t, inp in s.parts)
    return make_str("".join(t for t, _ in parts), parts)


def concat(a: str, b: str) -> str:
    if not isinstance(a, JStr) and not isinstance(b, JStr):
        return a + b
    return make_str(a + b, parts_of(a) + parts_of(b))


def as_string(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return float_str(v)
    if v is None:
        return "None"
    if isinstance(v, tuple):
        inner = ", ".join(repr_str(x) for x in v)
        return "(" + inner + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(repr_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{repr_str(k)}: {repr_str(x)}" for k, x in v.items()) + "}"
    raise JinjaError(f"{type_name(v)} is not a string value")


def repr_str(v: Any) -> str:
    """value_to_string_repr: quoted strings, Python-like containers."""
    if isinstance(v, str):
        return to_json(v) if "'" in v else f"'{v}'"
    if v is None or isinstance(v, (bool, int, float, list, tuple, dict)):
        return as_string(v)
    if isinstance(v, Func):
        return f"Function<{v.name}>({'' if v.this is None else repr_str(v.this)})"
    return type_name(v)


def to_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def from_bytes(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _json_str(s: str) -> str:
    out = ['"']
    for c in s:
        if c == '"':
            out.append('\\"')
        elif c == "\\":
            out.append("\\\\")
        elif c == "\b":
            out.append("\\b")
        elif c == "\f":
            out.append("\\f")
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def to_json(v: Any, indent: int = -1, item_sep: str = ", ", key_sep: str = ": ", level: int = 0) -> str:
    """value_to_json: llama.cpp's serializer (key order kept, %g floats, its own spacing)."""
    nl = "\n" if indent >= 0 else ""

    def pad(lvl: int) -> str:
        return " " * (lvl * indent) if indent > 0 else ""

    if v is None or isinstance(v, Undefined):
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "%g" % v
    if isinstance(v, str):
        return _json_str(v)
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        items = [pad(level + 1) + to_json(x, indent, item_sep, key_sep, level + 1) for x in v]
        return "[" + nl + (item_sep + nl).join(items) + nl + pad(level) + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        items = [
            pad(level + 1) + _json_str(as_string(k)) + key_sep + to_json(x, indent, item_sep, key_sep, level + 1)
            for k, x in v.items()
        ]
        return "{" + nl + (item_sep + nl).join(items) + nl + pad(level) + "}"
    return "null"


def ensure_ascii(s: str) -> str:
    out = []
    for c in s:
        o = ord(c)
        if o < 0x80:
            out.append(c)
        elif o <= 0xFFFF:
            out.append("\\u%04x" % o)
        else:
            o -= 0x10000
            out.append("\\u%04x\\u%04x" % (0xD800 + ((o >> 10) & 0x3FF), 0xDC00 + (o & 0x3FF)))
    return "".join(out)


def hashable(v: Any) -> bool:
    """is_hashable: scalars, strings, and arrays/objects of immutable hashable values."""
    if v is None or isinstance(v, (bool, int, float, str, KwArg)):
        return True
    if isinstance(v, tuple):
        return all(immutable(x) and hashable(x) for x in v)
    if isinstance(v, list):
        return all(immutable(x) and hashable(x) for x in v)
    if isinstance(v, dict):
        return all(immutable(x) and hashable(x) for x in v.values())
    return False


def immutable(v: Any) -> bool:
    return not isinstance(v, (list, dict)) or isinstance(v, tuple)


def equivalent(a: Any, b: Any) -> bool:
    """``a == b`` as llama.cpp's value_t::operator== (a's rules)."""
    if isinstance(a, Undefined):
        return isinstance(b, Undefined)
    if a is None:
        return b is None
    if isinstance(a, (bool, int, float)):
        if not isinstance(b, (bool, int, float)):
            return False
        return as_int(a) == as_int(b) and float(a) == float(b)
    if isinstance(a, str):
        return isinstance(b, str) and str.__eq__(a, b)
    if isinstance(a, (list, tuple)):
        if isinstance(a, tuple) != isinstance(b, tuple) or not isinstance(b, (list, tuple)):
            return False
        return hashable(a) and hashable(b) and len(a) == len(b) and all(equivalent(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        if not isinstance(b, dict) or not (hashable(a) and hashable(b)) or len(a) != len(b):
            return False
        return all(equivalent(k1, k2) and equivalent(v1, v2) for (k1, v1), (k2, v2) in zip(a.items(), b.items()))
    if isinstance(a, Func):
        return isinstance(b, Func) and a.fn is b.fn
    return a is b


def compare(a: Any, b: Any, op: str) -> bool:
    """value_compare: numbers, strings (and string/number as strings), booleans; else false."""
    if is_num(a) and is_num(b):
        f, g = float(a), float(b)
        return {"eq": f == g, "ge": f >= g, "gt": f > g, "lt": f < g, "ne": f != g}[op]
    if (
        (isinstance(b, str) and is_num(a))
        or (isinstance(a, str) and is_num(b))
        or (isinstance(a, str) and isinstance(b, str))
    ):
        x, y = to_bytes(as_string(a)), to_bytes(as_string(b))
        return {"eq": x == y, "ge": x >= y, "gt": x > y, "lt": x < y, "ne": x != y}[op]
    if isinstance(a, bool) and isinstance(b, bool):
        if op == "eq":
            return a == b
        if op == "ne":
            return a != b
        raise JinjaError("Unsupported comparison operator for bool type")
    return False


def mark_used(v: Any, deep: bool = False) -> None:
    if isinstance(v, (Arr, Obj, JStr)):
        v.used = True
    if deep:
        if isinstance(v, list):
            for x in v:
                mark_used(x, True)
        elif isinstance(v, dict):
            for x in v.values():
                mark_used(x, True)


def add_op(v: Any, name: str) -> None:
    if isinstance(v, (Arr, Obj, JStr)):
        if v.ops is None:
            v.ops = set()
        v.ops.add(name)


def from_json(j: Any, mark_input: bool) -> Any:
    """JSON-like Python data -> values (strings marked as input when asked)."""
    if j is None or isinstance(j, (bool, int, float)):
        return j
    if isinstance(j, str):
        return JStr(j, is_input=mark_input)
    if isinstance(j, (list, tuple)):
        return Arr(from_json(x, mark_input) for x in j)
    if isinstance(j, dict):
        return Obj((str(k), from_json(x, mark_input)) for k, x in j.items())
    raise JinjaError(f"Unsupported JSON value type {type(j).__name__}")


# -- function arguments ---------------------------------------------------------------------------


class Args:
    """func_args: positional values and KwArgs in call order; ``rt`` the running renderer;
    ``ctx`` the caller's scope (a :class:`.runtime.Ctx`, opaque to the built-ins)."""

    __slots__ = ("items", "rt", "name", "ctx")

    def __init__(self, rt: Engine, items: list[Any], name: str = "", ctx: object = None) -> None:
        self.rt = rt
        self.items = items
        self.name = name
        self.ctx = ctx

    def count(self) -> int:
        return len(self.items)

    def pos(self, i: int, *default: Any) -> Any:
        if i < len(self.items):
            return self.items[i]
        if default:
            return default[0]
        raise RaisedError(f"Function '{self.name}' expected at least {i + 1} arguments, got {len(self.items)}")

    def kwarg(self, key: str, default: Any) -> Any:
        for a in self.items:
            if isinstance(a, KwArg) and a.key == key:
                return a.val
        return default

    def kwarg_or_pos(self, key: str, i: int) -> Any:
        v = self.kwarg(key, Undefined())
        if isinstance(v, Undefined) and i < len(self.items) and not isinstance(self.items[i], KwArg):
            return self.items[i]
        return v

    def ensure_count(self, lo: int, hi: int = 999) -> None:
        n = len(self.items)
        if n < lo or n > hi:
            raise JinjaError(f"Function '{self.name}' expected between {lo} and {hi} arguments, got {n}")

    def ensure(self, *checks: tuple[Callable[[Any], bool], str] | None, required: int | None = None) -> None:
        """ensure_vals: the first ``required`` (default: all) must exist; those present are checked."""
        need = len(checks) if required is None else required
        self.ensure_count(need)
        for i, check in enumerate(checks[:need]):
            if check is not None and i < len(self.items) and not check[0](self.items[i]):
                raise JinjaError(
                    f"Function '{self.name}' expected value of type {check[1]}, got {type_name(self.items[i])}"
                )


T_STR = (lambda v: isinstance(v, str), "String")
T_INT = (is_int, "Integer")
T_FLOAT = (lambda v: isinstance(v, float), "Float")
T_BOOL = (lambda v: isinstance(v, bool), "Boolean")
T_ARR = (is_arr, "Array")
T_OBJ = (lambda v: isinstance(v, dict), "Object")


def check_key(k: Any) -> None:
    if not hashable(k) or not immutable(k):
        raise JinjaError(f"Object key of unhashable type: {type_name(k)}")
