"""``gptneox`` (src/models/gptneox.cpp: Pythia, GPT-NeoX, RedPajama-INCITE): layer norms with biases,
the fused QKV projection with its bias, (partial) RoPE, the output projection's bias, an FFN of up, GELU
and down with their biases (no gate); with ``use_parallel_residual`` (Pythia) the FFN reads its own norm of
the layer input and both add to it, ``(FFN + x) + attention``; the output norm's bias and the head."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, NEOX_PAR, Classic, Plain
from ggufx.model import GGUFModel

SPEC = Classic(Plain(Dense(norm="NORM"), ffn=GELU), residual=NEOX_PAR)
BIASES = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")


def build(c: _Ctx, g: _Graph) -> _T:
    par = bool(c.model.metadata.get("gptneox.use_parallel_residual")) if c.model is not None else False
    return _plain.build_classic(c, g, SPEC, use_par_res=par)


def unbuildable(model: GGUFModel) -> str | None:
    if not isinstance(model.metadata.get("gptneox.use_parallel_residual"), bool):  # required by load_arch_hparams
        return "the gptneox graph needs gptneox.use_parallel_residual, which llama.cpp requires"
    # gptneox.cpp's load_arch_tensors: the head, the fused QKV and every bias are required
    layer = ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down")
    top = ("output.weight",)
    return _plain.needs(model, layer, top, qkv=False) or _plain.needs_biases(model, BIASES, ("output_norm.bias",))
