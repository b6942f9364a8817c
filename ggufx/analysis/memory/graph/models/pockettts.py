"""``pockettts`` (src/models/pockettts.cpp): the backbone of Kyutai's Pocket TTS (the "text" side of its flow language
model; the flow net that makes the audio latents is in the mmproj). A pre-norm decoder of layer norms with biases
(``attn_norm``, ``ffn_norm``, ``output_norm``), Q/K/V (``build_qkv``: the fused projection or the three, each
optional to the loader), normal RoPE, the attention's output projection without a bias, the last layer's rows
picked, an FFN of up, GELU and down without gate or biases (``LLM_FFN_GELU``, ``LLM_FFN_SEQ``), and logits over the
token embeddings (no lm_head: the loader's ``TENSOR_DUPLICATED`` copy of ``token_embd``, "so a sampler can still
run"). That is starcoder2.cpp's graph without its biases: :mod:`._plain`'s with a GELU FFN and layer norms."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx
from ggufx.analysis.memory.graph.models import _plain
from ggufx.analysis.memory.graph.models._dense import Dense
from ggufx.analysis.memory.graph.models._plain import GELU, Plain
from ggufx.model import GGUFModel

SPEC = Plain(Dense(norm="NORM"), ffn=GELU)
# pockettts.cpp's load_arch_tensors: the norms' biases are required
_BIASES = ("attn_norm", "ffn_norm")


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of pockettts.cpp."""
    return _plain.build(c, g, SPEC)


def unbuildable(model: GGUFModel) -> str | None:
    """A tensor the graph reads that the file lacks: the layers' weights, Q/K/V (``attn_qkv`` or the three: the
    loader takes them as optional, the graph needs them), the norms' biases."""
    return _plain.needs(model, _plain.layer_weights(SPEC), ("output_norm.bias",)) or _plain.needs_biases(model, _BIASES)
