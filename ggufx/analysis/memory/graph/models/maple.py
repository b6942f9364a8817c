"""``maple`` (src/models/maple.cpp, deepgrove's Maple): sliding-window layers from the required pattern array on
their own cache and mask (``build_attn_inp_kv_iswa``), Q/K head norms, RoPE on the sliding-window layers only,
softmax-routed experts with normalized weights and the SwiGLU clamped per layer (``ggml_swiglu_clamp``: one GLU
node of the unclamped one's shape, llama-graph.cpp:2279), the output norm and projection."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _AttnInp, _Ctx, _inp_embd, _moe_ffn, _w
from ggufx.analysis.memory.graph.models import _moe_check
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, decoder, output
from ggufx.analysis.memory.graph.models.qwen3next import n_expert_used
from ggufx.model import GGUFModel

# maple.cpp:108-121: RoPE where hparams.is_swa(il) only
_D = Dense(qk_norm="head", rope=lambda c, il: c.swa[il])


def _attn(c: _Ctx, g: _Graph, x: _T, il: int, inp: _AttnInp) -> _T:
    return _attention(c, g, x, il, inp, True, _D)


def _experts(c: _Ctx, g: _Graph, x: _T, il: int) -> _T:
    return _moe_ffn(c, g, x, il, n_expert_used(c))


def build(c: _Ctx, g: _Graph) -> _T:
    """maple.cpp ``graph::graph``."""
    x = decoder(c, g, _inp_embd(c, g), _attn, _experts, _D, iswa=True)
    return output(c, g, x, _w(c, "output.weight", c.hp.n_layer))


def unbuildable(model: GGUFModel) -> str | None:
    """The expert counts maple.cpp requires (both above 0), ``output.weight`` and every layer's tensors as its
    loader creates them (all required)."""
    if not any(t.name == "output.weight" for t in model.tensors):
        return "the graph needs tensor output.weight, which the file lacks"
    flat = ["attn_norm", "attn_output", "attn_q_norm", "attn_k_norm", "ffn_norm", "ffn_gate_inp"]
    three = ["ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"]
    return _moe_check.unbuildable(model, lambda il: (flat, three))
