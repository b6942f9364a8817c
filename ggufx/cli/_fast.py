"""The fast start: ``ggufx mem`` and ``ggufx info`` without importing click (issue 21: click's import and its
option objects were 58 M of the 360 M instructions ``mem`` ran beyond Python's start on a 27B model, about 11 ms).

A command line is run here only when every token is one this module reads exactly as click would: option strings
as ``ggufx mem --help`` lists them (``--ctx 32768``, ``-c 32768``, ``--ctx=32768``), values click's types accept
(integers and numbers within click's bounds, one of click's choices, files click's ``Path`` checks pass), local
regular files. Everything else (``--help``, an unknown or abbreviated option, a value click would refuse, a URL,
``--server`` anywhere (even as a value: click's ServerAwareCommand takes it out first), the remote-source options, an
option beside ``--llama-args`` that its command line sets, ``--``, a file that is no regular file (a pipe reads once),
output streams that are not UTF-8, a shell-completion variable) goes to the click group, and so does any command
line whose answer fails before it wrote anything (a bad file, options that cannot be answered, a URL named inside
``--llama-args``, a bug): the group runs it again from the start and reports it as it always has. The options are
read off click's declaration into :mod:`ggufx.cli._specs` (``tools/gen_cli_specs.py``; ``tests/test_fast_start.py``
holds this reading equal to click's over every option and a corpus of command lines, and the outputs of both starts
equal). ``GGUFX_NO_FAST_START=1`` sends every command line to click.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import Any

FAST = ("mem", "info")  # the commands the fast start runs; their options: ggufx.cli._specs

_Parsed = tuple[dict[str, Any], set[str]]


def parse(command: str, args: list[str]) -> _Parsed | None:
    """``(params, given)``: the values click's parsing of ``args`` gives each of ``command``'s parameters and the
    names of those the command line set; None where click might read ``args`` otherwise (or refuse them)."""
    from ggufx.cli._specs import SPECS

    if any(a == "--server" or a.startswith("--server=") for a in args):
        return None  # click's ServerAwareCommand takes it out before parsing, even as another option's value
    spec = SPECS[command]
    options: dict[str, tuple[Any, ...]] = spec["options"]
    params = dict(spec["defaults"])
    given: set[str] = set()
    argument = spec["argument"]
    i, n = 0, len(args)
    while i < n:
        token = args[i]
        i += 1
        if not token.startswith("-"):
            if not _positional(token, argument, params, given):
                return None
            continue
        explicit = None
        if token.startswith("--") and "=" in token:
            token, explicit = token.split("=", 1)
        entry = options.get(token)
        if entry is None or entry[1] == "decline":  # ("-" and "--" are no option: click's own readings)
            return None
        name = entry[0]
        read = _value(entry, explicit, args, i)
        if read is None:
            return None
        value, i = read
        if entry[1] == "multi":
            value = (*params[name], value) if name in given else (value,)
        params[name] = value
        given.add(name)
    if argument is not None and argument[1] == "many" and argument[0] not in given:
        return None  # click: a missing argument
    return params, given


def _positional(token: str, argument: tuple[str, str] | None, params: dict[str, Any], given: set[str]) -> bool:
    """Take ``token`` as the command's file (one, or one more of several): False where click would not."""
    path = _path(token, exists=False)
    if argument is None or path is None:
        return False
    name, nargs = argument
    if nargs == "one" and name in given:
        return False  # click: an extra argument
    params[name] = path if nargs == "one" else (*params[name], path) if name in given else (path,)
    given.add(name)
    return True


def _value(entry: tuple[Any, ...], explicit: str | None, args: list[str], i: int) -> tuple[Any, int] | None:
    """The value of the option ``entry`` (``explicit``: after its ``=``; else read from ``args[i:]``) and where the
    next token is, or None where click might read it otherwise or refuse it."""
    kind = entry[1]
    if kind == "flag":
        return None if explicit is not None else (True, i)
    if kind == "optional":  # click: the flag value where no value follows or an option does
        if explicit is not None or i >= len(args) or (args[i][:1] == "-" and len(args[i]) > 1):
            return None
        return (entry[2][args[i]], i + 1) if args[i] in entry[2] else None  # the word's value
    if explicit is None:
        if i >= len(args):
            return None
        explicit, i = args[i], i + 1
    value = _convert(kind, entry, explicit)
    return None if value is None else (value, i)


def _convert(kind: str, entry: tuple[Any, ...], text: str) -> Any:
    """``text`` as click's type converts it, or None where click would refuse it."""
    if kind in ("str", "multi"):
        return text
    if kind == "choice":
        return text if text in entry[2] else None
    if kind == "spelled":  # one of llama.cpp's words for the value, or (entry[3]) a whole number as int() reads it
        if text in entry[2]:
            return entry[2][text]
        try:
            return int(text) if entry[3] else None
        except ValueError:
            return None
    if kind == "path":
        return _path(text, exists=entry[2])
    try:
        value: float = int(text) if kind == "int" else float(text)  # click's own conversion
    except ValueError:
        return None
    low = entry[2]
    if low is not None and value < low:
        return None
    return value


