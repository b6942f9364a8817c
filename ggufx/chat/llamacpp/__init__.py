"""Render chat templates as llama.cpp does: its own Jinja engine (``common/jinja/``), not jinja2.

llama.cpp parses and runs templates with a C++ engine of its own (lexer, parser, runtime,
``value.cpp``'s built-ins). It is more lenient than jinja2 in places and stricter in others, and a
template that renders in transformers may fail in llama-server, or the reverse. This module runs a
template with llama.cpp's rules, written after the pinned llama.cpp source:

* **parsing**: jinja2's parser (with ``trim_blocks``/``lstrip_blocks``, which llama.cpp's lexer
  applies too), then a check that refuses what llama.cpp's parser has no rule for (``{% with %}``,
  ``{% include %}``, ``**``, ``//``, recursive loops...);
* **values**: undefined is chainable (``x.y.z`` of an undefined ``x`` is undefined), ``+``/``~`` of
  a string and none/undefined is the string, a loop over undefined runs zero times but a loop over
  none is an error, ``{{ none }}`` prints nothing, lists print their items, strings are bytes for
  ``length`` and indexing, string ``<`` is an error, ``and``/``or`` return operands;
* **built-ins**: only the filters, tests and methods ``value.cpp`` gives each type (strings have no
  ``join`` or ``count``, objects no ``default``, ``x|default(y)`` replaces none too, ``split()``
  splits on one space, ``replace`` with a count and ``tojson(sort_keys=true)`` are not
  implemented...), and lists are mutable (``list.append``, ``list.pop``);
* **scoping**: a loop has one scope for all its iterations, macros see their caller's variables;
* **usage statistics** (which input values a render touched), from which :mod:`caps
  <ggufx.chat.llamacpp.caps>` computes llama.cpp's capability flags as ``caps.cpp`` does;
* **input marking**: strings that come from the messages keep that mark through concatenation,
  so the output is a list of (text, is_input) parts as llama-server tokenizes it.

Only values made here reach a template: there is no Python attribute access at all (no
``__class__``, no methods of Python objects), and rendering is bounded like
:mod:`ggufx.chat.render`: wall time (checked as the template runs, and by the command's budget),
output size, the size of any string or list the template builds, and call depth. Every failure is a
:class:`~ggufx.chat.render.RenderError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ggufx.chat.render import Limits, RenderError, budget_deadline, note_timeout

MAX_DEPTH = 64  # nested macro calls
LIMITS = Limits()  # the defaults of ggufx.chat.render


# -- values ---------------------------------------------------------------------------------------


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


class JinjaError(Exception):
    """A runtime error of llama.cpp's engine (std::runtime_error)."""


class RaisedError(JinjaError):
    """raise_exception() in the template, or a built-in refusing its arguments."""


