"""Plain-text tables.

The default terminal output uses this small formatter (tabulate's "simple" layout) because
importing tabulate costs ~60 ms (it reads its own package metadata at import), which would be a
third of ``ggufx info``'s run time. Any other layout (``github``, ``grid``, ``html``...) is
rendered by tabulate, imported only then.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NUMERIC = (int, float)


def printable(text: str) -> str:
    """Text a terminal can print: bytes that were not UTF-8 in the file (kept as surrogates so that
    edits are lossless) are shown as ``\\xff`` escapes."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that is not an undecodable byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return printable(str(v))


def render(
    rows: Sequence[Sequence[Any]], headers: Sequence[str], fmt: str = "simple", align: Sequence[str] | None = None
) -> str:
    """A table of ``rows`` under ``headers``. Numbers are right-aligned unless ``align`` says."""
    cells = [[_cell(v) for v in row] for row in rows]
    if fmt != "simple":
        from tabulate import tabulate  # noqa: PLC0415 - lazy, see module docstring

        return tabulate(
            cells,
            headers=list(headers),
            tablefmt=fmt,
            disable_numparse=True,
            colalign=tuple("right" if a == "r" else "left" for a in _aligns(rows, headers, align)),
        )
    aligns = _aligns(rows, headers, align)
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        out = [v.rjust(w) if a == "r" else v.ljust(w) for v, w, a in zip(values, widths, aligns)]
        return "  ".join(out).rstrip()

    parts = [line(headers), "  ".join("-" * w for w in widths)]
    parts.extend(line(r) for r in cells)
    return "\n".join(parts)


def _aligns(rows: Sequence[Sequence[Any]], headers: Sequence[str], align: Sequence[str] | None) -> list[str]:
    if align is not None:
        return list(align)
    out = []
    for i in range(len(headers)):
        col = [r[i] for r in rows if r[i] is not None]
        numeric = bool(col) and all(isinstance(v, NUMERIC) and not isinstance(v, bool) for v in col)
        out.append("r" if numeric else "l")
    return out
