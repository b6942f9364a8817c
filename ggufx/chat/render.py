"""Render chat templates as Hugging Face transformers does, inside a bounded sandbox.

The environment mirrors ``transformers.utils.chat_template_utils``: jinja2's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the loop-controls
extension, a ``{% generation %}`` block, ``raise_exception``, ``strftime_now``, a ``tojson`` filter
that is plain ``json.dumps`` (no HTML escaping, ``ensure_ascii=False``), a ``dict`` and a
``namespace`` that refuse underscore names, and ``reasoning_content``/``thinking``/``reasoning``
aliased on messages.

Templates come from strangers, so on top of the sandbox (which already refuses ``__class__``,
``__globals__`` and friends) rendering is bounded: wall time (a line tracer on the template's code
checks a deadline), output size, and the size of strings and lists a template builds
(``*``, ``**``, ``+`` are intercepted, and namespace attributes and local variables are checked as
the template runs). Every failure is a :class:`RenderError` with the template line when known.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

DEFAULT_TIMEOUT = 1.0  # seconds, one render
DEFAULT_BUDGET = 5.0  # seconds, every render of one command together (see time_budget)
DEFAULT_MAX_OUTPUT = 1 << 20  # characters
MAX_VALUE = 4 << 20  # characters of a string (or items of a list) a template may build
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
ENGINES = ("transformers", "llama.cpp")  # transformers: this module; llama.cpp: ggufx.chat.llamacpp


from ggufx.errors import RenderError  # noqa: E402 - defined in ggufx.errors, re-exported here


@dataclass(frozen=True, slots=True)
class Limits:
    timeout: float = DEFAULT_TIMEOUT
    max_output: int = DEFAULT_MAX_OUTPUT
    max_value: int = MAX_VALUE


@dataclass(slots=True)
class Budget:
    """Wall time shared by every render of one command (``template info``/``lint``/``render``
    render a template many times). Once one render has run out of time the template is a runaway:
    the renders after it fail at once instead of each waiting for its own timeout."""

    deadline: float
    spent: bool = False


_BUDGET: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("ggufx_render_budget", default=None)


@contextlib.contextmanager
def time_budget(seconds: float = DEFAULT_BUDGET) -> Iterator[Budget]:
    """One budget for the renders inside the ``with`` block (an enclosing budget is shared)."""
    current = _BUDGET.get()
    if current is not None:
        yield current
        return
    budget = Budget(time.monotonic() + seconds)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def budget_deadline(timeout: float) -> float:
    """The deadline of one render: its own timeout, within the command's budget; a RenderError
    ``timeout`` at once when an earlier render of the command ran out of time."""
    deadline = time.monotonic() + timeout
    budget = _BUDGET.get()
    if budget is None:
        return deadline
    if budget.spent or time.monotonic() >= budget.deadline:
        budget.spent = True
        raise RenderError("timeout", "not rendered: an earlier render of this template ran out of time")
    return min(deadline, budget.deadline)


def note_timeout() -> None:
    """A render ran out of time: the rest of the command's renders are not attempted."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.spent = True


def _environment(limits: Limits, strict_undefined: bool = False):
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(jinja2.ext.Extension):
        # transformers marks assistant text with {% generation %}...{% endgeneration %}; rendering
        # outputs the body unchanged
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message: Any) -> None:
        raise jinja2.exceptions.TemplateError(str(message))

    def tojson(
        x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None, sort_keys: bool = False
    ) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name, value in attrs.items():
                TemplateNamespace._check(name, value)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check(name, value)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name: Any, value: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace ({name!r})"
                )
            _check_size(value, limits.max_value)

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if (
                operator == "**"
                and isinstance(right, (int, float))
                and abs(right) > 64
                and isinstance(left, (int, float))
                and abs(left) > 1
            ):
                raise RenderError("too-large", f"exponent {right} is too large for a chat template")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > limits.max_value:
                        raise RenderError(
                            "too-large", f"a value of {len(seq) * n:,} items is too large for a chat template"
                        )
            result = super().call_binop(context, operator, left, right)
            _check_size(result, limits.max_value)
            return result

    env = BoundedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[GenerationTag, jinja2.ext.loopcontrols],
        undefined=jinja2.StrictUndefined if strict_undefined else jinja2.Undefined,
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


def _check_size(value: Any, limit: int) -> None:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > limit:
        raise RenderError("too-large", f"the template built a value of {len(value):,} items (limit {limit:,})")


_COMPILED: dict[tuple[str, bool, Limits], Any] = {}


