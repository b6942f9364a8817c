"""``hy_v3`` (src/models/hy-v3.cpp: Hunyuan's MoE): the llama-style attention with RMS norms of each Q and
K head before RoPE; a dense FFN in the layers without a router (``ffn_gate_inp`` absent: the leading dense
blocks, no ``leading_dense_block_count`` key), else the routed experts (sigmoid gating unless the file says
otherwise, the selection bias ``blk.N.exp_probs_b`` -- without dots1's ``.bias`` suffix --, the file's
``expert_weights_norm`` and ``expert_weights_scale``) plus the ungated shared expert. With
``embeddings_nextn_masked`` false (llama-context.cpp:122) the last layer keeps every row: the output norm
is the hidden state handed to MTP (``t_h_nextn``, an output), the rows are picked after it. The MTP blocks
(``nextn_predict_layers``) are left out, as llama.cpp leaves them from the main graph."""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _attn_inp, _Ctx, _inp_embd, _weight
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2, qwen3next
from ggufx.analysis.memory.graph.models._dense import Dense, _n, nextn_output
from ggufx.analysis.memory.graph.models._dense import _ffn as dense_ffn
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, GATINGS, ROUTER, SHARED, shared
from ggufx.analysis.memory.graph.models._plain import attention
from ggufx.analysis.memory.graph.models.deepseek2 import SIGMOID
from ggufx.model import GGUFModel

ATTN = Dense(qk_norm="head")


def ffn(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """hy-v3.cpp:178-215: ``build_ffn`` where the layer has no router; else ``build_moe_ffn`` (the gating
    of the file, sigmoid by default: hy-v3.cpp:11-13) plus the shared expert's ``build_ffn``."""
    if _weight(c, f"blk.{il}.ffn_gate_inp.weight", il) is None:
        return dense_ffn(c, g, cur, il, ATTN)
    mp = deepseek2.moe_params(c)
    mp = replace(mp, n_used=qwen3next.n_expert_used(c), n_lead=0)
    # deepseek2.moe_ffn finds the selection bias under dots1's name (LLM_TENSOR_FFN_EXP_PROBS_B + "bias");
    # hy-v3.cpp:69 creates it without the suffix: the same tensor, looked up under both names
    bias = c.by_name.get(f"blk.{il}.exp_probs_b")
    if bias:
        c.by_name.setdefault(f"blk.{il}.exp_probs_b.bias", bias)
    moe, r = deepseek2.moe_ffn(c, g, cur, il, mp, mp.gating or SIGMOID)
    return g.op(f"ffn_out-{il}", "ADD", moe, shared(c, g, cur, il, r))


def build(c: _Ctx, g: _Graph) -> _T:
    """hy-v3.cpp ``graph::graph``: per trunk layer the attention norm, the attention, the residual, the FFN
    norm, :func:`ffn`, the residual; then the output norm (``t_h_nextn``), the rows, the head."""
    hp, sp = c.hp, c.sp
    T, n_out = c.n_tokens, c.n_outputs
    last = hp.n_layer_main - 1
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    inp = _attn_inp(c, g, sp.n_kv)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        if il > last:  # an MTP block: not in the main graph
            continue
        g.at(p)
        b = f"blk.{il}."
        cur = _n(c, g, x, b + "attn_norm.weight", il, ATTN)
        cur = attention(c, g, cur, il, inp, ATTN)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, x)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, ATTN)
        x = g.op(f"l_out-{il}", "ADD", ffn(c, g, cur, il), ffn_inp)
    return nextn_output(c, g, x, out_ids)


def unbuildable(model: GGUFModel) -> str | None:
    """The gating function (``build_moe_ffn`` aborts on none; hy-v3.cpp turns none into sigmoid), the
    expert counts, and per trunk layer the Q/K norms and the dense FFN, or the router, experts and shared
    expert (the loader takes each as not required; the graph uses them)."""
    arch = model.architecture or ""
    md = model.metadata
    gating = md.get_int(f"{arch}.expert_gating_func") or SIGMOID
    if gating not in GATINGS:
        return f"the graph needs {arch}.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not {gating}"
    n_trunk = (md.get_int(f"{arch}.block_count") or 0) - (md.get_int(f"{arch}.nextn_predict_layers") or 0)
    names = {t.name for t in model.tensors}

    def needed(il: int) -> tuple[list[str], list[str]]:
        if il >= n_trunk:  # an MTP block (TENSOR_SKIP): not in the graph
            return [], []
        if f"blk.{il}.ffn_gate_inp.weight" not in names:
            return ["attn_q_norm", "attn_k_norm", "ffn_gate", "ffn_up", "ffn_down"], []
        return ["attn_q_norm", "attn_k_norm", *ROUTER, *SHARED], EXPERTS

    return _moe_dense.unbuildable(model, needed)