class NotImplementedInLlamaCpp(JinjaError):
    """llama.cpp's not_implemented_exception."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


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


def _bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _unbytes(b: bytes) -> str:
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


def _ensure_ascii(s: str) -> str:
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
        x, y = _bytes(as_string(a)), _bytes(as_string(b))
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
    """func_args: positional values and KwArgs in call order; ``rt`` the running renderer."""

    __slots__ = ("items", "rt", "name", "ctx")

    def __init__(self, rt: Runtime, items: list[Any], name: str = "", ctx: Ctx | None = None) -> None:
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


# -- built-ins (value.cpp) ------------------------------------------------------------------------


def _slice(seq: Any, start: int, stop: int, step: int) -> list[Any]:
    n = len(seq)
    if step > 0:
        start = max(n + start, 0) if start < 0 else min(start, n)
        stop = max(n + stop, 0) if stop < 0 else min(stop, n)
    else:
        start = max(n + start, 0) if start < 0 else min(start, n - 1)
        stop = max(n + stop, -1) if stop < -1 else min(stop, n - 1)
    out: list[Any] = []
    if step == 0:
        return out
    d = 1 if step > 0 else -1
    i = start
    while d * i < d * stop:
        if 0 <= i < n:
            out.append(seq[i])
        i += step
    return out


def _slice_args(a: Args) -> tuple[int, int, int]:
    a0, a1, a2 = a.pos(1), a.pos(2, Undefined()), a.pos(3, Undefined())
    if a.count() == 2:
        start, stop, step = 0, as_int(a0), 1
    elif a.count() == 3:
        start, stop, step = as_int(a0), as_int(a1), 1
    else:
        start, stop, step = as_int(a0), as_int(a1), as_int(a2)
    if step == 0:
        raise RaisedError("slice step cannot be zero")
    return start, stop, step


def f_tojson(a: Args) -> Any:
    a.ensure_count(1, 5)
    ascii_ = a.kwarg_or_pos("ensure_ascii", 1)
    ind = a.kwarg_or_pos("indent", 2)
    seps = a.kwarg_or_pos("separators", 3)
    sort = a.kwarg_or_pos("sort_keys", 4)
    if a.rt.stats:
        mark_used(a.pos(0), True)
    indent = as_int(ind) if is_int(ind) else -1
    if as_bool(sort):
        raise NotImplementedInLlamaCpp("tojson sort_keys=true not implemented")
    sep = list(seps) if is_arr(seps) else []
    item_sep = as_string(sep[0]) if sep else (", " if indent < 0 else ",")
    key_sep = as_string(sep[1]) if len(sep) > 1 else ": "
    out = to_json(a.pos(0), indent, item_sep, key_sep)
    if as_bool(ascii_):
        out = _ensure_ascii(out)
    return a.rt.checked(out)


def _get_attribute(v: Any, attr: Any, default: Any) -> Any:
    if isinstance(attr, Undefined):
        return default
    if is_arr(v):
        idx = attr
        if isinstance(attr, str):
            if attr and attr.isascii() and attr.isdigit():
                idx = int(attr)
        if not (is_int(idx) or isinstance(idx, bool)):
            return default
        i = as_int(idx)
        if i < 0:
            i += len(v)
        return v[i] if 0 <= i < len(v) else default
    if isinstance(v, dict):
        _check_key(attr)
        return v.get(attr, default) if not isinstance(attr, Undefined) else default
    return default


def _check_key(k: Any) -> None:
    if not hashable(k) or not immutable(k):
        raise JinjaError(f"Object key of unhashable type: {type_name(k)}")


def _test_fn(name: str) -> Callable[[Args], Any]:
    fn = TESTS.get(name)
    if fn is None:
        raise RaisedError(f"selectattr: unknown test '{name}'")
    return fn


def _selectattr(reject: bool) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        a.ensure_count(2, 4)
        a.ensure(T_ARR, T_STR, T_STR, T_STR, required=2)
        arr, attribute = a.pos(0), a.pos(1)
        out = Arr()
        if a.count() == 2:
            for item in arr:
                a.rt.poll()
                sel = as_bool(_get_attribute(item, attribute, Undefined()))
                if sel != reject:
                    out.append(item)
        elif a.count() == 3:
            test = _test_fn(as_string(a.pos(1)))
            val = a.pos(2)
            for item in arr:
                a.rt.poll()
                if as_bool(test(Args(a.rt, [item, val], a.name, a.ctx))) != reject:
                    out.append(item)
        else:
            test = _test_fn(as_string(a.pos(2)))
            extra = a.pos(3)
            for item in arr:
                a.rt.poll()
                av = _get_attribute(item, attribute, Undefined())
                if as_bool(test(Args(a.rt, [av, extra], a.name, a.ctx))) != reject:
                    out.append(item)
        return out

    return run


def f_default(a: Args) -> Any:
    a.ensure_count(2, 3)
    check_bool = as_bool(a.kwarg_or_pos("boolean", 2))
    v = a.pos(0)
    missing = (not as_bool(v)) if check_bool else (isinstance(v, Undefined) or v is None)
    return a.pos(1) if missing else v


def f_toobject(a: Args) -> Any:
    out = Obj()
    it = a.pos(0, Undefined())
    first = False
    if is_arr(it):
        first = True
        for x in it:
            if is_arr(x) and len(x) == 2:
                _check_key(x[0])
                out[x[0]] = x[1]
            else:
                raise RaisedError(f"namespace/dict() iterable argument must consist of tuples, not {type_name(x)}")
    elif isinstance(it, dict):
        first = True
        out.update(it)
    for x in a.items:
        if isinstance(x, KwArg):
            out[x.key] = x.val
        elif not first:
            raise RaisedError(
                f"namespace/dict() arguments must be kwargs, dict and/or iterable of tuples, not {type_name(x)}"
            )
        first = False
    a.rt.check_size(out)
    return out


def f_raise(a: Args) -> Any:
    a.ensure(T_STR)
    raise TemplateRaised(f"Jinja Exception: {a.pos(0)}")


def f_strftime(a: Args) -> Any:
    a.ensure(T_STR)
    fmt = a.pos(0)
    try:
        out = time.strftime(fmt, time.localtime(a.rt.now))
    except (ValueError, UnicodeError):
        raise RaisedError("strftime_now: failed to format time") from None
    if not out or len(_bytes(out)) >= 100:
        raise RaisedError("strftime_now: failed to format time")
    return out


def f_range(a: Args) -> Any:
    a.ensure_count(1, 3)
    a.ensure(T_INT, T_INT, T_INT, required=1)
    if a.count() == 1:
        start, stop, step = 0, a.pos(0), 1
    elif a.count() == 2:
        start, stop, step = a.pos(0), a.pos(1), 1
    else:
        start, stop, step = a.pos(0), a.pos(1), a.pos(2)
    if step == 0:
        raise RaisedError("range() step argument must not be zero")
    n = len(range(start, stop, step))
    if n > a.rt.limits.max_value:
        raise RenderError("too-large", f"range() of {n:,} items is too large for a chat template")
    return Arr(range(start, stop, step))


def _typetest(*checks: Callable[[Any], bool]) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        a.ensure_count(1)
        v = a.pos(0)
        return any(c(v) for c in checks)

    return run


def _cmptest(op: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        a.ensure_count(2, 2)
        return compare(a.pos(0), a.pos(1), op)

    return run


def t_in(a: Args) -> Any:
    a.ensure_count(2)
    needle, hay = a.pos(0), a.pos(1)
    return test_in(needle, hay)


def test_in(needle: Any, hay: Any) -> bool:
    if isinstance(hay, Undefined):
        return False
    if is_arr(hay):
        return any(equivalent(needle, x) for x in hay)
    if isinstance(hay, str):
        if not isinstance(needle, str):
            raise RaisedError(
                "'in' test expects args[1] as string when args[0] is string, got args[1] as " + type_name(needle)
            )
        return str.__contains__(hay, needle)
    if isinstance(hay, dict):
        _check_key(needle)
        return needle in hay
    raise RaisedError(f"'in' test expects iterable as first argument, got {type_name(hay)}")


def t_sameas(a: Args) -> Any:
    a.ensure_count(2)
    x, y = a.pos(0), a.pos(1)
    if isinstance(x, Undefined) or isinstance(y, Undefined):
        return False
    if x is None and y is None:
        return True
    if isinstance(x, bool) and isinstance(y, bool):
        return x == y
    if is_int(x) and is_int(y):
        return -5 <= x <= 256 and x == y
    return x is y


def _not_impl(what: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        raise NotImplementedInLlamaCpp(what)

    return run


def _str_lower_ascii(s: str) -> str:
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in s)


def _str_upper_ascii(s: str) -> str:
    return "".join(c.upper() if "a" <= c <= "z" else c for c in s)


def t_lower(a: Args) -> Any:
    a.ensure(T_STR)
    return not any("A" <= c <= "Z" for c in a.pos(0))


def t_upper(a: Args) -> Any:
    a.ensure(T_STR)
    return not any("a" <= c <= "z" for c in a.pos(0))


def t_odd(a: Args) -> Any:
    a.ensure(T_INT)
    return a.pos(0) % 2 != 0


def t_even(a: Args) -> Any:
    a.ensure(T_INT)
    return a.pos(0) % 2 == 0


def t_divisibleby(a: Args) -> Any:
    a.ensure(T_INT, T_INT)
    if a.pos(1) == 0:
        raise JinjaError("division by zero")
    return math.fmod(a.pos(0), a.pos(1)) == 0


def t_test(a: Args) -> Any:
    a.ensure(T_STR)
    return a.pos(0) in TESTS


TESTS: dict[str, Callable[[Args], Any]] = {
    "boolean": _typetest(lambda v: isinstance(v, bool)),
    "callable": _typetest(lambda v: isinstance(v, Func)),
    "odd": t_odd,
    "even": t_even,
    "false": _typetest(lambda v: v is False),
    "true": _typetest(lambda v: v is True),
    "divisibleby": t_divisibleby,
    "string": _typetest(lambda v: isinstance(v, str)),
    "integer": _typetest(is_int),
    "float": _typetest(lambda v: isinstance(v, float)),
    "number": _typetest(is_num),
    "iterable": _typetest(lambda v: isinstance(v, (dict, list, tuple, str, Undefined))),
    "sequence": _typetest(lambda v: isinstance(v, (dict, list, tuple, str, Undefined))),
    "mapping": _typetest(lambda v: isinstance(v, dict)),
    "lower": t_lower,
    "upper": t_upper,
    "none": _typetest(lambda v: v is None),
    "defined": lambda a: not isinstance(a.pos(0), Undefined),
    "undefined": _typetest(lambda v: isinstance(v, Undefined)),
    "eq": _cmptest("eq"),
    "equalto": _cmptest("eq"),
    "ge": _cmptest("ge"),
    "gt": _cmptest("gt"),
    "greaterthan": _cmptest("gt"),
    "lt": _cmptest("lt"),
    "lessthan": _cmptest("lt"),
    "ne": _cmptest("ne"),
    "in": t_in,
    "test": t_test,
    "sameas": t_sameas,
    "escaped": _not_impl("escaped test not implemented"),
    "filter": _not_impl("filter test not implemented"),
}

GLOBALS: dict[str, Callable[[Args], Any]] = {
    "raise_exception": f_raise,
    "dict": f_toobject,
    "namespace": f_toobject,
    "strftime_now": f_strftime,
    "range": f_range,
    "tojson": f_tojson,
    **{f"test_is_{k}": v for k, v in TESTS.items()},
}


def _num_builtins(kind: Callable[[Any], bool], kind_name: str, is_float: bool) -> dict[str, Callable[[Args], Any]]:
    check = (kind, kind_name)

    def f_abs(a: Args) -> Any:
        a.ensure(check)
        return abs(a.pos(0))

    def f_int(a: Args) -> Any:
        a.ensure(check)
        return as_int(a.pos(0))

    def f_float(a: Args) -> Any:
        a.ensure(check)
        return float(a.pos(0))

    return {
        "default": f_default,
        "abs": f_abs,
        "int": f_int,
        "float": f_float,
        "safe": f_tojson,
        "string": f_tojson,
        "tojson": f_tojson,
    }


INT_BUILTINS = _num_builtins(is_int, "Integer", False)
FLOAT_BUILTINS = _num_builtins(lambda v: isinstance(v, float), "Float", True)


def _strip_parts(s: str, left: bool, right: bool, chars: str | None) -> str:
    def match(c: str) -> bool:
        return (c in chars) if chars is not None else c in " \t\n\v\f\r"

    parts: list[list[Any]] = [[t, inp] for t, inp in parts_of(s)]
    if left:
        while parts:
            t = parts[0][0]
            i = 0
            while i < len(t) and match(t[i]):
                i += 1
            parts[0][0] = t[i:]
            if parts[0][0]:
                break
            parts.pop(0)
    if right:
        while parts:
            t = parts[-1][0]
            j = len(t)
            while j > 0 and match(t[j - 1]):
                j -= 1
            parts[-1][0] = t[:j]
            if parts[-1][0]:
                break
            parts.pop()
    tp = tuple((t, inp) for t, inp in parts)
    return make_str("".join(t for t, _ in tp), tp)


def _strip(left: bool, right: bool, name: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        if name == "strip":
            if not isinstance(a.pos(0), str):
                raise RaisedError("strip() first argument must be a string")
        else:
            a.ensure(T_STR)
        chars = a.kwarg_or_pos("chars", 1)
        return _strip_parts(a.pos(0), left, right, None if isinstance(chars, Undefined) else as_string(chars))

    return run


def _title(s: str) -> str:
    out = []
    cap = True
    for c in s:
        if c in " \t\n\v\f\r":
            cap = True
            out.append(c)
        elif cap:
            out.append(_str_upper_ascii(c))
            cap = False
        else:
            out.append(_str_lower_ascii(c))
    return "".join(out)


def _capitalize(s: str) -> str:
    return _str_upper_ascii(s[:1]) + _str_lower_ascii(s[1:]) if s else s


def _unary_str(fn: Callable[[str], str]) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        a.ensure(T_STR)
        return map_parts(a.pos(0), fn)

    return run


def s_length(a: Args) -> Any:
    a.ensure(T_STR)
    return len(_bytes(a.pos(0)))


def s_startswith(a: Args) -> Any:
    a.ensure(T_STR, T_STR)
    return _bytes(a.pos(0)).startswith(_bytes(a.pos(1)))


def s_endswith(a: Args) -> Any:
    a.ensure(T_STR, T_STR)
    return _bytes(a.pos(0)).endswith(_bytes(a.pos(1)))


def _split(reverse: bool) -> Callable[[Args], Any]:
    name = "rsplit" if reverse else "split"

    def run(a: Args) -> Any:
        a.ensure_count(1, 3)
        s = a.pos(0)
        if not isinstance(s, str):
            raise RaisedError(f"{name}() first argument must be a string")
        delim = as_string(a.pos(1)) if a.count() > 1 else " "
        if not delim:
            raise RaisedError("empty separator")
        maxsplit = as_int(a.pos(2)) if a.count() > 2 else -1
        pieces = str.rsplit(s, delim, maxsplit) if reverse else str.split(s, delim, maxsplit)
        out = Arr(str(p) for p in pieces)
        # only the remainder keeps the input mark
        rest = len(out) - 1 if not reverse else 0
        out[rest] = like(out[rest], s)
        a.rt.check_size(out)
        return out

    return run


def s_replace(a: Args) -> Any:
    a.ensure(T_STR, T_STR, T_STR, T_INT, required=3)
    s, old, new = str(a.pos(0)), str(a.pos(1)), str(a.pos(2))
    count = as_int(a.pos(3)) if a.count() > 3 else -1
    if count > 0:
        raise NotImplementedInLlamaCpp("String replace with count argument not implemented")
    if old != new:
        if not old:
            n = len(s) + 1
            if n * len(new) + len(s) > a.rt.limits.max_value:
                raise RenderError("too-large", "replace() would build a string too large for a chat template")
            s = new + "".join(c + new for c in s)
        else:
            hits = s.count(old)
            if len(s) + hits * (len(new) - len(old)) > a.rt.limits.max_value:
                raise RenderError("too-large", "replace() would build a string too large for a chat template")
            s = s.replace(old, new)
    return like(s, a.pos(0))


def s_format(a: Args) -> Any:
    fmt = a.pos(0)
    if not isinstance(fmt, str):
        raise RaisedError("format() first argument must be a string")
    fmt_input = all_input(fmt)
    parts: list[tuple[str, bool]] = []
    literal = []
    i = 0
    k = 1
    text = str(fmt)
    while i < len(text):
        c = text[i]
        if c != "{":
            literal.append(c)
            i += 1
            continue
        if i + 1 >= len(text) or text[i + 1] != "}":
            raise NotImplementedInLlamaCpp("format() only supports simple '{}' placeholders")
        i += 2
        if literal:
            parts.append(("".join(literal), fmt_input))
            literal = []
        parts.extend(parts_of(as_string(a.pos(k))))
        k += 1
    if literal:
        parts.append(("".join(literal), fmt_input))
    tp = tuple(parts)
    return a.rt.checked(make_str("".join(t for t, _ in tp), tp))


def s_int(a: Args) -> Any:
    v = a.pos(0)
    default = a.kwarg_or_pos("default", 1)
    base_v = a.kwarg_or_pos("base", 2)
    base = 10 if isinstance(base_v, Undefined) else as_int(base_v)
    if base != 0 and (base < 2 or base > 36):
        raise RaisedError("int() base must be 0 or between 2 and 36")
    if not isinstance(v, str):
        raise RaisedError("int() first argument must be a string")
    try:
        return _stoi(str(v), base)
    except ValueError:
        return 0 if isinstance(default, Undefined) else as_int(default)


def _stoi(s: str, base: int) -> int:
    """std::stoi: leading whitespace, a sign, the longest valid prefix; ValueError if none."""
    import re

    t = s.lstrip(" \t\n\v\f\r")
    m = re.match(r"[+-]?", t)
    sign = m.group(0) if m else ""
    body = t[len(sign) :]
    if base in (0, 16) and body[:2].lower() == "0x":
        body, base = body[2:], 16
    elif base == 0:
        base = 8 if body.startswith("0") and len(body) > 1 else 10
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"[:base]
    n = 0
    while n < len(body) and body[n].lower() in digits:
        n += 1
    if n == 0:
        raise ValueError(s)
    value = int(sign + body[:n], base)
    if not -(2**31) <= value < 2**31:
        raise ValueError(s)
    return value


def s_float(a: Args) -> Any:
    a.ensure(T_STR)
    default = a.kwarg_or_pos("default", 1)
    import re

    m = re.match(r"\s*[+-]?(?:inf(?:inity)?|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)", str(a.pos(0)), re.I)
    if not m:
        return 0.0 if isinstance(default, Undefined) else as_float(default)
    return float(m.group(0))


def s_string(a: Args) -> Any:
    a.ensure(T_STR)
    return a.pos(0)


def s_slice(a: Args) -> Any:
    a.ensure_count(1, 4)
    a.ensure(T_STR, T_INT, T_INT, T_INT, required=2)
    start, stop, step = _slice_args(a)
    s = a.pos(0)
    return like(_unbytes(bytes(_slice(_bytes(s), start, stop, step))), s)


def s_safe(a: Args) -> Any:
    a.ensure(T_STR)
    return a.pos(0)


def s_indent(a: Args) -> Any:
    a.ensure_count(1, 4)
    s = a.pos(0)
    width = a.kwarg_or_pos("width", 1)
    first = as_bool(a.kwarg_or_pos("first", 2))
    blank = as_bool(a.kwarg_or_pos("blank", 3))
    if not isinstance(s, str):
        raise RaisedError("indent() first argument must be a string")
    if is_int(width):
        pad = " " * max(0, width)
    elif isinstance(width, str):
        pad = str(width)
    else:
        pad = "    "
    text = str(s)
    lines = text.split("\n") if text else []
    if text.endswith("\n"):
        lines.pop()
    out = ""
    for line in lines:  # std::getline, as llama.cpp does (an empty first line is dropped)
        if out:
            out += "\n"
        if first if not out else (bool(line) or blank):
            out += pad
        out += line
        a.rt.check_size(out)
    if text.endswith("\n"):
        out += "\n"
        if blank:
            out += pad
    return like(out, s)


STRING_BUILTINS: dict[str, Callable[[Args], Any]] = {
    "default": f_default,
    "upper": _unary_str(_str_upper_ascii),
    "lower": _unary_str(_str_lower_ascii),
    "strip": _strip(True, True, "strip"),
    "rstrip": _strip(False, True, "rstrip"),
    "lstrip": _strip(True, False, "lstrip"),
    "title": _unary_str(_title),
    "capitalize": _unary_str(_capitalize),
    "length": s_length,
    "startswith": s_startswith,
    "endswith": s_endswith,
    "split": _split(False),
    "rsplit": _split(True),
    "replace": s_replace,
    "format": s_format,
    "int": s_int,
    "float": s_float,
    "string": s_string,
    "slice": s_slice,
    "safe": s_safe,
    "tojson": f_tojson,
    "indent": s_indent,
    "join": _not_impl("String join builtin not implemented"),
}


def _bool_str(a: Args) -> Any:
    a.ensure(T_BOOL)
    return "True" if a.pos(0) else "False"


def _bool_int(a: Args) -> Any:
    a.ensure(T_BOOL)
    return 1 if a.pos(0) else 0


def _bool_float(a: Args) -> Any:
    a.ensure(T_BOOL)
    return 1.0 if a.pos(0) else 0.0


BOOL_BUILTINS: dict[str, Callable[[Args], Any]] = {
    "default": f_default,
    "int": _bool_int,
    "float": _bool_float,
    "safe": _bool_str,
    "string": _bool_str,
    "tojson": f_tojson,
}


def _same_kind(src: Any, items: list[Any]) -> Any:
    return tuple(items) if isinstance(src, tuple) else Arr(items)


def a_list(a: Args) -> Any:
    a.ensure(T_ARR)
    return Arr(a.pos(0))


def a_first(a: Args) -> Any:
    a.ensure(T_ARR)
    v = a.pos(0)
    return v[0] if v else Undefined()


def a_last(a: Args) -> Any:
    a.ensure(T_ARR)
    v = a.pos(0)
    return v[-1] if v else Undefined()


def a_length(a: Args) -> Any:
    a.ensure(T_ARR)
    return len(a.pos(0))


def a_slice(a: Args) -> Any:
    a.ensure_count(1, 4)
    a.ensure(T_ARR, T_INT, T_INT, T_INT, required=2)
    start, stop, step = _slice_args(a)
    v = a.pos(0)
    return _same_kind(v, _slice(v, start, stop, step))


def a_join(a: Args) -> Any:
    a.ensure_count(1, 3)
    v = a.pos(0)
    if not is_arr(v):
        raise RaisedError("join() first argument must be an array")
    delim = a.kwarg_or_pos("d", 1)
    attribute = a.kwarg_or_pos("attribute", 2)
    d = "" if isinstance(delim, Undefined) else str(as_string(delim))
    out = []
    size = 0
    for x in v:
        a.rt.poll()
        if not isinstance(attribute, Undefined):
            x = _get_attribute(x, attribute, Undefined())
        if not (isinstance(x, str) or is_num(x)):
            raise RaisedError("join() can only join arrays of strings or numerics")
        s = str(as_string(x))
        out.append(s)
        size += len(s) + len(d)
        if size > a.rt.limits.max_value:
            raise RenderError("too-large", "join() would build a string too large for a chat template")
    return d.join(out)


def a_string(a: Args) -> Any:
    a.ensure(T_ARR)
    if a.rt.stats:
        mark_used(a.pos(0), True)
    return a.rt.checked(as_string(a.pos(0)))


def a_map(a: Args) -> Any:
    a.ensure_count(2)
    v = a.pos(0)
    if not is_arr(v):
        raise RaisedError("map: first argument must be an array")
    if not isinstance(a.items[1], KwArg):
        raise NotImplementedInLlamaCpp("map: filter-mapping not implemented")
    attribute = a.kwarg_or_pos("attribute", 1)
    default = a.kwarg("default", Undefined())
    return _same_kind(v, [_get_attribute(x, attribute, default) for x in v])


def a_append(a: Args) -> Any:
    a.ensure_count(2)
    v = a.pos(0)
    if not is_arr(v):
        raise RaisedError("append: first argument must be an array")
    if isinstance(v, tuple):
        raise JinjaError("Attempting to modify immutable type")
    v.append(a.pos(1))
    a.rt.check_size(v)
    return v


def a_pop(a: Args) -> Any:
    a.ensure_count(1, 2)
    a.ensure(T_ARR, T_INT, required=1)
    v = a.pos(0)
    if isinstance(v, tuple):
        raise JinjaError("Attempting to modify immutable type")
    i = a.pos(1) if a.count() == 2 else -1
    j = i + len(v) if i < 0 else i
    if j < 0 or j >= len(v):
        raise JinjaError(f"Index {j} out of bounds for array of size {len(v)}")
    return v.pop(j)


def _sort_key_cmp(attribute: Any, op: str) -> Callable[[Any, Any], int]:
    def cmp(x: Any, y: Any) -> int:
        if not isinstance(attribute, Undefined):
            x, y = _get_attribute(x, attribute, Undefined()), _get_attribute(y, attribute, Undefined())
        if compare(x, y, op):
            return -1
        if compare(y, x, op):
            return 1
        return 0

    return cmp


def a_sort(a: Args) -> Any:
    import functools

    a.ensure_count(1, 4)
    v = a.pos(0)
    if not is_arr(v):
        raise RaisedError("sort: first argument must be an array")
    reverse = as_bool(a.kwarg_or_pos("reverse", 1))
    attribute = a.kwarg_or_pos("attribute", 3)
    items = sorted(v, key=functools.cmp_to_key(_sort_key_cmp(attribute, "gt" if reverse else "lt")))
    return _same_kind(v, items)


def a_reverse(a: Args) -> Any:
    a.ensure(T_ARR)
    v = a.pos(0)
    return _same_kind(v, list(reversed(v)))


def _minmax(op: str) -> Callable[[Args], Any]:
    def run(a: Args) -> Any:
        a.ensure_count(1, 4)
        a.ensure(T_ARR)
        attribute = a.kwarg_or_pos("attribute", 2)
        v = a.pos(0)
        if not v:
            return Undefined()
        best = v[0]
        for x in v:
            xv, bv = x, best
            if not isinstance(attribute, Undefined):
                xv, bv = _get_attribute(x, attribute, Undefined()), _get_attribute(best, attribute, Undefined())
            if compare(xv, bv, op):
                best = x
        return best

    return run


ARRAY_BUILTINS: dict[str, Callable[[Args], Any]] = {
    "default": f_default,
    "list": a_list,
    "first": a_first,
    "last": a_last,
    "length": a_length,
    "slice": a_slice,
    "selectattr": _selectattr(False),
    "select": _selectattr(False),
    "rejectattr": _selectattr(True),
    "reject": _selectattr(True),
    "join": a_join,
    "string": a_string,
    "tojson": f_tojson,
    "map": a_map,
    "append": a_append,
    "pop": a_pop,
    "sort": a_sort,
    "reverse": a_reverse,
    "min": _minmax("lt"),
    "max": _minmax("gt"),
    "unique": _not_impl("Array unique builtin not implemented"),
}


def o_get(a: Args) -> Any:
    a.ensure_count(2, 3)
    if not isinstance(a.pos(0), dict):
        raise RaisedError("get: first argument must be an object")
    if not isinstance(a.pos(1), str):
        raise RaisedError("get: second argument must be a string (key)")
    default = a.pos(2) if a.count() == 3 else None
    return a.pos(0).get(a.pos(1), default)


def o_keys(a: Args) -> Any:
    a.ensure(T_OBJ)
    return Arr(a.pos(0).keys())


def o_values(a: Args) -> Any:
    a.ensure(T_OBJ)
    return Arr(a.pos(0).values())


def o_items(a: Args) -> Any:
    a.ensure(T_OBJ)
    return Arr((k, x) for k, x in a.pos(0).items())


def o_string(a: Args) -> Any:
    a.ensure(T_OBJ)
    if a.rt.stats:
        mark_used(a.pos(0), True)
    return a.rt.checked(as_string(a.pos(0)))


def o_length(a: Args) -> Any:
    a.ensure(T_OBJ)
    return len(a.pos(0))


def o_dictsort(a: Args) -> Any:
    import functools

    v = a.pos(0)
    by = a.kwarg_or_pos("by", 2)
    reverse = as_bool(a.kwarg_or_pos("reverse", 3))
    by_value = isinstance(by, str) and by == "value"
    if not isinstance(v, dict):
        raise JinjaError(f"{type_name(v)} is not an object value")
    op = "gt" if reverse else "lt"

    def cmp(p: Any, q: Any) -> int:
        x, y = (p[1], q[1]) if by_value else (p[0], q[0])
        return -1 if compare(x, y, op) else (1 if compare(y, x, op) else 0)

    return Obj(sorted(v.items(), key=functools.cmp_to_key(cmp)))


OBJECT_BUILTINS: dict[str, Callable[[Args], Any]] = {
    "get": o_get,
    "keys": o_keys,
    "values": o_values,
    "items": o_items,
    "tojson": f_tojson,
    "string": o_string,
    "length": o_length,
    "dictsort": o_dictsort,
    "join": _not_impl("object join not implemented"),
}


def _empty(kind: Callable[[], Any]) -> Callable[[Args], Any]:
    return lambda a: kind()


NONE_BUILTINS: dict[str, Callable[[Args], Any]] = {
    "default": f_default,
    "tojson": f_tojson,
    "string": lambda a: "None",
    "safe": lambda a: "None",
    **{k: _empty(Arr) for k in ("items", "map", "reject", "rejectattr", "select", "selectattr", "unique")},
}

UNDEFINED_BUILTINS: dict[str, Callable[[Args], Any]] = {
    "default": f_default,
    **{k: _empty(str) for k in ("capitalize", "join", "lower", "replace", "safe", "string", "strip", "title")},
    **{k: _empty(str) for k in ("truncate", "upper")},
    **{k: _empty(Undefined) for k in ("first", "last", "max", "min")},
    **{k: _empty(Arr) for k in ("items", "list", "map", "reject", "rejectattr", "reverse", "select")},
    **{k: _empty(Arr) for k in ("selectattr", "sort", "unique")},
    **{k: _empty(int) for k in ("length", "sum", "wordcount")},
}

EMPTY: dict[str, Callable[[Args], Any]] = {}


def builtins_of(v: Any) -> dict[str, Callable[[Args], Any]]:
    if v is None:
        return NONE_BUILTINS
    if isinstance(v, Undefined):
        return UNDEFINED_BUILTINS
    if isinstance(v, bool):
        return BOOL_BUILTINS
    if isinstance(v, int):
        return INT_BUILTINS
    if isinstance(v, float):
        return FLOAT_BUILTINS
    if isinstance(v, str):
        return STRING_BUILTINS
    if isinstance(v, (list, tuple)):
        return ARRAY_BUILTINS
    if isinstance(v, dict):
        return OBJECT_BUILTINS if getattr(v, "builtins", True) else EMPTY
    raise JinjaError(f"{type_name(v)} has no builtins")


FILTER_ALIASES = {"count": "length", "d": "default", "e": "escape", "trim": "strip"}
COERCED_TO_STRING = {"capitalize", "lower", "replace", "strip", "title", "upper", "wordcount"}

# llama.cpp's own names of what it has no rule for; jinja2 parses them
UNSUPPORTED_NODES = {
    "With": "{% with %}",
    "Include": "{% include %}",
    "Import": "{% import %}",
    "FromImport": "{% from ... import %}",
    "Extends": "{% extends %}",
    "Block": "{% block %}",
    "ExprStmt": "{% do %}",
    "Pow": "the ** operator",
    "FloorDiv": "the // operator",
    "OverlayScope": "{% overlay %}",
    "EvalContextModifier": "{% autoescape %}",
    "ScopedEvalContextModifier": "{% autoescape %}",
}


# -- the runtime ----------------------------------------------------------------------------------

_NO_THIS = object()


class Ctx:
    """A scope: llama.cpp copies its parent's variables on entering a loop, a macro or a call."""

    __slots__ = ("vars",)

    def __init__(self, parent: Ctx | None = None) -> None:
        if parent is None:
            self.vars: dict[str, Any] = {"true": True, "True": True, "false": False, "False": False}
            self.vars.update({"none": None, "None": None})
        else:
            self.vars = dict(parent.vars)


