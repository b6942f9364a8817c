"""Compute buffers: the peak of llama.cpp's graph allocator, as a sum of the graph's large tensors.

llama.cpp sizes each backend's compute buffer by allocating its worst-case graph (a micro-batch of
``n_ubatch`` tokens against the full KV cache) with ``ggml-alloc``: tensors are placed best-fit in one
growing buffer and freed after their last consumer; the buffer is the high-water mark. That peak is
reached in one of a few phases, each a sum of large tensors (``blk`` = one ``n_embd x n_tokens`` f32
activation; ``T`` = tokens of the micro-batch):

* the GPU that holds the output layer computes the logits (``n_vocab x n_outputs`` f32, never freed;
  ``llama-completion`` reserves one output per token, ``llama-server`` one per slot);
* every GPU that runs attention holds its own copy of the attention masks (f16 with flash attention,
  f32 without; one per cache) and of the hidden state it receives;
* the host backend (``CUDA_Host``, or ``CPU`` without GPUs) holds the graph inputs, the embedding
  lookups and the masks it builds;
* without flash attention, ``kq`` is ``n_kv x n_tokens x n_head`` f32; with a quantized KV cache the
  CUDA flash-attention kernel converts K and V of one layer to f16 in its output's allocation;
* with several GPUs and every layer offloaded llama.cpp runs a pipeline (4 copies of every input,
  never freed);
* with ``-nkvo`` flash attention still runs on the layer's GPU, over copies of the host cache;
* with partial offload (from 32 tokens) the first GPU runs the host layers too: their products
  (op offload) and their attention over copies of their host cache; below 32 tokens the host
  backend computes its layers itself.

Phases (the maximum is the buffer): the feed-forward of a layer (``3 n_ff T`` f32 for gate, up and
their product, plus four ``blk``) over the masks; attention (without flash attention ``kq``
dominates); and the logits, which land on top of the masks and four or five ``blk`` still allocated
when they do not fit the hole the masks leave. The phases and their constants were read off
llama.cpp's allocator on these graphs and are checked against every recorded llama.cpp log in
``tests/fixtures/llamacpp-logs`` (``tests/test_memory_logs.py``), which is why the figures are
labelled *computed*, not exact: architectures beyond dense, SWA, hybrid (Gated DeltaNet) and MoE
decoders, several GPUs with weights on the host, partial offload of MoE experts and the host
layers' attention deciding the first GPU's buffer are approximations (``mem`` says so in a note).
"""

from __future__ import annotations

from dataclasses import dataclass

from ggufx.analysis.memory.hparams import Hparams

PIPELINE_COPIES = 4  # GGML_SCHED_MAX_COPIES
OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda: a host weight's matrix product runs on the GPU from this batch up


@dataclass(frozen=True, slots=True)
class GraphShape:
    """What the worst-case graph of one context looks like (tokens, outputs, cache sizes, kernels)."""

    n_tokens: int  # the micro-batch of the worst-case reserve
    n_outputs: int
    n_kv: int  # cells per stream of the full-attention cache
    n_kv_swa: int
    n_streams: int
    flash_attn: bool
    k_quantized: bool
    v_quantized: bool
    k_bytes: float = 2.0  # bytes per K cache element (f16: 2, q8_0: 34/32...)
    v_bytes: float = 2.0


@dataclass(frozen=True, slots=True)
class ComputeModel:
    """The model's shape facts the graph needs beyond :class:`Hparams`."""

    kinds: tuple[str, ...]  # per layer: "attention", "swa", "recurrent" or "none"
    is_moe: bool
    n_ff_exp: int
    n_expert_used: int
    norm_before_outputs: bool  # qwen35: the final norm runs on every token, then the outputs are picked
    gated_q: bool  # qwen35: the Q projection also yields a gate


