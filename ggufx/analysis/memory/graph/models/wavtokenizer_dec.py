"""``wavtokenizer-dec`` (src/models/wavtokenizer-dec.cpp): WavTokenizer's decoder, the vocoder of OuteTTS, which
turns a micro-batch of audio codes into spectrogram frames (``res->t_embd``: ``embedding_length`` = n_embd_out
values per token; no logits, no memory). Everything runs over the micro-batch's tokens as a sequence in time:

* the token rows (``build_inp_embd``: ``features_length`` wide, the loader's ``hparams.n_embd``), transposed to
  time-major (``ggml_cont(ggml_transpose)``: [T, n_embd]) and a 1-D convolution of kernel 7 to the posnet width
  (``ggml_conv_1d_ph``: ``ggml_im2col`` to an F16 [K * IC, T] matrix, then ``ggml_mul_mat`` of it by the kernel:
  [T, OC]), plus its bias;
* the six posnet blocks (wavtokenizer-dec.cpp:147-240): 0, 1, 3, 4 residual blocks (group norm with weight and
  bias, ``x * sigmoid(x)``, a kernel-3 convolution and its bias, twice, plus the block's input), 2 an attention
  block (group norm, Q/K/V as kernel-1 convolutions plus biases, Q and K transposed contiguous, ``kq = K Q`` over
  [T, T], ``ggml_soft_max_ext``, ``kq V``, the output convolution, plus the input), 5 a group norm;
* transposed back, the layer norm of ``token_embd_norm``, transposed again; the ConvNeXt blocks (:242-275): a
  depthwise kernel-7 convolution (``ggml_conv_1d_dw_ph``: an F16 im2col of [K, T, C], its product with the kernel)
  and its bias, transposed, a layer norm, ``build_ffn``'s up (+ bias), GELU, down (+ bias), times ``gamma``,
  transposed, plus the block's input;
* transposed, the output norm and the head (``output`` + its bias): ``result_embd``.

Each node's sources are llama.cpp's; the node order is ``ggml_build_forward_expand``'s of the last tensor (the
file expands nothing before it)."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _inp_embd, _w, model_of, with_pooling
from ggufx.model import GGUFModel

_RESNET = (0, 1, 3, 4)  # the posnet's residual blocks; 2 is its attention, 5 its closing norm


def _t(g: _Graph, x: _T, name: str) -> _T:
    """``ggml_cont(ggml_transpose(x))`` of a 2-D tensor."""
    return g.new(name, "CONT", "F32", (x.ne[1], x.ne[0]), g.permute(x, 1, 0, 2, 3))


def _im2col_type(kernel: _T) -> str:
    """``ggml_conv_1d``'s im2col type (ggml.c:4632): F32 for a BF16 kernel, F16 otherwise."""
    return "F32" if kernel.type == "BF16" else "F16"


def conv_1d_ph(c: _Ctx, g: _Graph, weight: str, x: _T, il: int) -> _T:
    """``ggml_conv_1d_ph`` (ggml.c:4625-4655) of the kernel ``weight`` [K, IC, OC] over the time-major ``x``
    [T, IC], then its bias: [T, OC]."""
    k = _w(c, weight + ".weight", il)
    K, IC, OC = k.ne[0], k.ne[1], k.ne[2]
    T = x.ne[0]
    col = g.new(f"im2col-{il}", "IM2COL", _im2col_type(k), (IC * K, T), k, x)
    cur = g.mul_mat(f"conv-{il}", g.reshape(col, IC * K, T), g.reshape(k, K * IC, OC))
    cur = g.reshape(cur, T, OC, 1)
    return g.op(f"conv_b-{il}", "ADD", cur, _w(c, weight + ".bias", il))