class Program:
    """A parsed template: jinja2's syntax tree, checked against what llama.cpp's parser accepts."""

    __slots__ = ("source", "tree")

    def __init__(self, source: str, tree: Any) -> None:
        self.source = source
        self.tree = tree


class Output:
    """Rendered text as (text, is_input) parts, bounded in size."""

    __slots__ = ("parts", "size", "limit")

    def __init__(self, limit: int) -> None:
        self.parts: list[tuple[str, bool]] = []
        self.size = 0
        self.limit = limit

    def emit(self, s: str) -> None:
        self.size += len(s)
        if self.size > self.limit:
            raise RenderError("too-large", f"output exceeds {self.limit:,} characters")
        if isinstance(s, JStr):
            self.parts.extend(s.parts)
        elif s:
            self.parts.append((s, False))

    def value(self) -> str:
        text = "".join(t for t, _ in self.parts)
        return make_str(text, tuple(self.parts))


class Runtime:
    """One execution of a program (llama.cpp's jinja::runtime with its context)."""

    def __init__(self, limits: Limits, deadline: float, stats: bool = False, now: float | None = None) -> None:
        self.limits = limits
        self.deadline = deadline
        self.stats = stats
        self.now = time.time() if now is None else now  # strftime_now's clock
        self.steps = 0
        self.line: int | None = None
        self.depth = 0
        self._stmt = self._statement_table()
        self._expr = self._expression_table()

    # bounds
    def tick(self, node: Any) -> None:
        self.line = node.lineno
        self.poll()

    def poll(self) -> None:
        """Count a step; every 64 steps, check the deadline."""
        self.steps += 1
        if self.steps & 63 == 0 and time.monotonic() > self.deadline:
            raise RenderError("timeout", "rendering took too long (is there a runaway loop?)", self.line)

    def check_size(self, v: Any) -> None:
        if len(v) > self.limits.max_value:
            raise RenderError(
                "too-large", f"the template built a value of {len(v):,} items (limit {self.limits.max_value:,})"
            )

    def checked(self, s: Any) -> Any:
        self.check_size(s)
        return s

    # statements
    def run(self, nodes: list[Any], ctx: Ctx, out: Output) -> None:
        for node in nodes:
            self.tick(node)
            fn = self._stmt.get(type(node).__name__)
            if fn is None:
                raise JinjaError(f"cannot exec {type(node).__name__}")
            fn(node, ctx, out)

    def _statement_table(self) -> dict[str, Callable[[Any, Ctx, Output], None]]:
        return {
            "Output": self.s_output,
            "If": self.s_if,
            "For": self.s_for,
            "Assign": self.s_assign,
            "AssignBlock": self.s_assign_block,
            "Macro": self.s_macro,
            "CallBlock": self.s_call_block,
            "FilterBlock": self.s_filter_block,
            "Scope": lambda n, ctx, out: self.run(n.body, ctx, out),  # {% generation %}: no scope
            "Break": self.s_break,
            "Continue": self.s_continue,
        }

    def s_break(self, node: Any, ctx: Ctx, out: Output) -> None:
        raise _Break

    def s_continue(self, node: Any, ctx: Ctx, out: Output) -> None:
        raise _Continue

    def gather(self, v: Any, out: Output) -> None:
        if isinstance(v, str):
            out.emit(v)
        elif isinstance(v, (bool, int, float)):
            out.emit(as_string(v))
        elif isinstance(v, (list, tuple)):
            for x in v:
                self.gather(x, out)
        # none, undefined, objects and functions print nothing

    def s_output(self, node: Any, ctx: Ctx, out: Output) -> None:
        for child in node.nodes:
            if type(child).__name__ == "TemplateData":
                out.emit(child.data)
            else:
                self.gather(self.eval(child, ctx), out)

    def s_if(self, node: Any, ctx: Ctx, out: Output) -> None:
        if as_bool(self.eval(node.test, ctx)):
            self.run(node.body, ctx, out)
            return
        for branch in node.elif_:
            self.tick(branch)
            if as_bool(self.eval(branch.test, ctx)):
                self.run(branch.body, ctx, out)
                return
        self.run(node.else_, ctx, out)

    def _binder(self, target: Any, is_obj: bool) -> Callable[[Ctx, Any], None]:
        kind = type(target).__name__
        if kind == "Name":
            name = target.name
            return lambda c, item: c.vars.__setitem__(name, item)
        if kind == "Tuple" and all(type(t).__name__ == "Name" for t in target.items):
            names = [t.name for t in target.items]

            def bind(c: Ctx, item: Any) -> None:
                for n, x in zip(names, item):
                    c.vars[n] = x

            return bind
        raise JinjaError(f"Invalid loop variable(s): {kind}")

    def s_for(self, node: Any, ctx: Ctx, out: Output) -> None:
        scope = Ctx(ctx)
        it = self.eval(node.iter, scope)
        if self.stats:
            mark_used(it)
            add_op(it, "array_access")
        if isinstance(it, Undefined):
            it = Arr()
        if not isinstance(it, (list, tuple, dict)):
            raise JinjaError(f"Expected iterable or object type in for loop: got {type_name(it)}")
        is_obj = isinstance(it, dict)
        if is_obj:
            items: list[Any] = list(it.items())  # type: ignore[union-attr]
            if self.stats:
                add_op(it, "object_access")
        else:
            items = list(it)
        bind = self._binder(node.target, is_obj)
        is_tuple = type(node.target).__name__ == "Tuple"
        filtered = []
        for item in items:
            self.poll()
            current = item[0] if (is_obj and not is_tuple) else item
            if is_tuple:
                if not isinstance(item, (list, tuple)):
                    raise JinjaError(f"Cannot unpack non-iterable type: {type_name(item)}")
                if len(item) != len(node.target.items):
                    raise JinjaError(f"Too {'few' if len(node.target.items) > len(item) else 'many'} items to unpack")
            if node.test is not None:
                loop_scope = Ctx(scope)
                bind(loop_scope, current)
                if not as_bool(self.eval(node.test, loop_scope)):
                    continue
            filtered.append(current)
        no_iteration = True
        n = len(filtered)
        for i, current in enumerate(filtered):
            self.tick(node)
            loop = Obj(builtins=False)
            loop.update(
                index=i + 1,
                index0=i,
                revindex=n - i,
                revindex0=n - i - 1,
                first=i == 0,
                last=i == n - 1,
                length=n,
                previtem=filtered[i - 1] if i > 0 else Undefined("previtem"),
                nextitem=filtered[i + 1] if i < n - 1 else Undefined("nextitem"),
            )
            scope.vars["loop"] = loop
            bind(scope, current)
            try:
                self.run(node.body, scope, out)
            except _Continue:
                continue
            except _Break:
                break
            no_iteration = False
        if no_iteration:
            self.run(node.else_, ctx, out)

    def _assign(self, target: Any, value: Any, ctx: Ctx) -> None:
        kind = type(target).__name__
        if kind == "Name":
            ctx.vars[target.name] = value
        elif kind == "Tuple":
            if not isinstance(value, (list, tuple)):
                raise JinjaError(f"Cannot unpack non-iterable type in set: {type_name(value)}")
            if len(value) != len(target.items):
                raise JinjaError(f"Too {'few' if len(target.items) > len(value) else 'many'} items to unpack in set")
            for t, x in zip(target.items, value):
                if type(t).__name__ != "Name":
                    raise JinjaError(f"Cannot unpack to non-identifier in set: {type(t).__name__}")
                ctx.vars[t.name] = x
        elif kind == "NSRef":
            obj = self.identifier(target.name, ctx)
            if not isinstance(obj, dict):
                raise JinjaError("Cannot assign to member of non-object")
            obj[target.attr] = value
            self.check_size(obj)
        else:
            raise JinjaError(f"Invalid LHS inside assignment expression: {kind}")

    def s_assign(self, node: Any, ctx: Ctx, out: Output) -> None:
        self._assign(node.target, self.eval(node.node, ctx), ctx)

    def s_assign_block(self, node: Any, ctx: Ctx, out: Output) -> None:
        body = Output(self.limits.max_output)
        self.run(node.body, ctx, body)
        self._assign(node.target, body.value(), ctx)

    def _params(self, node: Any) -> list[tuple[str, Any]]:
        names = [a.name for a in node.args]
        defaults = [None] * (len(names) - len(node.defaults)) + list(node.defaults)
        return list(zip(names, defaults))

    def _bind(self, name: str, params: list[tuple[str, Any]], a: Args, c: Ctx) -> None:
        n = a.count()
        for i, (pname, default) in enumerate(params):
            if i < n:
                c.vars[pname] = a.kwarg_or_pos(pname, i)
            elif default is not None:
                c.vars[pname] = self.eval(default, a.ctx if a.ctx is not None else c)
            else:
                raise JinjaError(f"Not enough arguments provided to '{name}'")

    def _body_func(self, name: str, params: list[tuple[str, Any]], body: list[Any], base: Ctx | None) -> Func:
        def call(a: Args) -> Any:
            c = Ctx(base if base is not None else a.ctx)  # a macro sees its caller's variables
            self._bind(name, params, a, c)
            self.depth += 1
            try:
                if self.depth > MAX_DEPTH:
                    raise RenderError("too-large", "the template recursed too deeply", self.line)
                out = Output(self.limits.max_output)
                self.run(body, c, out)
                return out.value()
            finally:
                self.depth -= 1

        return Func(name, call)

    def s_macro(self, node: Any, ctx: Ctx, out: Output) -> None:
        ctx.vars[node.name] = self._body_func(node.name, self._params(node), node.body, None)

    def s_call_block(self, node: Any, ctx: Ctx, out: Output) -> None:
        call = node.call
        callee = self.eval(call.node, ctx)
        if not isinstance(callee, Func):
            raise JinjaError(f"Callee is not a function: got {type_name(callee)}")
        caller = self._body_func("caller", self._params(node), node.body, Ctx(ctx))
        call_ctx = Ctx(ctx)
        call_ctx.vars["caller"] = caller
        items = self._call_args(call, ctx)
        self.gather(self.invoke(callee, items, call_ctx), out)

    def s_filter_block(self, node: Any, ctx: Ctx, out: Output) -> None:
        body = Output(self.limits.max_output)
        self.run(node.body, ctx, body)
        self.gather(self.apply_filter(node.filter, body.value(), ctx), out)

    # expressions
    def eval(self, node: Any, ctx: Ctx) -> Any:
        self.tick(node)
        fn = self._expr.get(type(node).__name__)
        if fn is None:
            raise JinjaError(f"cannot exec {type(node).__name__}")
        return fn(node, ctx)

    def _expression_table(self) -> dict[str, Callable[[Any, Ctx], Any]]:
        return {
            "Const": lambda n, ctx: n.value,
            "TemplateData": lambda n, ctx: n.data,
            "Name": lambda n, ctx: self.identifier(n.name, ctx),
            "List": lambda n, ctx: self.checked(Arr(self.eval(x, ctx) for x in n.items)),
            "Tuple": lambda n, ctx: tuple(self.eval(x, ctx) for x in n.items),
            "Dict": self.e_dict,
            "Getattr": lambda n, ctx: self.member(self.eval(n.node, ctx), n.attr, False, ctx),
            "Getitem": self.e_getitem,
            "Call": self.e_call,
            "Filter": lambda n, ctx: self.apply_filter(n, self.eval(n.node, ctx), ctx),
            "Test": self.e_test,
            "CondExpr": self.e_cond,
            "And": lambda n, ctx: self._and(n, ctx),
            "Or": lambda n, ctx: self._or(n, ctx),
            "Not": lambda n, ctx: not as_bool(self.eval(n.node, ctx)),
            "Neg": self.e_neg,
            "Pos": self.e_pos,
            "Add": lambda n, ctx: self.binop("+", self.eval(n.left, ctx), self.eval(n.right, ctx)),
            "Sub": lambda n, ctx: self.binop("-", self.eval(n.left, ctx), self.eval(n.right, ctx)),
            "Mul": lambda n, ctx: self.binop("*", self.eval(n.left, ctx), self.eval(n.right, ctx)),
            "Div": lambda n, ctx: self.binop("/", self.eval(n.left, ctx), self.eval(n.right, ctx)),
            "Mod": lambda n, ctx: self.binop("%", self.eval(n.left, ctx), self.eval(n.right, ctx)),
            "Concat": self.e_concat,
            "Compare": self.e_compare,
        }

    def _and(self, n: Any, ctx: Ctx) -> Any:
        left = self.eval(n.left, ctx)
        return self.eval(n.right, ctx) if as_bool(left) else left

    def _or(self, n: Any, ctx: Ctx) -> Any:
        left = self.eval(n.left, ctx)
        return left if as_bool(left) else self.eval(n.right, ctx)

    def identifier(self, name: str, ctx: Ctx) -> Any:
        v = ctx.vars.get(name, _NO_THIS)
        if v is not _NO_THIS and not isinstance(v, Undefined):
            if self.stats:
                mark_used(v)
            return v
        if name in GLOBALS:
            return Func(name, GLOBALS[name])
        return Undefined(name)

    def e_dict(self, node: Any, ctx: Ctx) -> Any:
        obj = Obj()
        for pair in node.items:
            k = self.eval(pair.key, ctx)
            v = self.eval(pair.value, ctx)
            _check_key(k)
            obj[k] = v
        return self.checked(obj)

    def e_cond(self, node: Any, ctx: Ctx) -> Any:
        if as_bool(self.eval(node.test, ctx)):
            return self.eval(node.expr1, ctx)
        if node.expr2 is None:
            return Undefined()
        return self.eval(node.expr2, ctx)

    def e_neg(self, node: Any, ctx: Ctx) -> Any:
        v = self.eval(node.node, ctx)
        if is_num(v):
            return -v
        raise JinjaError("Unary - operator requires numeric operand")

    def e_pos(self, node: Any, ctx: Ctx) -> Any:
        v = self.eval(node.node, ctx)
        if is_num(v):
            return v
        raise JinjaError("Unary + operator requires numeric operand")

    def e_concat(self, node: Any, ctx: Ctx) -> Any:
        left = self.eval(node.nodes[0], ctx)
        for child in node.nodes[1:]:
            left = self.binop("~", left, self.eval(child, ctx))
        return left

    _CMP = {"eq": "==", "ne": "!=", "gt": ">", "gteq": ">=", "lt": "<", "lteq": "<=", "in": "in", "notin": "not in"}

    def e_compare(self, node: Any, ctx: Ctx) -> Any:
        left = self.eval(node.expr, ctx)
        for op in node.ops:
            left = self.binop(self._CMP[op.op], left, self.eval(op.expr, ctx))
        return left

    def e_test(self, node: Any, ctx: Ctx) -> Any:
        v = self.eval(node.node, ctx)
        items = [v, *self._call_args(node, ctx)]
        fn = TESTS.get(node.name)
        if fn is None:
            raise JinjaError(f"Unknown test '{node.name}'")
        if self.stats:
            mark_used(v)
            add_op(v, "test_is_" + node.name)
        return fn(Args(self, items, "test_is_" + node.name, ctx))

    def _call_args(self, node: Any, ctx: Ctx) -> list[Any]:
        items = [self.eval(x, ctx) for x in node.args]
        items += [KwArg(k.key, self.eval(k.value, ctx)) for k in node.kwargs]
        if node.dyn_args is not None or node.dyn_kwargs is not None:
            raise JinjaError("cannot exec SpreadExpression")
        return items

    def e_call(self, node: Any, ctx: Ctx) -> Any:
        items = self._call_args(node, ctx)
        callee = self.eval(node.node, ctx)
        if not isinstance(callee, Func):
            raise JinjaError(f"Callee is not a function: got {type_name(callee)}")
        return self.invoke(callee, items, ctx)

    def invoke(self, f: Func, items: list[Any], ctx: Ctx) -> Any:
        if isinstance(f.this, _This):
            items = [f.this.value, *items]
        return f.fn(Args(self, items, f.name, ctx))

    def try_builtin(self, name: str, obj: Any, undef_on_missing: bool) -> Any:
        if self.stats:
            mark_used(obj)
            add_op(obj, name)
        fn = builtins_of(obj).get(name)
        if fn is not None:
            return _bound(name, fn, obj)
        if undef_on_missing:
            return Undefined(name)
        raise JinjaError(f"Unknown (built-in) filter '{name}' for type {type_name(obj)}")

    def apply_filter(self, node: Any, value: Any, ctx: Ctx) -> Any:
        name = FILTER_ALIASES.get(node.name, node.name)
        items = self._call_args(node, ctx)
        if not isinstance(value, (Undefined, str)) and name in COERCED_TO_STRING:
            value = as_string(value)
        f = self.try_builtin(name, value, False)
        return self.invoke(f, items, ctx)

    def e_getitem(self, node: Any, ctx: Ctx) -> Any:
        obj = self.eval(node.node, ctx)
        arg = node.arg
        if type(arg).__name__ == "Slice":
            size = len(_bytes(obj)) if isinstance(obj, str) else (len(obj) if is_arr(obj) else 0)
            step = self.eval(arg.step, ctx) if arg.step is not None else 1
            neg = as_int(step) < 0
            start = self.eval(arg.start, ctx) if arg.start is not None else (size - 1 if neg else 0)
            stop = self.eval(arg.stop, ctx) if arg.stop is not None else (-1 if neg else size)
            f = self.try_builtin("slice", obj, False)
            return self.invoke(f, [start, stop, step], ctx)
        return self.member(obj, self.eval(arg, ctx), True, ctx)

    def member(self, obj: Any, prop: Any, computed: bool, ctx: Ctx) -> Any:
        if not computed:
            v = self.try_builtin(prop, obj, True)
            if not isinstance(v, Undefined):
                return v
        val: Any = Undefined("object_property")
        if isinstance(prop, Undefined):
            return val
        if not hashable(prop):
            raise JinjaError(f"Type: {type_name(prop)} is not allowed as object key")
        if isinstance(obj, Undefined):
            return val
        if isinstance(obj, dict):
            if not immutable(prop):
                raise JinjaError(f"Object key of unhashable type: {type_name(prop)}")
            found = obj.get(prop, _NO_THIS)
            if found is _NO_THIS:
                val = self.try_builtin(as_string(prop), obj, True)
            else:
                val = found
        elif isinstance(obj, (list, tuple, str)):
            if isinstance(prop, (bool, int)) and not isinstance(prop, float):
                i = int(prop)
                if isinstance(obj, str):
                    b = _bytes(obj)
                    if 0 <= i < len(b):
                        val = _unbytes(b[i : i + 1])
                else:
                    if i < 0:
                        i += len(obj)
                    if 0 <= i < len(obj):
                        val = obj[i]
            elif isinstance(prop, str):
                val = self.try_builtin(prop, obj, True)
        else:
            if not isinstance(prop, str):
                raise JinjaError(f"Cannot access property with non-string: got {type_name(prop)}")
            val = self.try_builtin(prop, obj, True)
        if self.stats:
            mark_used(val)
            mark_used(obj)
            mark_used(prop)
            if isinstance(obj, dict) or isinstance(prop, (str, float, list, tuple)) or prop is None:
                add_op(obj, "object_access")
            elif isinstance(prop, (bool, int)):
                add_op(obj, "array_access")
        return val

    def binop(self, op: str, left: Any, right: Any) -> Any:
        if op == "==":
            return equivalent(left, right)
        if op == "!=":
            return not equivalent(left, right)
        l_null = left is None or isinstance(left, Undefined)
        r_null = right is None or isinstance(right, Undefined)

        def null_concat() -> Any:
            if (l_null and isinstance(right, str)) or (r_null and isinstance(left, str)):
                return concat("" if l_null else left, "" if r_null else right)
            return None

        if isinstance(left, Undefined) or isinstance(right, Undefined):
            if isinstance(right, Undefined) and op in ("in", "not in"):
                return op == "not in"
            if op in ("+", "~"):
                res = null_concat()
                if res is not None:
                    return res
            raise JinjaError(f"Cannot perform operation {op} on undefined values")
        if left is None or right is None:
            if right is not None and op in ("in", "not in"):
                m = test_in(left, right)
                return m if op == "in" else not m
            if op in ("+", "~"):
                res = null_concat()
                if res is not None:
                    return res
            raise JinjaError("Cannot perform operation on null values")
        if is_num(left) and is_num(right):
            a, b = float(left), float(right)
            is_float = isinstance(left, float) or isinstance(right, float)
            try:
                if op in ("+", "-", "*"):
                    r = a + b if op == "+" else (a - b if op == "-" else a * b)
                    return r if is_float else int(r)
                if op == "/":
                    return a / b if b else (math.copysign(math.inf, a) * math.copysign(1, b) if a else math.nan)
                if op == "%":
                    r = math.fmod(a, b)
                    return r if is_float else int(r)
            except (ValueError, OverflowError, ZeroDivisionError) as e:
                raise JinjaError(f"arithmetic error: {e}") from None
            if op == "<":
                return a < b
            if op == ">":
                return a > b
            if op == ">=":
                return a >= b
            if op == "<=":
                return a <= b
        if is_arr(left) and is_arr(right):
            if op == "+":
                return self.checked(Arr([*left, *right]))
        elif is_arr(right):
            m = test_in(left, right)
            if op == "in":
                return m
            if op == "not in":
                return not m
        if (isinstance(left, str) or isinstance(right, str)) and op in ("~", "+"):
            return self.checked(concat(as_string(left), as_string(right)))
        if op == "*" and ((isinstance(left, str) and is_int(right)) or (is_int(left) and isinstance(right, str))):
            s, n = (left, right) if isinstance(left, str) else (right, left)
            if n <= 0:
                return ""
            if len(s) * n > self.limits.max_value:
                raise RenderError("too-large", f"a value of {len(s) * n:,} items is too large for a chat template")
            return make_str(str(s) * n, parts_of(s) * n)
        if isinstance(left, str) and isinstance(right, str) and op in ("in", "not in"):
            m = test_in(left, right)
            return m if op == "in" else not m
        if isinstance(right, dict) and op in ("in", "not in"):
            m = test_in(left, right)
            return m if op == "in" else not m
        raise JinjaError(f'Unknown operator "{op}" between {type_name(left)} and {type_name(right)}')


