"""``maincoder`` (src/models/maincoder.cpp): hunyuan-dense's graph (:mod:`.hunyuan_dense`: RMS norms of
each Q and K head after RoPE, a dense SwiGLU FFN)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models.hunyuan_dense import _LAYER, build
from ggufx.model import GGUFModel

__all__ = ["build", "unbuildable"]


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _LAYER)