def conv_1d_dw_ph(c: _Ctx, g: _Graph, weight: str, x: _T, il: int) -> _T:
    """``ggml_conv_1d_dw_ph`` (ggml.c:4657-4685) of the depthwise kernel ``weight`` [K, 1, C] over ``x`` [T, C]:
    the im2col of [K, T, C] and its product with the kernel ([T, 1, C], reshaped [T, C]), then its bias."""
    k = _w(c, weight + ".weight", il)
    K, C = k.ne[0], k.ne[2]
    T = x.ne[0]
    b = g.reshape(x, T, 1, C, 1)
    col = g.new(f"im2col_dw-{il}", "IM2COL", _im2col_type(k), (K, T, C), k, b)
    cur = g.reshape(g.mul_mat(f"conv_dw-{il}", col, k), T, C, 1)
    return g.op(f"conv_dw_b-{il}", "ADD", cur, _w(c, weight + ".bias", il))


def group_norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int) -> _T:
    """``build_norm(LLM_NORM_GROUP)`` (llama-graph.cpp:1643-1664): ``ggml_group_norm`` of ``x`` reshaped
    [T, 1, C], reshaped back, times the weight, plus the bias."""
    T, C = x.ne[0], x.ne[1]
    cur = g.new(f"group_norm-{il}", "GROUP_NORM", "F32", (T, 1, C), g.reshape(x, T, 1, C))
    cur = g.reshape(cur, T, C)
    cur.backend = c.pin[il]  # cb(cur, "norm", il): graph_get_cb pins it to layer il's device
    cur = g.op(f"norm_w-{il}", "MUL", cur, _w(c, weight + ".weight", il))
    return g.op(f"norm_b-{il}", "ADD", cur, _w(c, weight + ".bias", il))


def layer_norm(c: _Ctx, g: _Graph, x: _T, weight: str, il: int) -> _T:
    """``build_norm(LLM_NORM)`` with the weight's layer ``il`` (-1: not pinned; the weight of the output layer)."""
    cur = g.op(f"norm-{il}", "NORM", x)
    if il >= 0:
        cur.backend = c.pin[il]
    wl = il if il >= 0 else c.hp.n_layer
    cur = g.op(f"norm_w-{il}", "MUL", cur, _w(c, weight + ".weight", wl))
    return g.op(f"norm_b-{il}", "ADD", cur, _w(c, weight + ".bias", wl))


def _swish(g: _Graph, x: _T, il: int) -> _T:
    """``ggml_mul(ggml_sigmoid(x), x)``."""
    return g.op(f"swish-{il}", "MUL", g.op(f"sigmoid-{il}", "UNARY", x), x)


def _posnet(c: _Ctx, g: _Graph, cur: _T, il: int) -> _T:
    """Posnet block ``il`` over ``cur`` [T, C]."""
    p = f"posnet.{il}."
    inp = cur
    if il in _RESNET:
        cur = _swish(g, group_norm(c, g, cur, p + "norm1", 0), il)
        cur = conv_1d_ph(c, g, p + "conv1", cur, 0)
        cur = _swish(g, group_norm(c, g, cur, p + "norm2", 0), il)
        cur = conv_1d_ph(c, g, p + "conv2", cur, 0)
        return g.op(f"posnet_out-{il}", "ADD", cur, inp)
    if il == 2:
        cur = group_norm(c, g, cur, p + "attn_norm", 0)
        q = _t(g, conv_1d_ph(c, g, p + "attn_q", cur, 0), f"q-{il}")
        k = _t(g, conv_1d_ph(c, g, p + "attn_k", cur, 0), f"k-{il}")
        v = conv_1d_ph(c, g, p + "attn_v", cur, 0)
        kq = g.op(f"kq_soft_max-{il}", "SOFT_MAX", g.mul_mat(f"kq-{il}", k, q))
        cur = g.mul_mat(f"kqv-{il}", kq, v)
        cur = conv_1d_ph(c, g, p + "attn_output", cur, 0)
        return g.op(f"posnet_out-{il}", "ADD", cur, inp)
    return group_norm(c, g, cur, p + "attn_norm", 0)  # block 5: LLM_TENSOR_POS_NET_ATTN_NORM's names


