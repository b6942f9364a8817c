"""Speculative draft heads that read the target's hidden states: EAGLE3 (``eagle3``) and DFlash (``dflash``), run by
``llama-server -m TARGET -md HEAD --spec-type draft-eagle3`` (or ``draft-dflash``; llama.cpp infers draft-dflash
from a dflash file when no type is given).

What they change beside the draft context itself (whose weights, KV cache, output and compute buffers
:func:`ggufx.analysis.memory.buffers.breakdown` sizes from the head's file, graph/models/eagle3.py and dflash.py):

* the target context reserves ``-np x (1 + n_max)`` outputs in llama-server (``server_output_limits``,
  tools/server/server-context.cpp:42-54, ``common_speculative_n_max`` counts draft-eagle3 and draft-dflash), as
  with draft-mtp (:func:`ggufx.analysis.memory.mtp.main_context`);
* the target's output buffer holds the logits of the outputs it verifies: as many rows as the largest decode's
  outputs, up to ``-np x (1 + n_max)`` (``output_reserve``; kind ``draft_verify_output``, beyond the ``-np`` rows of
  load);
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

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ggufx.analysis.memory.buffers import Buffer, ContextParams
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.placement import Device, OffloadParams, host_buft, place
from ggufx.errors import InputError
from ggufx.model import GGUFModel

if TYPE_CHECKING:
    from ggufx.analysis.memory.graph.ggml import _T

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
    graph = target_graph(target)
    if graph not in LAYER_INPUT_GRAPHS and any(0 <= i < n_layer for i in ids):
        return (
            f"the target's graph ({graph}.cpp) names no layer inputs: llama.cpp fails its first decode with the head "
            '(llm_graph_result::set_outputs: "layer input tensor is null")'
        )
    if arch == "eagle3" and len(ids) != 3:
        return f"draft model is not eagle3 (expected 3 extract layers, got {len(ids)})"
    if not ids:
        return "DFlash model has no target_layer_ids"
    bad = next((i for i in ids if i > n_layer or i < 0), None)
    if bad is not None:
        return f"{arch.upper()}: target layer id {bad} exceeds target n_layer {n_layer}"
    return None


def head_contexts(
    head: GGUFModel, context: ContextParams, draft_context: ContextParams, n_max: int, server: bool
) -> tuple[ContextParams, ContextParams]:
    """The target's and the head's context parameters: llama-server's ``-np x (1 + n_max)`` target outputs
    (:func:`target_context`); a DFlash draft samples ``n_max + 1`` rows per sequence (common/speculative.cpp
    ``common_context_params_to_llama``: ``n_outputs_max = n_parallel x (n_max + 1)`` for a block draft; its context
    reserves ``n_batch`` outputs all the same, llama_model_has_encoder), carried as the draft context's outputs."""
    if head.architecture == "dflash":
        draft_context = replace(draft_context, n_outputs_max=draft_context.n_parallel * max(1, n_max + 1))
    return target_context(context, n_max, server), draft_context


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
    out = [Buffer("draft_features", buft, 4 * hp.n_embd * n_batch * len(ids))] if ids else []
    # the logits of the drafted outputs it verifies: output_reserve keeps max(outputs, n_seq) rows of a decode, at
    # most the context's n_outputs_max (-np x (1 + n_max) in llama-server: every slot verifying at once)
    n_seq = max(1, context.n_parallel)
    rows = min(n_batch, context.n_outputs_max or n_batch)
    if rows > n_seq:
        out.append(Buffer("draft_verify_output", buft, 4 * hp.n_vocab * (rows - n_seq)))
    return out


# the llama.cpp graphs that name their layer inputs (``res->t_layer_inp[il] = inpL``, src/models/*.cpp): the targets a
# head can extract from; any other target fails the first decode on llm_graph_result::set_outputs' assert ("layer
# input tensor is null", llama-graph.cpp:1413)
LAYER_INPUT_GRAPHS = frozenset(
    {
        "llama", "qwen3", "qwen3moe", "qwen35", "qwen35moe", "qwen3next", "gemma4", "openai_moe", "minimax_m2",
        "lfm2", "nemotron_h", "mimo2", "bailingmoe3", "deepseek4", "hunyuan_vl", "muse_glimmer", "nanbeige",
        "minimax_01", "qwen4exp",
    }
)  # fmt: skip
# the target graphs whose re-reservation with the extracted layer inputs kept as outputs ggufx replays (their
# builders' layer input is the source of the layer's first norm, "norm-{il}"; proven on recorded requests)
FEATURES_COMPUTE_GRAPHS = frozenset({"llama", "qwen3"})


