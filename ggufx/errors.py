"""Errors raised by ggufx.

Every problem with a file is a :class:`GGUFError` carrying the file, the byte offset where the
problem was found (``None`` when no offset applies) and a one-line description, so that callers
(the CLI, the MCP server, a script) can print ``FILE: offset N: what was wrong`` without a
traceback. The other exceptions of the library live here too, and are re-exported where they were
first defined: :class:`InputError` (a bad argument), :class:`PolicyError` (a bad policy file,
``ggufx.analysis.policy``), :class:`RenderError` (a chat template that cannot be rendered,
``ggufx.chat.render``, with the errors of llama.cpp's Jinja engine below it, which never leave
``ggufx.chat.llamacpp``) and :class:`AccessError` (what the MCP server refuses, ``ggufx.mcp.access``).
"""

from __future__ import annotations

import os
from typing import Any


class GGUFError(Exception):
    """Base class: a GGUF file (or a set of shards) could not be used."""

    def __init__(self, path: str | os.PathLike[str] | None, offset: int | None, message: str):
        self.path = os.fspath(path) if path is not None else None
        self.offset = offset
        self.message = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.path is not None:
            parts.append(self.path)
        if self.offset is not None:
            parts.append(f"offset {self.offset}")
        parts.append(self.message)
        return ": ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"error": type(self).__name__, "path": self.path, "offset": self.offset, "message": self.message}


class SourceError(GGUFError):
    """The bytes could not be read at all (missing file, permission, I/O error)."""


class FormatError(GGUFError):
    """The bytes are not a valid GGUF file (bad magic, bad value type, lying length...)."""


class TruncatedError(FormatError):
    """A field or tensor runs past the end of the file."""


class UnsupportedVersionError(FormatError):
    """GGUF version 1 or a version newer than this reader knows."""


class ValidationError(FormatError):
    """The file parses but breaks a rule llama.cpp's loader enforces (alignment, overlap, dims...)."""


class ShardError(GGUFError):
    """A split model is inconsistent or one of its shards is missing."""


class EditError(GGUFError):
    """An edit could not be done (and the file was left as it was)."""


class InputError(ValueError):
    """A bad argument (not a bad file). ``param`` names the CLI option it came from."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class PolicyError(GGUFError):
    """The policy file itself is wrong (exit code 2)."""


class RenderError(Exception):
    """A template could not be rendered. ``kind``: syntax, exception (raise_exception), security,
    undefined, timeout, too-large, error. ``line`` is the template line when known."""

    def __init__(self, kind: str, message: str, line: int | None = None):
        self.kind = kind
        self.line = line
        self.message = message
        super().__init__(f"{message}" + (f" (template line {line})" if line else ""))


class JinjaError(RenderError):
    """A runtime error of llama.cpp's Jinja engine (its std::runtime_error), raised inside
    ``ggufx.chat.llamacpp``: the engine turns it into a plain RenderError with the template line."""

    def __init__(self, message: str):
        super().__init__("error", message)


class RaisedError(JinjaError):
    """raise_exception() in the template, or a built-in refusing its arguments."""


class TemplateRaised(RaisedError):
    """raise_exception("...") called by the template itself."""


class NotImplementedInLlamaCpp(JinjaError):
    """llama.cpp's not_implemented_exception."""


class LoopBreak(Exception):
    """``{% break %}`` unwinding to its loop in llama.cpp's engine (break_statement::signal)."""


class LoopContinue(Exception):
    """``{% continue %}`` unwinding to its loop in llama.cpp's engine (continue_statement::signal)."""


class AccessError(Exception):
    """A path or URL the MCP server may not touch."""