def _path(text: str, exists: bool) -> str | None:
    """``text`` where ``click.Path(dir_okay=False, exists=exists)`` accepts it (a file, readable), else None; a URL
    or hf:// reference is None too (its remote options live on click's context), and so is a file that is no
    regular file (a pipe, ``--check <(...)``, reads once: a fast start that fails must leave it for the group)."""
    if not text or text == "-" or "://" in text:
        return None
    try:
        st = os.stat(text)
    except OSError:
        return None if exists else text
    if not stat.S_ISREG(st.st_mode) or not os.access(text, os.R_OK):
        return None
    return text


def _utf8(stream: Any) -> bool:
    import codecs

    encoding = getattr(stream, "encoding", None)
    try:
        return encoding is not None and codecs.lookup(encoding).name == "utf-8"
    except LookupError:
        return False


class _Output:
    """click.echo of a text, as it writes one to a UTF-8 stream: the text, a newline, a flush. A text with an
    escape sequence goes through click.echo itself (it strips them where the stream is no terminal)."""

    def __init__(self) -> None:
        self.written = False

    def echo(self, message: str, err: bool = False) -> None:
        self.written = True
        if "\x1b" in message:
            import click

            click.echo(message, err=err)
            return
        stream = sys.stderr if err else sys.stdout
        stream.write(message + "\n")
        stream.flush()


def run_fast(argv: list[str]) -> None:
    """Run ``argv`` (the program's arguments) and end the process, where the fast start applies; else return."""
    if not argv or argv[0] not in FAST or os.environ.get("GGUFX_NO_FAST_START"):
        return
    if any(k[:1] == "_" and k.endswith("_COMPLETE") for k in os.environ):
        return  # click's shell completion (_GGUFX_COMPLETE, named after the program) answers any command line
    if not (_utf8(sys.stdout) and _utf8(sys.stderr)):
        return
    parsed = parse(argv[0], argv[1:])
    if parsed is None:
        return
    params, given = parsed
    if argv[0] == "mem":
        from ggufx.cli._memory import REPLACED_BY_LLAMA_ARGS

        if "llama_args" in given and given & REPLACED_BY_LLAMA_ARGS:  # click refuses them beside it, naming them
            return
    _run(argv[0], params)


class _NotLocal(Exception):
    """A URL or hf:// reference to open (``--llama-args``' ``-m``...): its remote options live on click's context;
    or no regular file (a pipe reads once: the group must read it all)."""


def _open_local(path: str) -> Any:
    from ggufx.io.sources import is_remote

    if is_remote(path) or _path(path, exists=False) is None:
        raise _NotLocal(path)
    import ggufx

    return ggufx.open(path)


def _open_many_local(paths: Any) -> list[Any]:
    """Local files (the parser lets no URL through) opened: each model, or its error in its place."""
    from ggufx.errors import GGUFError

    out: list[Any] = []
    for path in paths:
        try:
            out.append(_open_local(path))
        except GGUFError as e:
            out.append(e)
    return out


def _answer(command: str, params: dict[str, Any], echo: Any) -> int:
    """The command's answer through ``echo``, as its click command gives it; its exit status."""
    as_json, tablefmt = params.pop("as_json"), params.pop("tablefmt")
    if command == "info":
        from ggufx.cli._info import run as info

        return info(params["files"], as_json, tablefmt, _open_many_local, echo)
    from ggufx.cli._memory import run as mem

    return mem(params.pop("file"), as_json, tablefmt, params, _open_local, echo)


# what each command's click module imports before the click group freezes the collector's view of them
_IMPORTS = {"mem": ("ggufx.results", "ggufx.results.memory", "ggufx.cli._memory"), "info": ("ggufx.results",
            "ggufx.cli._info")}  # fmt: skip


def _run(command: str, params: dict[str, Any]) -> None:
    import gc
    import importlib

    from ggufx.cli._process import end_process, internal_error_line, os_error_line

    out = _Output()
    try:  # the command's imports too: the click group makes them inside click's main (an interrupt: "Aborted!")
        from ggufx.cli import _codecache

        _codecache.install(command)  # as the click group does for a command's own process
        for module in _IMPORTS[command]:
            importlib.import_module(module)
        gc.freeze()
        code = _answer(command, params, out.echo)
    except BrokenPipeError:  # `ggufx mem ... | head`: not an error, as the click group says
        sys.stderr.close()
        end_process(0)
    except OSError as e:  # the system refused (stdout on a full disk...), as the click group says it
        if not out.written:
            return
        sys.stderr.write(os_error_line(e) + "\n")
        end_process(2)
    except KeyboardInterrupt:  # click's standalone ending
        sys.stderr.write("\nAborted!\n")
        end_process(1)
    except Exception as e:
        if not out.written:
            return  # the click group runs it again and reports it its way
        sys.stderr.write(internal_error_line(e) + "\n")
        end_process(2)
    end_process(code)