def target_graph(model: GGUFModel) -> str:
    from ggufx.analysis.memory.archs import arch_of

    a = arch_of(model.architecture)
    return a.llama_graph if a is not None else (model.architecture or "")


def extracted_inputs(model: GGUFModel, head: GGUFModel) -> list[int]:
    """The target layers whose *inputs* the head extracts (ids below the target's n_layer; EAGLE3's id n_layer is
    the target's ``h_nextn`` instead, which llama and qwen3 graphs do not make)."""
    n_layer = hparams(model).n_layer
    return sorted({i for i in target_layers(head) if 0 <= i < n_layer})


def features_compute(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, context: ContextParams, ids: list[int]
) -> dict[str, int]:
    """The target's compute buffers once the head extracts the inputs of layers ``ids``: llama.cpp reserves the
    graph again (a new scheduler, llama-context.cpp sched_reserve) with each such layer input an output
    (``llm_graph_result::set_outputs``): ggml-alloc never frees nor reuses them in place. The whole graph of the
    prompt-processing and token-generation reservations is replayed (no shortcut: the outputs break the layers'
    periodicity). Bytes by buffer type."""
    from ggufx.analysis.memory.buffers import breakdown
    from ggufx.analysis.memory.graph import graphsim
    from ggufx.analysis.memory.graph.galloc import _reserve
    from ggufx.analysis.memory.graph.ggml import OUTPUT, _Graph
    from ggufx.analysis.memory.graph.sched import N_COPIES, _Sched

    sp = breakdown(model, devices, offload, context).reservation
    if sp is None:
        return {}
    ld = graphsim._loaded(model, devices, offload)
    out: list[dict[str, int]] = []
    for n_tokens, n_outputs in ((sp.n_ubatch, sp.n_outputs), (sp.n_seq_max, sp.n_seq_max)):
        c = graphsim._context(model, ld, sp, n_tokens, n_outputs)
        c.layers = list(range(ld.hp.n_layer))
        g = _Graph()
        last = graphsim.build_graph(c, g)
        tensors = _walk(last)
        for il in ids:  # t_layer_inp[il]: the layer's input (the layer before's l_out, or the token rows)
            _layer_input(tensors, il).flags |= OUTPUT
        g.expand(last)
        gpus = [d.name for d in ld.pl.devices]
        sched = _Sched(gpus, graphsim._host(ld.pl), N_COPIES if sp.pipeline else 1)
        sched.assign(g)
        nodes, leafs, node_at = sched.split(g)
        sizes, _ = _reserve(nodes, leafs, sched.bufts, node_at)
        out.append(sizes)
    pp, tg = out
    return {b: max(pp.get(b, 0), tg.get(b, 0)) for b in pp}


def _layer_input(tensors: list[_T], il: int) -> _T:
    """Layer ``il``'s input in a llama / qwen3 graph: ``l_out-{il-1}``, or for layer 0 the source of its
    attention norm (the token rows)."""
    if il > 0:
        return next(t for t in tensors if t.name == f"l_out-{il - 1}")
    norm = next(
        t
        for t in tensors
        if t.name == "norm-0" and t.src[0].op not in ("RESHAPE", "VIEW") and not t.src[0].name.startswith("ffn_inp")
    )
    return norm.src[0]


def _walk(t: _T) -> list[_T]:
    """Every tensor the graph's last tensor depends on (depth first, each once)."""
    seen: set[int] = set()
    order: list[_T] = []
    stack = [t]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        order.append(x)
        stack.extend(x.src)
    return order


def features_compute_growth(
    model: GGUFModel, head: GGUFModel, devices: list[Device], offload: OffloadParams, context: ContextParams
) -> dict[str, int] | None:
    """How much the target's compute buffers grow (bytes by buffer type) when the head's layers are extracted
    (:func:`features_compute` against the reservation at load); None where ggufx does not replay that target's."""
    from ggufx.analysis.memory.buffers import breakdown

    ids = extracted_inputs(model, head)
    if not ids:
        return {}
    if target_graph(model) not in FEATURES_COMPUTE_GRAPHS:
        return None
    bd = breakdown(model, devices, offload, context)
    if bd.compute_estimate is not None:
        return None
    old = {b.buft: b.bytes for b in bd.buffers if b.kind == "compute"}
    new = features_compute(model, devices, offload, context, ids)
    return {b: n - old.get(b, 0) for b, n in new.items() if n > old.get(b, 0)}