def _bound(name: str, fn: Callable[[Args], Any], this: Any) -> Func:
    return Func(name, fn, _This(this))


class _This:
    """The bound ``this`` of a built-in (it may be none)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class TemplateRaised(RaisedError):
    """raise_exception("...") called by the template itself."""


# -- parsing --------------------------------------------------------------------------------------

_ENV: Any = None


def _parser() -> Any:
    global _ENV
    if _ENV is None:
        import jinja2
        import jinja2.ext

        class GenerationTag(jinja2.ext.Extension):
            # llama.cpp ignores {% generation %} and {% endgeneration %}: the body stays in place
            tags = {"generation"}

            def parse(self, parser: Any) -> Any:
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
                return jinja2.nodes.Scope(body).set_lineno(lineno)

        _ENV = jinja2.Environment(
            trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
        )
    return _ENV


_ESCAPES = set("ntrbfv\\'\"")


def _check_supported(env: Any, source: str, tree: Any) -> None:
    """Refuse, as a syntax error, what jinja2 parses but llama.cpp's lexer or parser rejects."""
    import jinja2.nodes as n

    for node in tree.find_all(n.Node):
        kind = type(node).__name__
        what = UNSUPPORTED_NODES.get(kind)
        if kind == "For" and node.recursive:
            what = "recursive loops"
        elif kind == "AssignBlock" and node.filter is not None:
            what = "a filter on {% set %} blocks"
        elif kind in ("Call", "Filter", "Test") and node.dyn_kwargs is not None:
            what = "**kwargs in calls"
        if what:
            raise RenderError("syntax", f"llama.cpp's template parser has no rule for {what}", node.lineno)
    for lineno, token, value in env.lex(source):
        if token == "string":
            body = value[1:-1]
            i = body.find("\\")
            while i >= 0:
                c = body[i + 1 : i + 2]
                if c not in _ESCAPES or not c:
                    raise RenderError(
                        "syntax",
                        f"llama.cpp's lexer has no escape \\{c} (only \\n \\t \\r \\b \\f \\v \\\\ \\' \\\")",
                        lineno,
                    )
                i = body.find("\\", i + 2)


