"""One graph builder per llama.cpp model (``src/models/<arch>.cpp``): architecture name -> the module
whose ``build(c, g)`` returns the graph's logits. A plain table, for the architecture registry to
replace; adding an architecture is one module here and one line below."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

BUILDERS: dict[str, str] = {
    "llama": "ggufx.analysis.memory.graph.models.llama",
    "gemma3": "ggufx.analysis.memory.graph.models.gemma3",
    "qwen3moe": "ggufx.analysis.memory.graph.models.qwen3moe",
    "qwen35": "ggufx.analysis.memory.graph.models.qwen35",
}


def builder(arch: str) -> Callable[..., Any]:
    """The ``build`` function of an architecture's module (KeyError: none)."""
    build: Callable[..., Any] = importlib.import_module(BUILDERS[arch]).build
    return build
