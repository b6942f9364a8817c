"""JSON text as every ggufx result is printed: the CLI's ``--json``, reports and the MCP tools."""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\\ud800-\\udfff]")


def dumps(obj: Any) -> str:
    """JSON text, UTF-8 readable; lone surrogates (invalid UTF-8 in the file) become \\udcXX escapes."""
    import json  # on first use: every command imports this module, only --json needs json

    text = json.dumps(obj, indent=2, ensure_ascii=False, default=_default)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _default(o: Any) -> Any:
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
