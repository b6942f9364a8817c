"""``plamo3`` (src/models/plamo3.cpp: PLaMo 3): the fused QKV projection (per-layer heads), RMS norms of each Q
and K head, RoPE, norms after the attention and after the FFN (both built with the layer: pinned), the fused
up projection's SwiGLU over its halves; with ``attention.sliding_window`` the sliding-window layers of the
pattern (every eighth layer full by default) on their own cache.

plamo3.cpp's loader names the two post norms without a suffix (``tn(LLM_TENSOR_ATTN_POST_NORM, i)``:
``blk.N.post_attention_norm`` and ``blk.N.post_ffw_norm``), and requires them so."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd
from ggufx.analysis.memory.graph.models._dense import Dense, _ffn, _n, output, tied_head
from ggufx.analysis.memory.graph.models._plain import attention_classic
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head", fused_up=True)
LAYER = (
    "attn_norm.weight",
    "attn_qkv.weight",
    "attn_q_norm.weight",
    "attn_k_norm.weight",
    "attn_output.weight",
    "post_attention_norm",
    "ffn_norm.weight",
    "post_ffw_norm",
    "ffn_up.weight",
    "ffn_down.weight",
)


def build(c: _Ctx, g: _Graph) -> _T:
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    iswa = any(c.swa)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    for pos, il in enumerate(c.layers):
        g.at(pos)
        b = f"blk.{il}."
        residual = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, SPEC)
        cur = attention_classic(c, g, cur, il, swa if c.swa[il] else full, SPEC, iswa=iswa)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            residual = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), residual, out_ids)
        cur = _n(c, g, cur, b + "post_attention_norm", il, SPEC)
        residual = g.op(f"ffn_inp-{il}", "ADD", cur, residual)
        cur = _ffn(c, g, _n(c, g, residual, b + "ffn_norm.weight", il, SPEC), il, SPEC)
        cur = _n(c, g, cur, b + "post_ffw_norm", il, SPEC)
        x = g.op(f"l_out-{il}", "ADD", cur, residual)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    # plamo3.cpp's load_arch_tensors: these, the post norms without a suffix
    names = {t.name for t in model.tensors}
    n_layer = model.metadata.get_int("plamo3.block_count") or 0
    needed = ["token_embd.weight", "output_norm.weight"]
    needed += [f"blk.{il}.{n}" for il in range(min(n_layer, 513)) for n in LAYER]
    missing = next((n for n in needed if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
