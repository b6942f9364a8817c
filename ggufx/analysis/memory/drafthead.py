"""Speculative draft heads that read the target's hidden states: EAGLE3 (``eagle3``) and DFlash (``dflash``), run by
``llama-server -m TARGET -md HEAD --spec-type draft-eagle3`` (or ``draft-dflash``; llama.cpp infers draft-dflash
from a dflash file when no type is given).

What they change beside the draft context itself (whose weights, KV cache, output and compute buffers
:func:`ggufx.analysis.memory.buffers.breakdown` sizes from the head's file, graph/models/eagle3.py and dflash.py):

* the target context reserves ``-np x (1 + n_max)`` outputs in llama-server (``server_output_limits``,
  tools/server/server-context.cpp:42-54, ``common_speculative_n_max`` counts draft-eagle3 and draft-dflash), as
  with draft-mtp (:func:`ggufx.analysis.memory.mtp.main_context`);
* the speculative implementation turns on the extraction of the target layers' inputs
  (``llama_set_embeddings_layer_inp``, common/speculative.cpp:598-607, :1115-1118), so at its next decode the target
  context's output buffer grows by ``n_embd x n_batch`` floats per extracted layer (``output_reserve``,
  llama-context.cpp:2153-2157; EAGLE3's layer id ``n_layer`` is the unmasked ``h_nextn``, as many floats): kind
  ``draft_features``, on the target's output buffer type. llama.cpp logs no line for it (its reallocation message
  is a debug build's);
* and re-reserves the target's graph with those layer inputs kept as outputs (``sched_need_reserve``,
  llama-context.cpp:1239-1247; ``llm_graph_result::set_outputs``): its compute buffer after the first request can be
  larger than the one logged at load (not modelled here: a note says so).
"""

from __future__ import annotations

from dataclasses import replace

from ggufx.analysis.memory.buffers import Buffer, ContextParams
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.placement import Device, OffloadParams, host_buft, place
from ggufx.model import GGUFModel

HEADS = ("eagle3", "dflash")
SPEC_TYPE = {"eagle3": "draft-eagle3", "dflash": "draft-dflash"}


def is_head(model: GGUFModel | None) -> bool:
    return model is not None and model.architecture in HEADS


def target_layers(model: GGUFModel) -> list[int]:
    """``{arch}.target_layers``: the target layers whose inputs the head reads."""
    v = model.metadata.get(f"{model.architecture}.target_layers")
    return [int(x) for x in v] if v is not None else []


def alone_refusal(model: GGUFModel) -> str | None:
    """Why llama.cpp cannot size a head's context alone (None: not a head). A head that borrows the target's
    ``token_embd`` or ``output`` (llama-context.cpp:158-165): "<arch> requires ctx_other to be set"; one that has
    both runs only as a draft all the same (nothing but a speculative decoder feeds its fused features)."""
    arch = model.architecture
    if arch not in HEADS:
        return None
    names = {t.name for t in model.tensors}
    how = f"run it beside its target: llama-server -m TARGET -md {model.path} --spec-type {SPEC_TYPE[arch]}"
    if "token_embd.weight" not in names or "output.weight" not in names:
        return f"{arch} requires ctx_other to be set (llama.cpp's words: the head borrows the target's weights); {how}"
    return f"{model.path} is a {arch} speculative draft head, not a model llama.cpp runs alone; {how}"


def pair_refusal(target: GGUFModel, head: GGUFModel) -> str | None:
    """Why llama.cpp would not run ``head`` for ``target`` (None: it does): EAGLE3 needs 3 extract layers
    (common/speculative.cpp:560-564) and aborts on a layer id past the target's (:598-607); DFlash extracts layer
    inputs only (ids up to the target's n_layer, llama_context::set_embeddings_layer_inp's assert)."""
    arch = head.architecture or ""
    ids = target_layers(head)
    n_layer = hparams(target).n_layer
    if arch == "eagle3" and len(ids) != 3:
        return f"draft model is not eagle3 (expected 3 extract layers, got {len(ids)})"
    if not ids:
        return "DFlash model has no target_layer_ids"
    bad = next((i for i in ids if i > n_layer or i < 0), None)
    if bad is not None:
        return f"{arch.upper()}: target layer id {bad} exceeds target n_layer {n_layer}"
    return None


def target_context(context: ContextParams, n_max: int, server: bool) -> ContextParams:
    """The target context under draft-eagle3 / draft-dflash: llama-server reserves ``-np x (1 + n_max)`` outputs
    (capped at ``-b``), as under draft-mtp."""
    if not server:
        return context
    return replace(context, n_outputs_max=min(context.n_batch, context.n_parallel * (1 + max(0, n_max))))


def feature_buffers(
    target: GGUFModel, head: GGUFModel, devices: list[Device], offload: OffloadParams, context: ContextParams
) -> list[Buffer]:
    """The target's output buffer growth once the head's speculative implementation extracts its layers:
    ``n_embd x n_batch`` floats per extracted layer (``n_batch``: ``min(n_ctx, -b)``, llama-context.cpp:248), on
    the host buffer type of the target's output device."""
    hp = hparams(target)
    n_ctx = context.n_ctx or hp.n_ctx_train
    n_batch = min(n_ctx, context.n_batch)
    ids = sorted(set(target_layers(head)))
    pl = place(target, devices, offload)
    buft = host_buft(pl.layer_device[hp.n_layer])
    return [Buffer("draft_features", buft, 4 * hp.n_embd * n_batch * len(ids))] if ids else []
