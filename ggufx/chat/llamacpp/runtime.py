"""llama.cpp's Jinja runtime (``common/jinja/runtime.h``, ``runtime.cpp``): statements and
expressions executed over a parsed template, with llama.cpp's scoping (a loop has one scope for
all its iterations, macros see their caller's variables) and its operators (``+``/``~`` of a
string and none/undefined is the string, a loop over undefined runs zero times but a loop over
none is an error, ``{{ none }}`` prints nothing, string ``<`` is an error, ``and``/``or`` return
operands). Rendering is bounded: wall time (checked as the template runs), output size, the size
of any string or list the template builds, and call depth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, cast

from ggufx.chat.llamacpp.builtins import (
    COERCED_TO_STRING,
    FILTER_ALIASES,
    GLOBALS,
    TESTS,
    builtins_of,
    test_in,
)
from ggufx.chat.llamacpp.value import (
    Args,
    Arr,
    Func,
    JStr,
    KwArg,
    Obj,
    Undefined,
    add_op,
    as_bool,
    as_int,
    as_string,
    check_key,
    concat,
    equivalent,
    from_bytes,
    hashable,
    immutable,
    is_arr,
    is_int,
    is_num,
    make_str,
    mark_used,
    parts_of,
    to_bytes,
    type_name,
)
from ggufx.chat.render import Limits
from ggufx.errors import JinjaError, LoopBreak, LoopContinue, RenderError

MAX_DEPTH = 64  # nested macro calls


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


def caller_scope(a: Args) -> Ctx | None:
    """The scope a call was made from: every Args with a scope is made by the runtime, with a Ctx."""
    return cast("Ctx | None", a.ctx)


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
        raise LoopBreak

    def s_continue(self, node: Any, ctx: Ctx, out: Output) -> None:
        raise LoopContinue

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
            except LoopContinue:
                continue
            except LoopBreak:
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
        caller = caller_scope(a)
        for i, (pname, default) in enumerate(params):
            if i < n:
                c.vars[pname] = a.kwarg_or_pos(pname, i)
            elif default is not None:
                c.vars[pname] = self.eval(default, caller if caller is not None else c)
            else:
                raise JinjaError(f"Not enough arguments provided to '{name}'")

    def _body_func(self, name: str, params: list[tuple[str, Any]], body: list[Any], base: Ctx | None) -> Func:
        def call(a: Args) -> Any:
            c = Ctx(base if base is not None else caller_scope(a))  # a macro sees its caller's variables
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
            check_key(k)
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
            size = len(to_bytes(obj)) if isinstance(obj, str) else (len(obj) if is_arr(obj) else 0)
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
                    b = to_bytes(obj)
                    if 0 <= i < len(b):
                        val = from_bytes(b[i : i + 1])
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
