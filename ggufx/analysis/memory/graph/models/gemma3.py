"""``gemma3`` (src/models/gemma3.cpp): the llama-style builder, which switches on the architecture
for what Gemma 3 adds (:mod:`ggufx.analysis.memory.graph.models.llama`)."""

from ggufx.analysis.memory.graph.models.llama import build

__all__ = ["build"]
