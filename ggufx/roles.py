"""What a tensor is, from its name.

``is_quantizable_weight`` mirrors ``tensor_allows_quantization`` in llama.cpp's
``src/llama-quant.cpp``: the tensors that ``llama-quantize`` would quantize (2-D and 3-D weight
matrices, minus norms, expert gates, positional embeddings, conv1d kernels and a few small ones).
"""

from __future__ import annotations

# substrings that llama-quant.cpp excludes for every architecture
_EXCLUDED_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_EXCLUDED_NAMES = frozenset({"position_embd.weight", "token_types.weight"})


def is_quantizable_weight(name: str, n_dims: int) -> bool:
    """Would ``llama-quantize`` (default options) quantize a tensor of this name and rank?"""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if name in _EXCLUDED_NAMES:
        return False
    return not any(s in name for s in _EXCLUDED_SUBSTRINGS)
