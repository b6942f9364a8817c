"""``qwen3tts`` (src/models/qwen3tts.cpp): the talker of Qwen3-TTS, which ``llama_model_qwen3tts`` runs as
``llama_model_qwen3vl`` (models.h: the subclass overrides nothing): qwen3vl.cpp's loader, hyper-parameters and
graph. Two things differ from a Qwen3-VL text decoder, both in qwen3vl.cpp:

* the loader (qwen3vl.cpp:19-29): ``output.weight`` is the codec head of ``n_vocab_out = 3072`` rows while
  ``token_embd.weight`` holds the text vocabulary and the codec tokens (convert's qwen3tts.py: ``text_vocab_size``
  + the codec's ``vocab_size``);
* the logits (qwen3vl.cpp:175-191): when the embeddings have more rows than the head, the head's logits are padded
  in front with ``-inf`` to the vocabulary's width: a one-element view of ``output_norm`` scaled to ``-inf``
  (``ggml_scale_bias``), repeated to ``pad x n_outputs`` (``ggml_repeat_4d``) and concatenated before the logits
  (``ggml_concat`` along dim 0). The final ``ggml_build_forward_expand`` visits the concat's first source first,
  so the scale and the repeat come after the nodes build_attn expanded (the last layer's attention) and before the
  rest of the last layer (its output projection and FFN): the repeated ``-inf`` block is allocated over those and
  the head's product until the concat.

The decoder itself is qwen3vl's (:func:`ggufx.analysis.memory.graph.models.qwen3vl.decoder`); a file whose head
is as wide as its embeddings (or tied to them) is qwen3vl's graph exactly."""

from __future__ import annotations

from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, OUTPUT, _Graph
from ggufx.analysis.memory.graph.llm import _Ctx, _w, with_pooling
from ggufx.analysis.memory.graph.models import qwen3vl
from ggufx.analysis.memory.graph.models._dense import dense_unbuildable
from ggufx.model import GGUFModel


def padded_logits(c: _Ctx, g: _Graph, logits: _T) -> _T:
    """qwen3vl.cpp:175-191: the head's logits (``result_output``, no longer the graph's output) padded in front
    with ``-inf`` to the embeddings' row count when the head is narrower; the logits as they are otherwise."""
    n_layer = c.hp.n_layer
    n_vocab_in = _w(c, "token_embd.weight", -1).ne[1]
    head = logits.src[0]
    pad = n_vocab_in - head.ne[1]
    if pad <= 0:  # the same width (pad < 0: llama.cpp aborts, "invalid case"; the loader refuses it first)
        return logits
    logits.flags &= ~OUTPUT
    g.at(GLOBAL)
    norm_w = _w(c, "output_norm.weight", n_layer)
    one = g.view(norm_w, (1,), (norm_w.nb[0],))
    neg_inf = g.new("neg_inf", "SCALE", "F32", (1,), one)
    neg_inf = g.new("neg_inf_rep", "REPEAT", "F32", (pad, logits.ne[1]), neg_inf)
    out = g.new("result_output", "CONCAT", "F32", (pad + logits.ne[0], logits.ne[1]), neg_inf, logits)
    out.flags |= OUTPUT
    return out


def build(c: _Ctx, g: _Graph) -> _T:
    """The graph of qwen3vl.cpp as a Qwen3-TTS file runs it; in an embedding run (llama-tts runs the talker with
    embeddings on) ``build_pooling`` over its ``result_norm`` after the padded logits (the padding hides
    ``result_norm`` from graphsim's walk back from the logits, so the builder pools itself)."""
    logits = qwen3vl.build(c, g)
    return with_pooling(c, g, padded_logits(c, g, logits), logits.src[1])


def unbuildable(model: GGUFModel) -> str | None:
    """Why this qwen3tts file's graph cannot be built: the M-RoPE sections or a tensor the graph reads missing
    (llama.cpp refuses the file), or a head wider than the embeddings (qwen3vl.cpp:189 aborts)."""
    if f"{model.architecture}.rope.dimension_sections" not in model.metadata:  # read required (qwen3vl.cpp:5)
        return f"the graph needs the metadata key {model.architecture}.rope.dimension_sections, which the file lacks"
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    out, tok = tensors.get("output.weight"), tensors.get("token_embd.weight")
    if out and tok and len(out) == 2 and len(tok) == 2 and out[1] > tok[1]:
        return "the output head is wider than the vocabulary (llama.cpp aborts: qwen3vl.cpp:189)"
    return dense_unbuildable(model, qwen3vl.SPEC)