def layer_kind(il: int) -> int:
    """Every layer of its own kind: the graph's blocks are not the file's ``block_count`` layers (the posnet and
    ConvNeXt blocks are counted apart, and no ``blk.N`` weight says which is which), so the allocator replay never
    leaves a run of "identical" layers out: the whole graph is replayed."""
    return il


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of wavtokenizer-dec.cpp (every tensor made outside any layer's position: see :func:`layer_kind`)."""
    g.at(GLOBAL)
    md = model_of(c).metadata
    arch = c.hp.arch
    n_posnet = md.get_int(f"{arch}.posnet.block_count") or 0
    n_convnext = md.get_int(f"{arch}.convnext.block_count") or 0
    x = _inp_embd(c, g)  # features_length wide: hparams' n_embd (llama-model.cpp:1347)
    cur = conv_1d_ph(c, g, "conv1d", _t(g, x, "embd_t"), 0)
    for il in range(n_posnet):
        cur = _posnet(c, g, cur, il)
    cur = _t(g, layer_norm(c, g, _t(g, cur, "posnet_t"), "token_embd_norm", 0), "tok_norm_t")
    inp = cur
    for il in range(n_convnext):
        p = f"convnext.{il}."
        cur = _t(g, conv_1d_dw_ph(c, g, p + "dw", inp, il), f"dw_t-{il}")
        cur = layer_norm(c, g, cur, p + "norm", -1)
        cur = g.mul_mat(f"ffn_up-{il}", _w(c, p + "pw1.weight", il), cur)
        cur = g.op(f"ffn_up_b-{il}", "ADD", cur, _w(c, p + "pw1.bias", il))
        cur = g.op(f"ffn_gelu-{il}", "UNARY", cur)
        cur = g.mul_mat(f"ffn_down-{il}", _w(c, p + "pw2.weight", il), cur)
        cur = g.op(f"ffn_down_b-{il}", "ADD", cur, _w(c, p + "pw2.bias", il))
        cur = g.op(f"gamma-{il}", "MUL", cur, _w(c, p + "gamma.weight", il))
        inp = g.op(f"convnext_out-{il}", "ADD", _t(g, cur, f"convnext_t-{il}"), inp)
    n_layer = c.hp.n_layer
    cur = layer_norm(c, g, _t(g, inp, "out_t"), "output_norm", -1)
    cur = g.mul_mat("result_embd", _w(c, "output.weight", n_layer), cur)
    cur = g.op("result_embd", "ADD", cur, _w(c, "output.bias", n_layer))
    cur.flags |= OUTPUT
    return with_pooling(c, g, cur, cur)  # res->t_embd: an embedding run pools it (build_pooling)


def _tensors(model: GGUFModel) -> list[str]:
    """The tensors wavtokenizer-dec.cpp's loader requires (every one is read by the graph)."""
    md, arch = model.metadata, model.architecture
    n_posnet = md.get_int(f"{arch}.posnet.block_count") or 0
    n_convnext = md.get_int(f"{arch}.convnext.block_count") or 0
    names = ["token_embd.weight", "conv1d.weight", "conv1d.bias", "token_embd_norm.weight", "token_embd_norm.bias"]
    for il in range(n_posnet):
        p = f"posnet.{il}."
        if il in _RESNET:
            parts: tuple[str, ...] = ("norm1", "conv1", "norm2", "conv2")
        elif il == 2:
            parts = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output")
        else:
            parts = ("attn_norm",)
        names += [p + r + s for r in parts for s in (".weight", ".bias")]
    for il in range(n_convnext):
        p = f"convnext.{il}."
        names += [p + r + s for r in ("dw", "norm", "pw1", "pw2") for s in (".weight", ".bias")]
        names.append(p + "gamma.weight")
    return names + ["output_norm.weight", "output_norm.bias", "output.weight", "output.bias"]


def unbuildable(model: GGUFModel) -> str | None:
    """Why this file's graph cannot be built: a posnet.block_count past 6 (the loader and the graph abort on a
    seventh block: "unknown posnet layer") or missing (a required key), or a tensor the loader requires missing."""
    arch = model.architecture
    n_posnet = model.metadata.get_int(f"{arch}.posnet.block_count")
    if n_posnet is None or not 0 <= n_posnet <= 6:
        return f"{arch}.posnet.block_count is {n_posnet}: llama.cpp knows 6 posnet blocks and aborts past them"
    names = {t.name for t in model.tensors}
    missing = next((n for n in _tensors(model) if n not in names), None)
    return f"the graph needs tensor {missing}, which the file lacks" if missing else None
