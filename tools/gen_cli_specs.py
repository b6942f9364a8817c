#!/usr/bin/env python3
"""Generate ``ggufx/cli/_specs.py``: the options of the commands the fast start runs, read off click's declaration.

usage: gen_cli_specs.py [--check]

For each command of ``ggufx.cli._fast.FAST``: every option string with the parameter it sets and how its value
is read (a flag; an integer or a number with click's lower bound; one of click's choices; one of llama.cpp's words
for a value or a whole number, ggufx.cli.memory.Spelled; a string; a file as ``click.Path(dir_okay=False)`` checks
it; a repeatable string; an optional value of choices or words), the positional
argument (one optional FILE, or FILES... of at least one), and the values click gives every parameter when none is
given (``make_context`` of an empty command line, resiliently: click's own defaults, converted as click converts
them). An option whose reading the fast start does not copy (a callback, an environment variable, a deprecation, a
type or feature not listed above) is ``decline``: given, the command line goes to click. An option click requires,
prompts for or computes a default of at each run, and context settings beyond --help's layout, stop the generation
(their reading is no table's). ``--check`` exits 1 where the file differs from what this would write
(tests/test_fast_start.py runs it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "ggufx" / "cli" / "_specs.py"


def _range(t: Any) -> tuple[bool, Any]:
    """(whether the range is one the fast start reads: a lower bound at most, closed, not clamped; the bound)"""
    ok = t.max is None and not t.min_open and not t.clamp
    return ok, t.min


def option_kind(cmd: Any, p: Any) -> tuple[Any, ...]:
    import click

    if not p.expose_value or p.callback is not None or p.envvar or p.secondary_opts or p.count or p.nargs != 1:
        return ("decline",)
    if getattr(p, "deprecated", False):  # click (8.2+) warns on stderr where it is given
        return ("decline",)
    t = p.type
    if p.is_flag:
        if isinstance(t, click.types.BoolParamType) and not p.multiple and _flag_sets_true(cmd, p):
            return ("flag",)
        return ("decline",)
    from ggufx.cli.memory import Spelled

    if getattr(p, "_flag_needs_value", False):
        if type(t) is click.Choice and all(isinstance(c, str) for c in t.choices) and t.case_sensitive:
            return ("optional", {c: c for c in t.choices}, p.flag_value)
        if type(t) is Spelled and not t.integers:
            return ("optional", dict(t.words), p.flag_value)
        return ("decline",)
    if p.multiple:
        return ("multi",) if type(t) is click.types.StringParamType else ("decline",)
    if type(t) is click.types.StringParamType:
        return ("str",)
    if type(t) is click.types.IntParamType:
        return ("int", None)
    if type(t) is click.IntRange:
        ok, low = _range(t)
        return ("int", low) if ok else ("decline",)
    if type(t) is click.FloatRange:
        ok, low = _range(t)
        return ("float", low) if ok else ("decline",)
    if type(t) is click.Choice:
        if all(isinstance(c, str) for c in t.choices) and t.case_sensitive:
            return ("choice", tuple(t.choices))
        return ("decline",)
    if type(t) is Spelled:
        return ("spelled", dict(t.words), t.integers)
    if type(t) is click.Path and _plain_path(t):
        return ("path", bool(t.exists))
    return ("decline",)


def _flag_sets_true(cmd: Any, p: Any) -> bool:
    """Whether click gives the flag's parameter True when the flag alone is given (its flag value, asked of click)."""
    try:
        return all(cmd.make_context(cmd.name, [opt], resilient_parsing=True).params[p.name] is True for opt in p.opts)
    except Exception:
        return False


def _plain_path(t: Any) -> bool:
    return (
        t.file_okay
        and not t.dir_okay
        and t.readable
        and not t.writable
        and not t.executable
        and not t.resolve_path
        and not t.allow_dash
        and t.type is None
    )


# context settings (the group's, the command's) that only shape --help: any other (auto_envvar_prefix, default_map,
# token_normalize_func, color, ignore_unknown_options...) changes how click reads a command line or echoes its answer
PLAIN_SETTINGS = frozenset({"help_option_names", "max_content_width", "terminal_width", "show_default"})