def masks(s: GraphShape, kinds: list[str]) -> int:
    """The attention masks a backend holds for these layers: ``n_kv x T`` per cache, f16 with flash
    attention, f32 without."""
    width = 2 if s.flash_attn else 4
    total = width * s.n_kv * s.n_tokens if "attention" in kinds else 0
    return total + (width * s.n_kv_swa * s.n_tokens if "swa" in kinds else 0)


def ffn_peak(hp: Hparams, cm: ComputeModel, s: GraphShape) -> int:
    """A feed-forward block: gate, up and their product alive together, plus four ``blk``."""
    T, E = s.n_tokens, hp.n_embd
    inner = 3 * cm.n_ff_exp * cm.n_expert_used + cm.n_expert_used * E if cm.is_moe else 3 * hp.n_ff
    return 4 * T * (inner + 4 * E)


def attention_peak(hp: Hparams, cm: ComputeModel, s: GraphShape, layers: list[int]) -> int:
    """The largest attention block of these layers: ``kq`` without flash attention; with it, CUDA's
    f16 copies of a quantized K and V cache (made in the flash-attention output's allocation)."""
    T, E = s.n_tokens, hp.n_embd
    peak = 0
    for il in layers:
        kind = cm.kinds[il]
        if kind not in ("attention", "swa"):
            continue
        swa = kind == "swa"
        n_kv = s.n_kv_swa if swa else s.n_kv
        hk, hv = (hp.head_k_swa, hp.head_v_swa) if swa else (hp.head_k, hp.head_v)
        n_head, n_head_kv = hp.n_head[il], hp.n_head_kv[il]
        q = 4 * T * hk * n_head * (2 if cm.gated_q else 1)
        if s.flash_attn:
            convert = 2 * n_kv * s.n_streams * n_head_kv * ((hk if s.k_quantized else 0) + (hv if s.v_quantized else 0))
            peak = max(peak, convert + 5 * 4 * E * T)
        else:
            gate = 4 * T * hk * n_head if cm.gated_q else 0
            peak = max(peak, 4 * n_kv * T * n_head + q + gate + 18 * E * T)
    return peak


def host_kv_attention_peak(hp: Hparams, cm: ComputeModel, s: GraphShape, layers: list[int]) -> int:
    """Flash attention on a GPU over a cache on the host (``-nkvo``): ``resolve_fused_ops`` keeps
    flash attention only where it runs on the layer's device (llama-context.cpp:511-561), and unlike
    ``-fa off`` (pinned to the CPU, llama-graph.cpp:2821) nothing moves it to the host, so the
    scheduler copies the layer's whole K and V views and the mask into the GPU's compute buffer as
    split inputs (ggml-backend.cpp:1519-1530): mask + K + V copies + the f16 conversion of a
    quantized cache + five ``blk``."""
    if not s.flash_attn:
        return 0
    E, peak = hp.n_embd, 0
    for il in layers:
        kind = cm.kinds[il]
        if kind not in ("attention", "swa"):
            continue
        swa = kind == "swa"
        n_kv = (s.n_kv_swa if swa else s.n_kv) * s.n_streams
        hk, hv = (hp.head_k_swa, hp.head_v_swa) if swa else (hp.head_k, hp.head_v)
        cells = n_kv * hp.n_head_kv[il]
        copies = int(cells * (hk * s.k_bytes + hv * s.v_bytes))
        convert = 2 * cells * ((hk if s.k_quantized else 0) + (hv if s.v_quantized else 0))
        # qwen35: the joint Q and gate projection outlives attention (its gate view is made
        # contiguous only after it, qwen35.cpp:304-338), and that copy lands beside the output
        gated = 3 * 4 * s.n_tokens * hk * hp.n_head[il] if cm.gated_q else 0
        peak = max(peak, copies + convert + 5 * 4 * E * s.n_tokens + gated)
    kinds = [cm.kinds[il] for il in layers]
    return masks(s, kinds) + peak if peak else 0


def logits(hp: Hparams, s: GraphShape) -> int:
    return 4 * hp.n_vocab * s.n_outputs


