"""``mellum`` (src/models/mellum.cpp: JetBrains Mellum): qwen3moe's layer (RMS norms of each Q and K head,
softmax-routed experts with normalized weights, no shared expert, no scale: mellum.cpp loads no
``expert_weights_scale``) with, where ``attention.sliding_window`` is set, the sliding-window layers of the
pattern (every fourth layer full by default) on their own cache. Not simulated: the experts' per-tensor
scales."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _w
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, decoder, output
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head")


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    """mellum.cpp's attention: llama's with the RMS norms of each Q and K head, over the layer's cache."""
    return _attention(c, g, x, il, inp, any(c.swa), SPEC)


def _experts(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    """mellum.cpp's FFN: ``build_moe_ffn`` with softmax gating and normalized weights."""
    return routed(c, g, x, il, norm_w=True)[0]


def build(c: _Ctx, g: _Graph) -> _T:
    """mellum.cpp's ``graph::graph``: :func:`~._dense.decoder` of its attention and experts, the head
    ``output.weight``."""
    x = decoder(c, g, _inp_embd(c, g), _attn, _experts, SPEC, iswa=any(c.swa))
    return output(c, g, x, _w(c, "output.weight", c.hp.n_layer))


def unbuildable(model: GGUFModel) -> str | None:
    scale = next((t.name for t in model.tensors if t.name.endswith("_exps.scale")), None)
    if scale:
        return f"mellum graphs with tensor {scale} are not simulated"
    if "output.weight" not in {t.name for t in model.tensors}:  # mellum.cpp's load_arch_tensors: required
        return "the graph needs tensor output.weight, which the file lacks"
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
