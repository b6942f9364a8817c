"""The llama-style decoders: ``llama`` (src/models/llama.cpp: Llama 3, SmolLM2), and the builders that
differ from it only where this one switches on the architecture: ``gemma3`` (src/models/gemma3.cpp:
the scaled embeddings, Q/K norms, post-attention and post-FFN norms, sliding-window layers on their
own cache and mask) and ``qwen3moe`` (src/models/qwen3moe.cpp: Q/K norms, the MoE FFN)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn, _attn_inp, _Ctx, _inp_embd, _moe_ffn, _norm, _proj
from ggufx.analysis.memory.graph.models._dense import output, tied_head


def build(c: _Ctx, g: _Graph) -> _T:
    """The transformer of ``llama`` (src/models/llama.cpp), ``qwen3moe`` (src/models/qwen3moe.cpp)
    and ``gemma3`` (src/models/gemma3.cpp, sliding-window layers on their own cache and mask)."""
    hp, sp = c.hp, c.sp
    T, n_out, E = c.n_tokens, c.n_outputs, hp.n_embd
    gemma = hp.arch == "gemma3"
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    iswa = any(c.swa)
    full = _attn_inp(c, g, sp.n_kv)
    swa = _attn_inp(c, g, c.n_kv_swa) if iswa else full
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        inp_sa = x
        cur = _norm(c, g, x, f"blk.{il}.attn_norm.weight", il)
        cur = _attn(c, g, cur, il, swa if c.swa[il] else full, iswa)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        if gemma:
            cur = _norm(c, g, cur, f"blk.{il}.post_attention_norm.weight", il)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _norm(c, g, ffn_inp, f"blk.{il}.ffn_norm.weight", il)
        if c.moe is not None:
            cur = _moe_ffn(c, g, cur, il)
        else:
            gate = _proj(c, g, f"ffn_gate-{il}", f"blk.{il}.ffn_gate", cur, il)
            up = _proj(c, g, f"ffn_up-{il}", f"blk.{il}.ffn_up", cur, il)
            cur = g.new(f"ffn_glu-{il}", "GLU", "F32", gate.ne, gate, up)
            cur = _proj(c, g, f"ffn_out-{il}", f"blk.{il}.ffn_down", cur, il)
        if gemma:  # the post-FFN norm is built with il = -1 (gemma3.cpp:188): not pinned
            cur = _norm(c, g, cur, f"blk.{il}.post_ffw_norm.weight", il, pin=False)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))