def device_compute(
    hp: Hparams,
    cm: ComputeModel,
    s: GraphShape,
    layers: list[int],
    has_output: bool,
    full_offload: bool,
    pipeline: bool,
    host_weight: int,
    kv_on_gpu: bool,
    alone: bool,
    first: bool = True,
) -> int:
    """One GPU's compute buffer.

    ``host_weight``: the CUDA size of the largest weight left on the host whose product this GPU
    runs (op offload; the output matrix when the output layer stays on the host), 0 when none.
    ``kv_on_gpu``: the cache of these layers is here (not with ``-nkvo``). ``alone``: the only GPU.
    ``first``: the GPU that holds layer 0 (with pipeline parallelism it receives the embeddings).
    The host layers' attention, which the first GPU also runs, is :func:`host_layers_attention`."""
    T, E = s.n_tokens, hp.n_embd
    blk = 4 * E * T
    kinds = [cm.kinds[il] for il in layers] if kv_on_gpu else []
    m = masks(s, kinds)
    attn = attention_peak(hp, cm, s, layers) if kv_on_gpu else 0
    extra_blk = 1 if cm.norm_before_outputs else 0
    if pipeline:
        # every split input has 4 copies that are never freed (ggml-backend.cpp:1519-1580): the
        # masks, and resident blocks: 12 ``blk`` on the GPU that takes the embeddings from the host
        # (its first layer is layer 0), 3 on a GPU that takes the hidden state from another GPU
        resident = PIPELINE_COPIES * m + (12 if first else 3) * blk
        out = logits(hp, s) + (2 + extra_blk) * blk if has_output else 0
        return resident + max(ffn_peak(hp, cm, s), attn, out)
    phases = [m + max(ffn_peak(hp, cm, s), attn)] if layers else []
    if layers and not kv_on_gpu:
        phases.append(host_kv_attention_peak(hp, cm, s, layers))
    if has_output:
        out = logits(hp, s)
        if not alone:
            phases.append(out + blk)
        elif (full_offload or cm.is_moe) and kv_on_gpu:
            # the logits land above the masks unless they fit the hole the masks leave
            phases.append(m + out + (4 + extra_blk) * blk if out > m else 0)
        elif T < OP_OFFLOAD_MIN_BATCH:
            # no op offload: the GPU runs only its own layers, and graph_get_cb pins each layer's
            # last op to the layer's device (llama-context.cpp:2648-2660)
            phases.append(out + blk)
        else:
            phases.append(out + 4 * blk)
    if host_weight and T >= OP_OFFLOAD_MIN_BATCH:
        on_gpu = not has_output and s.n_outputs >= OP_OFFLOAD_MIN_BATCH
        phases.append(host_weight + (logits(hp, s) if on_gpu else 0) + 4 * blk)
    return max(phases, default=0)


def host_layers_attention(hp: Hparams, cm: ComputeModel, s: GraphShape, host_layers: list[int]) -> int:
    """The host layers' flash attention on the first GPU: from ``OP_OFFLOAD_MIN_BATCH`` tokens up
    every product with a host weight runs on the first GPU (ggml-backend.cpp:1101-1111), and the
    expansion passes (ggml-backend.cpp:1264-1340) give it the layer's flash attention too (only the
    cache writes stay on the host, with the cache), so the scheduler copies the layer's whole K and V
    views and the mask into this GPU, as with ``-nkvo`` (:func:`host_kv_attention_peak`).

    When two host attention layers follow each other, the first one's K and V copies are freed
    after its attention (ggml-alloc.c:790-822) and its output projection, residual and FFN tensors
    are placed best-fit into that hole (ggml-alloc.c:202-300); the next layer's K copy still fits
    what is left, its V copy goes above the first layer's live set. That envelope is what llama.cpp
    allocated for llama31-8b (-ngl 0 and 7 at 131072 cells: 936 MiB; two GPUs -ngl 20: 264 MiB) but
    not for four per-sequence streams (185 MiB, 55 below): the caller flags the figure as rough
    wherever this phase decides it."""
    if s.n_tokens < OP_OFFLOAD_MIN_BATCH:
        return 0
    if not s.flash_attn:
        return host_kq_peak(hp, cm, s, host_layers)
    one = host_kv_attention_peak(hp, cm, s, host_layers)
    attn = [il for il in host_layers if cm.kinds[il] in ("attention", "swa")]
    adjacent = [il for il in attn if il + 1 in attn]
    if not one or not adjacent:
        return one
    v_copy = max(
        int((s.n_kv_swa if cm.kinds[il] == "swa" else s.n_kv) * s.n_streams * hp.n_head_kv[il] * s.v_bytes)
        * (hp.head_v_swa if cm.kinds[il] == "swa" else hp.head_v)
        for il in adjacent
    )
    return one + v_copy


