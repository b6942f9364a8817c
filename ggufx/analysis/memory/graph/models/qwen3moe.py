"""``qwen3moe`` (src/models/qwen3moe.cpp): the llama-style builder with Q/K norms and the
mixture-of-experts FFN (:mod:`ggufx.analysis.memory.graph.models.llama`)."""

from ggufx.analysis.memory.graph.models.llama import build

__all__ = ["build"]
