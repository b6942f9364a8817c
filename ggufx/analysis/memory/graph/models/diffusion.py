"""The diffusion language models: ``dream`` (src/models/dream.cpp: Dream-v0-7B, qwen2's layer), ``llada``
(src/models/llada.cpp: LLaDA-8B, llama's layer), ``llada-moe`` (src/models/llada-moe.cpp: LLaDA-MoE-7B-A1B) and
``rnd1`` (src/models/rnd1.cpp: RND1, qwen3moe's layer). llama-diffusion-cli denoises a whole sequence at once:
llama.cpp makes no memory for them (create_memory: ``res = nullptr``) and sets ``causal_attn`` false, so each
layer attends over the micro-batch alone (``build_attn_inp_no_cache``: one ``[n_tokens, n_tokens]`` mask; with
flash attention K and V cast to F16, :func:`.bert.attn_no_cache`).

Their graphs are llama.cpp's qwen2 (dream), llama (llada) and qwen3moe (llada-moe, rnd1) graphs but for that
attention: the token rows, the positions, the mask, the output rows; per layer the RMS norm, Q/K/V
(``build_qkv``: separate or fused, with the file's biases), llada-moe's and rnd1's RMS norms of each Q and K head,
RoPE (no ``rope_freqs``: llada loads them, its graph passes none), the attention and its output (dream and rnd1 add
the file's ``attn_output.bias``; llada's graph passes none), the last layer's rows, the residual, the FFN's RMS
norm, the FFN (dream, llada: SwiGLU over ``ffn_gate`` and ``ffn_up`` without biases, llada's optional ones unread;
llada-moe, rnd1: softmax-routed experts, weights normalized in rnd1 only, no scale), the residual; the output RMS
norm and the logits (no output bias: dream loads one, its graph passes none)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _proj, _w
from ggufx.analysis.memory.graph.models import _moe_dense, deepseek2
from ggufx.analysis.memory.graph.models._dense import Dense, _n, _qkv, output, tied_head
from ggufx.analysis.memory.graph.models._moe_dense import EXPERTS, ROUTER
from ggufx.analysis.memory.graph.models.bert import attn_no_cache
from ggufx.analysis.memory.hparams import hparams
from ggufx.model import GGUFModel

_RMS = Dense()
# llm_arch_is_diffusion (llama-arch.cpp): the architectures llama-diffusion-cli runs (llama_model_is_diffusion)
DIFFUSION = ("dream", "llada", "llada-moe", "rnd1")
MOE = ("llada-moe", "rnd1")
# the expert weights normalized per token (build_moe_ffn's norm_w): rnd1.cpp true, llada-moe.cpp false
_NORM_W = {"llada-moe": False, "rnd1": True}
# attn_output.bias added after the output projection: dream.cpp and rnd1.cpp pass wo_b, llada.cpp and llada-moe.cpp NULL
_WO_BIAS = ("dream", "rnd1")


def build(c: _Ctx, g: _Graph) -> _T:
    """dream.cpp's, llada.cpp's, llada-moe.cpp's and rnd1.cpp's graphs."""
    hp, T, E, n_out = c.hp, c.n_tokens, c.hp.n_embd, c.n_outputs
    arch = hp.arch or ""
    moe = arch in MOE
    x = _inp_embd(c, g)
    c.pos = g.input("inp_pos", "I32", T)
    mask = g.input("self_kq_mask", "F16" if c.sp.flash_attn else "F32", T, T, 1, 1)
    out_ids = g.input("out_ids", "I32", n_out)
    for p, il in enumerate(c.layers):
        g.at(p)
        b = f"blk.{il}."
        inp_sa = x
        cur = _n(c, g, x, b + "attn_norm.weight", il, _RMS)
        q, k, v = _qkv(c, g, cur, il, reshape=True)
        if moe:  # llada-moe.cpp, rnd1.cpp: RMS norm of each Q and K head before RoPE
            q = _n(c, g, q, b + "attn_q_norm.weight", il, _RMS)
            k = _n(c, g, k, b + "attn_k_norm.weight", il, _RMS)
        q = g.new(f"Qcur-{il}", "ROPE", "F32", q.ne, q, c.pos)
        k = g.new(f"Kcur-{il}", "ROPE", "F32", k.ne, k, c.pos)
        cur = attn_no_cache(c, g, q, k, v, il, mask)
        if arch in _WO_BIAS:
            cur = _proj(c, g, f"attn_out-{il}", b + "attn_output", cur, il)
        else:
            cur = g.mul_mat(f"attn_out-{il}", _w(c, b + "attn_output.weight", il), cur)
        if il == hp.n_layer - 1:
            cur = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), cur, out_ids)
            inp_sa = g.new("node_rows", "GET_ROWS", "F32", (E, n_out), inp_sa, out_ids)
        ffn_inp = g.op(f"ffn_inp-{il}", "ADD", cur, inp_sa)
        cur = _n(c, g, ffn_inp, b + "ffn_norm.weight", il, _RMS)
        if moe:
            cur = _moe_dense.routed(c, g, cur, il, norm_w=_NORM_W[arch])[0]
        else:  # build_ffn(up, gate, down) without biases, SiLU, parallel gate
            cur = deepseek2.ffn(c, g, cur, il)
        x = g.op(f"l_out-{il}", "ADD", cur, ffn_inp)
    return output(c, g, x, tied_head(c))


def unbuildable(model: GGUFModel) -> str | None:
    """Why the graph cannot be built from this file (None when it can): equal Q/K/V head widths (the four files
    assert them), the expert counts, and the tensors the graph reads (what their load_arch_tensors require)."""
    hp = hparams(model)
    if hp.head_k <= 0 or hp.head_k != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0"
    if model.architecture in MOE:
        return _moe_dense.unbuildable(model, lambda il: (["attn_q_norm", "attn_k_norm", *ROUTER], EXPERTS))
    names = {t.name for t in model.tensors}
    need = ["token_embd.weight", "output_norm.weight"]
    for il in range(min(hp.n_layer, 513)):
        p = f"blk.{il}."
        if p + "attn_qkv.weight" not in names:
            need += [p + f"attn_{n}.weight" for n in "qkv"]
        need += [p + n + ".weight" for n in ("attn_norm", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")]
    missing = next((x for x in need if x not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None


def tool_output_bytes(n_vocab: int, n_ubatch: int, n_seq_max: int = 1) -> int:
    """The output buffer llama-diffusion-cli's run grows to (not the one the context starts with, which ggufx's
    breakdown gives as llama.cpp prints it): the tool denoises ``max_length = -ub`` tokens, every one asking for
    logits (examples/diffusion/diffusion.cpp ``batch.add(..., true)``), so the first decode's ``output_reserve``
    (llama-context.cpp) frees the context's buffer of ``n_seq_max`` rows and allocates ``n_vocab`` floats for each
    of the ``n_ubatch`` tokens (no embeddings, no backend samplers)."""
    return 4 * n_vocab * max(n_ubatch, n_seq_max)