def compile_template(source: str, strict_undefined: bool = False, limits: Limits = Limits()):
    """Parse a template; a syntax error is a RenderError with its line number. The last few
    compiled templates are kept (a command renders one template many times)."""
    import jinja2

    key = (source, strict_undefined, limits)
    cached = _COMPILED.get(key)
    if cached is not None:
        return cached
    env = _environment(limits, strict_undefined)
    try:
        template = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise RenderError("syntax", f"syntax error: {e.message}", e.lineno) from None
    if len(_COMPILED) >= 16:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = template
    return template


def plain(data: Any) -> Any:
    """JSON-like copy of user data (what transformers' ``_plain_template_data`` gives templates)."""
    if isinstance(data, dict):
        return {str(k): plain(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [plain(v) for v in data]
    return data


def alias_reasoning(messages: list[dict]) -> list[dict]:
    out = []
    for m in messages:
        if isinstance(m, dict):
            reasoning = next((m[k] for k in REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def render(
    source: str,
    messages: list[dict],
    *,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    add_generation_prompt: bool = False,
    variables: dict[str, Any] | None = None,
    limits: Limits = Limits(),
    strict_undefined: bool = False,
) -> str:
    """Render ``source`` like ``tokenizer.apply_chat_template(messages, tools=..., tokenize=False)``.

    ``variables`` are passed to the template as keyword arguments (``bos_token``,
    ``enable_thinking``...). Raises RenderError."""
    template = compile_template(source, strict_undefined, limits)
    context = dict(plain(variables or {}))
    context.update(
        messages=alias_reasoning(plain(messages)),
        tools=plain(tools),
        documents=plain(documents),
        add_generation_prompt=add_generation_prompt,
    )
    return _run(template, context, limits)


def _run(template: Any, context: dict[str, Any], limits: Limits) -> str:
    import jinja2

    deadline = budget_deadline(limits.timeout)
    out: list[str] = []
    size = 0
    guard = _Guard(deadline, limits.max_value)
    previous = sys.gettrace()
    sys.settrace(guard.global_trace)
    try:
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > limits.max_output:
                raise RenderError("too-large", f"output exceeds {limits.max_output:,} characters")
            out.append(chunk)
    except RenderError as e:
        if e.kind == "timeout":
            note_timeout()
        if e.line is None:
            e.line = guard.line
        raise
    except jinja2.exceptions.SecurityError as e:
        raise RenderError("security", f"blocked by the sandbox: {e}", guard.line or _tb_line(e)) from None
    except jinja2.exceptions.UndefinedError as e:
        raise RenderError("undefined", f"undefined: {e.message}", guard.line or _tb_line(e)) from None
    except jinja2.exceptions.TemplateError as e:
        raise RenderError("exception", f"the template raised: {e.message or e}", guard.line or _tb_line(e)) from None
    except RecursionError:
        raise RenderError("too-large", "the template recursed too deeply", guard.line) from None
    except MemoryError:
        raise RenderError("too-large", "the template ran out of memory", guard.line) from None
    except OverflowError as e:  # the sandbox's range() limit, or a number too large
        raise RenderError("too-large", f"{e}", guard.line or _tb_line(e)) from None
    except Exception as e:  # a template can raise anything: TypeError on bad data...
        raise RenderError("error", f"{type(e).__name__}: {e}", guard.line or _tb_line(e)) from None
    finally:
        sys.settrace(previous)
    return "".join(out)


def _tb_line(e: BaseException) -> int | None:
    """The template line of an exception: jinja2 rewrites the traceback of a failed render so that
    its frames for template code carry the template's own line numbers."""
    line = None
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class _Guard:
    """Line tracer for the template's compiled code: deadline and value sizes."""

    __slots__ = ("deadline", "max_value", "events", "line")

    def __init__(self, deadline: float, max_value: int):
        self.deadline = deadline
        self.max_value = max_value
        self.events = 0
        self.line: int | None = None

    def global_trace(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == "<template>":
            return self.local_trace
        return None

    def local_trace(self, frame: Any, event: str, arg: Any) -> Any:
        self.events += 1
        if self.events & 3 == 0:
            if time.monotonic() > self.deadline:
                self.line = _template_line(frame)
                raise RenderError("timeout", "rendering took too long (is there a runaway loop?)", self.line)
            for value in frame.f_locals.values():
                if isinstance(value, (str, list, tuple, dict)) and len(value) > self.max_value:
                    self.line = _template_line(frame)
                    raise RenderError("too-large", f"the template built a value of {len(value):,} items", self.line)
        return self.local_trace


def _template_line(frame: Any) -> int | None:
    """Map a line of compiled template code back to the template's line (jinja's debug_info)."""
    info = frame.f_globals.get("debug_info")
    if not info:
        return None
    best = None
    for pair in info.split("&"):  # "template_line=code_line" pairs, in code order
        tmpl_line, _, code_line = pair.partition("=")
        if int(code_line) <= frame.f_lineno:
            best = int(tmpl_line)
    return best
