"""``mellum`` (src/models/mellum.cpp: JetBrains Mellum): qwen3moe's layer (RMS norms of each Q and K head,
softmax-routed experts with normalized weights, no shared expert, no scale: mellum.cpp loads no
``expert_weights_scale``) with, where ``attention.sliding_window`` is set, the sliding-window layers of the
pattern (every fourth layer full by default) on their own cache. Not simulated: the experts' per-tensor
scales."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _w
from ggufx.analysis.memory.graph.models import _moe_dense
from ggufx.analysis.memory.graph.models._dense import Dense, _attention, _n
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER, routed
from ggufx.model import GGUFModel

SPEC = Dense(qk_norm="head")


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
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, SPEC)
        cur = _attention(c, g, cur, il, swa if c.swa[il] else full, iswa, SPEC)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = routed(c, g, _n(c, g, ffn_inp, b + "ffn_norm.weight", il, SPEC), il, norm_w=True)[0]
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    g.at(GLOBAL)
    cur = g.op("norm", "RMS_NORM", x)
    cur = g.op("result_norm", "MUL", cur, _w(c, "output_norm.weight", hp.n_layer))
    cur.flags |= OUTPUT
    logits = g.mul_mat("result_output", _w(c, "output.weight", hp.n_layer), cur)
    logits.flags |= OUTPUT
    return logits


def unbuildable(model: GGUFModel) -> str | None:
    scale = next((t.name for t in model.tensors if t.name.endswith("_exps.scale")), None)
    if scale:
        return f"mellum graphs with tensor {scale} are not simulated"
    if "output.weight" not in {t.name for t in model.tensors}:  # mellum.cpp's load_arch_tensors: required
        return "the graph needs tensor output.weight, which the file lacks"
    return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