def host_kq_peak(hp: Hparams, cm: ComputeModel, s: GraphShape, host_layers: list[int]) -> int:
    """Without flash attention the host layers' ``kq`` product follows their offloaded Q onto the
    first GPU the same way (only ``-nkvo`` pins attention to the host, llama-graph.cpp:2821), over
    copies of the layer's K and (transposed) V: masks + copies + the :func:`attention_peak` block.
    No recorded run has this configuration; the caller flags it wherever it decides the buffer."""
    copies = 0
    for il in host_layers:
        kind = cm.kinds[il]
        if kind not in ("attention", "swa"):
            continue
        swa = kind == "swa"
        cells = (s.n_kv_swa if swa else s.n_kv) * s.n_streams * hp.n_head_kv[il]
        hk, hv = (hp.head_k_swa, hp.head_v_swa) if swa else (hp.head_k, hp.head_v)
        copies = max(copies, int(cells * (hk * s.k_bytes + hv * s.v_bytes)))
    if not copies:
        return 0
    m = masks(s, [cm.kinds[il] for il in host_layers])
    return m + copies + attention_peak(hp, cm, s, host_layers)


def cpu_layers_peak(hp: Hparams, cm: ComputeModel, s: GraphShape, host_layers: list[int]) -> int:
    """The host layers computed by the host backend itself (below ``OP_OFFLOAD_MIN_BATCH`` tokens no
    GPU takes their products): their masks plus a layer's largest block, as :func:`cpu_compute`."""
    if not host_layers:
        return 0
    blk = 4 * hp.n_embd * s.n_tokens
    m = masks(s, [cm.kinds[il] for il in host_layers])
    return m + max(ffn_peak(hp, cm, s), attention_peak(hp, cm, s, host_layers)) + blk


def host_compute(
    hp: Hparams, s: GraphShape, all_masks: int, v_trans_rows: int, pipeline: bool, host_layers_peak: int = 0
) -> int:
    """The host backend's buffer beside GPUs (``CUDA_Host``): the graph inputs it builds (masks,
    positions, cache indices, output ids) and the embedding lookups (four ``blk``, two of which,
    the selected and the unselected embedding branch, llama.cpp never frees); or the host layers it
    computes itself (``host_layers_peak``, :func:`cpu_layers_peak`), whichever is larger."""
    T, E = s.n_tokens, hp.n_embd
    blk = 4 * E * T
    small = 4 * T + 8 * T + 8 * T * (v_trans_rows or 1) + 4 * s.n_outputs + 4 * T
    if pipeline:
        return PIPELINE_COPIES * all_masks + 10 * blk + small
    return max(all_masks + 4 * blk, host_layers_peak) + small


def cpu_compute(hp: Hparams, cm: ComputeModel, s: GraphShape) -> int:
    """The one compute buffer of a build without GPUs: the whole graph on the CPU backend."""
    T, E = s.n_tokens, hp.n_embd
    blk = 4 * E * T
    layers = list(range(len(cm.kinds)))
    m = masks(s, list(cm.kinds))
    layer = m + max(ffn_peak(hp, cm, s), attention_peak(hp, cm, s, layers)) + blk
    return max(layer, m + logits(hp, s) + 5 * blk)
