"""``nanbeige`` (src/models/nanbeige.cpp: Nanbeige 4): the llama graph (rope_freqs, the output projection's and
the FFN's biases where the file has them). Not simulated: ``num_loops`` above 1 (the layers run again, each
loop with a cache of its own: llama.cpp's n_layer is block_count times the loops) and the FFN's per-tensor
scales."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._plain import Plain
from ggufx.model import GGUFModel

SPEC = Plain()


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    loops = model.metadata.get_int("nanbeige.num_loops")
    if loops is not None and loops > 1:
        return "nanbeige graphs with num_loops above 1 are not simulated"
    scale = next((t.name for t in model.tensors if t.name.endswith(".scale")), None)
    if scale:
        return f"nanbeige graphs with tensor {scale} are not simulated"
    return _plain.needs(model, _plain.layer_weights(SPEC))
