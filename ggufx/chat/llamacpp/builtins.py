"""llama.cpp's built-ins (``common/jinja/value.cpp``): the global functions, the tests, and the
filters and methods each type has. Only what ``value.cpp`` gives a type exists: strings have no
``join`` or ``count``, objects no ``default``, ``x|default(y)`` replaces none too, ``split()``
splits on one space, ``replace`` with a count and ``tojson(sort_keys=true)`` are not implemented,
and lists are mutable (``list.append``, ``list.pop``). :func:`builtins_of` is the table the
runtime looks a filter or method up in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ggufx.chat.llamacpp.value import (
    T_ARR,
    T_BOOL,
    T_INT,
    T_OBJ,
    T_STR,
    Args,
    Arr,
    Func,
    KwArg,
    Obj,
    Undefined,
    all_input,
    as_bool,
    as_float,
    as_int,
    as_string,
    check_key,
    compare,
    ensure_ascii,
    equivalent,
    from_bytes,
    is_arr,
    is_int,
    is_num,
    like,
    make_str,
    map_parts,
    mark_used,
    parts_of,
    to_bytes,
    to_json,
    type_name,
)
from ggufx.errors import JinjaError, NotImplementedInLlamaCpp, RaisedError, RenderError, TemplateRaised


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
        out = ensure_ascii(out)
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
        check_key(attr)
        return v.get(attr, default) if not isinstance(attr, Undefined) else default
    return default


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
                check_key(x[0])
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
    if not out or len(to_bytes(out)) >= 100:
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
        check_key(needle)
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
    return len(to_bytes(a.pos(0)))


def s_startswith(a: Args) -> Any:
    a.ensure(T_STR, T_STR)
    return to_bytes(a.pos(0)).startswith(to_bytes(a.pos(1)))


def s_endswith(a: Args) -> Any:
    a.ensure(T_STR, T_STR)
    return to_bytes(a.pos(0)).endswith(to_bytes(a.pos(1)))


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
    return like(from_bytes(bytes(_slice(to_bytes(s), start, stop, step))), s)


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