_CACHE: dict[str, Program] = {}


def compile_program(source: str) -> Program:
    """Parse ``source`` as llama.cpp would accept it (RenderError ``syntax`` with the line if not)."""
    prog = _CACHE.get(source)
    if prog is not None:
        return prog
    import jinja2

    env = _parser()
    try:
        tree = env.parse(source)
        _check_supported(env, source, tree)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError("syntax", f"syntax error: {e.message}", e.lineno) from None
    except RecursionError:
        raise RenderError("too-large", "the template is nested too deeply") from None
    prog = Program(source, tree)
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[source] = prog
    return prog


# -- running --------------------------------------------------------------------------------------


def execute(
    prog: Program,
    values: dict[str, Any],
    *,
    limits: Limits = LIMITS,
    stats: bool = False,
    now: float | None = None,
) -> Output:
    """Run ``prog`` with context variables ``values`` (already values: see :func:`from_json`).
    ``now``: the time strftime_now() formats (default: the current time). Returns the output
    parts; raises RenderError."""
    rt = Runtime(limits, budget_deadline(limits.timeout), stats, now)
    ctx = Ctx()
    ctx.vars.update(values)
    out = Output(limits.max_output)
    try:
        rt.run(prog.tree.body, ctx, out)
    except RenderError as e:
        if e.kind == "timeout":
            note_timeout()
        if e.line is None:
            e.line = rt.line
        raise
    except TemplateRaised as e:
        msg = str(e).removeprefix("Jinja Exception: ")
        raise RenderError("exception", f"the template raised: {msg}", rt.line) from None
    except NotImplementedInLlamaCpp as e:
        raise RenderError("unsupported", f"llama.cpp does not implement this: {e}", rt.line) from None
    except JinjaError as e:
        raise RenderError("error", str(e), rt.line) from None
    except (_Break, _Continue):
        raise RenderError("error", "break or continue outside a loop", rt.line) from None
    except RecursionError:
        raise RenderError("too-large", "the template recursed too deeply", rt.line) from None
    except MemoryError:
        raise RenderError("too-large", "the template ran out of memory", rt.line) from None
    except Exception as e:  # defensive: a template must never produce a traceback
        raise RenderError("error", f"{type(e).__name__}: {e}", rt.line) from None
    return out


def run_json(
    source: str,
    context: dict[str, Any],
    *,
    limits: Limits = LIMITS,
    mark_input: bool = True,
) -> Output:
    """Render ``source`` with JSON-like ``context`` exactly as given (llama.cpp's
    ``global_from_json``, strings of the context marked as input)."""
    prog = compile_program(source)
    values = {k: from_json(v, mark_input) for k, v in context.items()}
    return execute(prog, values, limits=limits)
