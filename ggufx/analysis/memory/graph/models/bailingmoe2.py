"""``bailingmoe2`` (src/models/bailingmoe2.cpp: Ling/Ring 2.0): dots1's graph (:mod:`.dots1`) over the trunk,
with the fused QKV projection; the NextN/MTP blocks (``nextn_predict_layers``) are created with
``TENSOR_SKIP`` and left out of the graph."""

from __future__ import annotations

from ggufx.analysis.memory.graph.models.dots1 import build_trunk as build
from ggufx.analysis.memory.graph.models.dots1 import unbuildable

__all__ = ["build", "unbuildable"]