def output_rows(head: GGUFModel, draft_context: ContextParams, n_seq: int) -> int:
    """The output rows of a head's context after its first prompt: an EAGLE3 head encodes the prompt in chunks of
    ``n_ubatch`` tokens with an output row per token (``llama_context::encode``: ``output_reserve(n_tokens)``,
    llama-context.cpp:1523); a DFlash draft's injected rows request none, its blocks ``n_max + 1`` per sequence: at
    most its ``n_outputs_max`` (``-np x (n_max + 1)``, every slot drafting at once). At least ``n_seq``."""
    hp = hparams(head)
    n_ctx = draft_context.n_ctx or hp.n_ctx_train
    n_batch = min(n_ctx, draft_context.n_batch)
    if head.architecture == "eagle3":
        return max(min(n_batch, draft_context.n_ubatch), n_seq)
    return max(min(n_batch, draft_context.n_outputs_max or n_seq), n_seq)


def output_row_bytes(head: GGUFModel) -> int:
    """One output row of a head's context once the server's samplers and the masked ``h_nextn`` are on
    (``output_reserve``, llama-context.cpp:2118-2174): ``n_vocab`` logits, ``n_embd`` h_nextn floats, ``2 x n_vocab``
    sampled logits and probabilities, ``1 + n_vocab`` sampled tokens and candidates."""
    hp = hparams(head)
    return 4 * (3 * hp.n_vocab + hp.n_embd) + 4 * (1 + hp.n_vocab)


def output_growth(head: GGUFModel, draft_context: ContextParams, n_seq: int) -> int:
    """How much a head's output buffer grows after its first prompt (bytes): :func:`output_rows` rows of
    :func:`output_row_bytes` in place of the ``n_vocab`` floats per sequence made at load (freed for it)."""
    if head.architecture not in HEADS:
        return 0
    hp = hparams(head)
    return output_rows(head, draft_context, n_seq) * output_row_bytes(head) - 4 * hp.n_vocab * n_seq


def head_output(draft: GGUFModel, dcp: ContextParams, bufs: list[Buffer], notes: list[str]) -> list[Buffer]:
    """A head's output buffer after its first prompt (kind ``draft_output_growth``, on its output buffer's type):
    :func:`output_growth`."""
    out = next((b for b in bufs if b.kind == "output"), None)
    grow = output_growth(draft, dcp, max(1, dcp.n_parallel))
    if out is None or grow <= 0:
        return []
    rows = output_rows(draft, dcp, max(1, dcp.n_parallel))
    why = (
        "an output row per token of the prompt chunk it encodes"
        if draft.architecture == "eagle3"
        else "n_max + 1 rows per sequence, every slot drafting at once"
    )
    notes.append(
        f"{SPEC_TYPE[draft.architecture or '']}: the head's output buffer grows from {out.bytes / 2**20:.2f} MiB to "
        f"{(out.bytes + grow) / 2**20:.2f} MiB after the first prompt ({rows} rows of logits, h_nextn and the backend "
        f"samplers' rows: {why}; draft_output_growth)"
    )
    return [Buffer("draft_output_growth", out.buft, grow)]


def target_buffers(
    model: GGUFModel,
    draft: GGUFModel,
    devices: Sequence[Device],
    offload: OffloadParams | None,
    context: ContextParams,
    notes: list[str],
) -> list[Buffer]:
    """An EAGLE3 / DFlash head's effect on the target's buffers: llama.cpp's refusal
    of the pair, the extracted layers' rows in the target's output buffer (kind ``draft_features``) and the growth
    of its compute buffer once its graph keeps them (``draft_features_compute``)."""
    arch = draft.architecture or ""
    why = pair_refusal(model, draft)
    if why:
        raise InputError(f"--model-draft {draft.path}: llama.cpp refuses this pair: {why}", "--model-draft")
    offload = offload or OffloadParams()
    feats = feature_buffers(model, draft, list(devices), offload, context)
    growth = features_compute_growth(model, draft, list(devices), offload, context)
    feats += [Buffer("draft_features_compute", buft, n, exact=False) for buft, n in (growth or {}).items()]
    grown = sum((growth or {}).values()) / 2**20
    notes.append(
        f"{SPEC_TYPE[arch]}: the target's layers {', '.join(map(str, target_layers(draft)))} are extracted for the "
        f"draft head from the first request on: the target's output buffer grows by "
        f"{sum(b.bytes for b in feats if b.kind == 'draft_features') / 2**20:.2f} MiB (draft_features), "
        f"{sum(b.bytes for b in feats if b.kind == 'draft_verify_output') / 2**20:.2f} MiB more with every slot "
        "verifying its drafts at once (draft_verify_output), and its graph "
        "is reserved again with those layer inputs kept as outputs: "
        + (
            f"its compute buffer grows by {grown:.2f} MiB (draft_features_compute)"
            if growth is not None
            else f"the growth of its compute buffer is not modelled for {model.architecture} targets"
        )
    )
    return feats
