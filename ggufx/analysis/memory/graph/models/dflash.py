"""``dflash`` (src/models/dflash.cpp): not built yet."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.model import GGUFModel


def build(c: _Ctx, g: _Graph) -> _T:
    raise NotImplementedError


def unbuildable(model: GGUFModel) -> str | None:
    return "the dflash graph is not rebuilt yet"
