"""Parse once, run many times: the entry points of llama.cpp's Jinja engine (what
``common/chat.cpp`` does with ``jinja::parse`` and ``jinja::runtime``). :func:`compile_program`
parses (cached), :func:`execute` runs a program over values and turns every failure into a
:class:`~ggufx.chat.render.RenderError`, :func:`run_json` does both for JSON-like input.
"""

from __future__ import annotations

from typing import Any

from ggufx.chat.llamacpp.parser import Program, parse
from ggufx.chat.llamacpp.runtime import Ctx, Output, Runtime
from ggufx.chat.llamacpp.value import from_json
from ggufx.chat.render import Limits, budget_deadline, note_timeout
from ggufx.errors import JinjaError, LoopBreak, LoopContinue, NotImplementedInLlamaCpp, RenderError, TemplateRaised

LIMITS = Limits()  # the defaults of ggufx.chat.render


_CACHE: dict[str, Program] = {}


def compile_program(source: str) -> Program:
    """Parse ``source`` as llama.cpp would accept it (RenderError ``syntax`` with the line if not)."""
    prog = _CACHE.get(source)
    if prog is not None:
        return prog
    prog = parse(source)
    if len(_CACHE) > 32:
        _CACHE.clear()
    _CACHE[source] = prog
    return prog


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
    except TemplateRaised as e:
        msg = str(e).removeprefix("Jinja Exception: ")
        raise RenderError("exception", f"the template raised: {msg}", rt.line) from None
    except NotImplementedInLlamaCpp as e:
        raise RenderError("unsupported", f"llama.cpp does not implement this: {e}", rt.line) from None
    except JinjaError as e:  # before RenderError, its base: the engine's own errors get the line
        raise RenderError("error", str(e), rt.line) from None
    except RenderError as e:
        if e.kind == "timeout":
            note_timeout()
        if e.line is None:
            e.line = rt.line
        raise
    except (LoopBreak, LoopContinue):
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
