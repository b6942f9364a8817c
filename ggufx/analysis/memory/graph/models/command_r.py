"""``command-r`` (src/models/command-r.cpp: Command-R 35B, Command-R+): layer norm (``LLM_NORM``), the
attention and the FFN in parallel on the one input norm, both added to the residual; the logits scaled
by ``logit_scale`` when it is set; the layer norms of each Q and K head before RoPE in files that have
them (command-r.cpp's loader: those of 64 layers or more, Command-R+)."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, model_of
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import COHERE, Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM"), residual=COHERE)


def spec(model: GGUFModel) -> Plain:
    """The file's graph: ``if (f_logit_scale)`` a SCALE of the logits (command-r.cpp:136-138), the Q/K
    norms where the file has them (the loader's ``n_layer >= 64``)."""
    scale = model.metadata.get("command-r.logit_scale")
    qk = "head" if any(t.name == "blk.0.attn_q_norm.weight" for t in model.tensors) else ""
    logit_scale = isinstance(scale, (int, float)) and scale != 0
    return replace(SPEC, attn=replace(SPEC.attn, logit_scale=logit_scale, qk_norm=qk))


def build(c: _Ctx, g: _Graph) -> _T:
    return _plain.build(c, g, spec(model_of(c)))


def unbuildable(model: GGUFModel) -> str | None:
    return _plain.needs(model, _plain.layer_weights(spec(model)))