def _plain_settings(where: str, settings: dict[str, Any]) -> None:
    odd = sorted(set(settings) - PLAIN_SETTINGS)
    if odd:
        raise SystemExit(f"{where}: the fast start does not copy the context settings {', '.join(odd)}")


def spec_of(name: str, cmd: Any) -> dict[str, Any]:
    import click

    _plain_settings(name, cmd.context_settings)
    options: dict[str, tuple[Any, ...]] = {}
    argument = None
    for p in cmd.params:
        # where the command line does not give it, the table holds the value click gives: a fixed one (a FILES...
        # argument is required: the fast start reads a command line only with one)
        if isinstance(p, click.Option) and (p.required or p.prompt or callable(p.default)):
            raise SystemExit(f"{name}: {p.name} is required, prompted for or has a default computed at each run")
        if isinstance(p, click.Argument):
            # one optional FILE, or FILES... (at least one): plain click.Path(dir_okay=False) each
            one, many = p.nargs == 1 and not p.required, p.nargs == -1 and p.required
            if argument is not None or not (one or many) or type(p.type) is not click.Path:
                raise SystemExit(f"{name}: the fast start reads one optional FILE or FILES..., not {p.name}")
            if not _plain_path(p.type) or p.type.exists or getattr(p, "deprecated", False) or callable(p.default):
                raise SystemExit(f"{name}: argument {p.name} is not a plain click.Path(dir_okay=False)")
            argument = (p.name, "many" if many else "one")
            continue
        kind = option_kind(cmd, p)
        for opt in p.opts:
            options[opt] = (p.name, *kind) if kind[0] != "decline" else ("", "decline")
    ctx = cmd.make_context(name, [], resilient_parsing=True)  # (a required FILES... is given whenever it runs)
    return {"argument": argument, "options": options, "defaults": dict(ctx.params)}


def specs() -> dict[str, dict[str, Any]]:
    import importlib

    from ggufx.cli._fast import FAST
    from ggufx.cli._group import COMMANDS, main

    _plain_settings("the group", main.context_settings)
    out = {}
    for name in FAST:
        module, attr, _ = COMMANDS[name]
        out[name] = spec_of(name, getattr(importlib.import_module(f"ggufx.cli.{module}"), attr))
    return out


def render() -> str:
    lines = [
        '"""The options of the commands the fast start runs (ggufx.cli._fast), read off their click declaration.',
        "",
        "Generated by tools/gen_cli_specs.py; do not edit (tests/test_fast_start.py checks it is current).",
        "Per command: the positional argument's name; option string -> (parameter, kind, ...); click's values of",
        'every parameter when none is given."""',
        "",
        "from typing import Any",
        "",
        "SPECS: dict[str, dict[str, Any]] = {",
    ]
    for name, spec in specs().items():
        lines.append(f"    {name!r}: {{")
        lines.append(f"        'argument': {spec['argument']!r},")
        lines.append("        'options': {")
        lines += [f"            {opt!r}: {kind!r}," for opt, kind in spec["options"].items()]
        lines.append("        },")
        lines.append("        'defaults': {")
        lines += [f"            {k!r}: {v!r}," for k, v in spec["defaults"].items()]
        lines.append("        },")
        lines.append("    },")
    lines.append("}")
    import subprocess

    text = "\n".join(lines) + "\n"
    ruff = Path(sys.executable).parent / "ruff"  # formatted as the house rules format it (ruff format --check)
    done = subprocess.run(
        [str(ruff), "format", "--stdin-filename", str(OUT), "-"], input=text, text=True, capture_output=True, check=True
    )
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 where ggufx/cli/_specs.py is not current")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    text = render()
    if a.check:
        if OUT.read_text() != text:
            print(f"{OUT} is not current: run tools/gen_cli_specs.py", file=sys.stderr)
            sys.exit(1)
        return
    OUT.write_text(text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
