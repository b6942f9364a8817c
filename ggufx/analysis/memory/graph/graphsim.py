"""Compute buffers by simulation: llama.cpp's worst-case graph, split by ggml_backend_sched, replayed
through ggml-alloc, tensor by tensor.

``llama_context::sched_reserve`` (src/llama-context.cpp) builds the graph of one micro-batch of
``n_ubatch`` tokens against the full KV cache (``graph_reserve``), lets ``ggml_backend_sched`` assign
every node to a backend and split the graph (ggml/src/ggml-backend.cpp:1195-1745: the five passes,
op offload of host weights' products to the first GPU from 32 tokens, one copy per split input,
four with pipeline parallelism), and reserves it with ``ggml_gallocr`` (ggml/src/ggml-alloc.c:718):
one dynamic allocator per buffer type, best-fit, in-place reuse of a parent, frees after the last
consumer. Each backend's compute buffer is that allocator's high-water mark; it does the same for
the token-generation graph (one token per sequence) and keeps the larger.

This module rebuilds that graph for dense llama-style decoders (``llama``: Llama 3, SmolLM2), for
``qwen3moe`` (softmax routing, ``MUL_MAT_ID`` experts, host experts copied whole to the first GPU,
and the tensors CUDA's ``graph_optimize`` keeps alive around the MoE ops it fuses), for ``gemma3``
(a second cache and mask for the sliding-window layers) and for the ``qwen35`` hybrid (gated
attention layers, Gated DeltaNet layers reading and writing the recurrent state in place, the fused
``GATED_DELTA_NET`` node), and replays the three steps. It is an alternative to the phase model of
:mod:`ggufx.analysis.memory.compute`, checked against the recorded llama.cpp logs in
``tests/test_graphsim.py``; architectures it does not build, and files without what the graph
needs, are refused with a reason (:func:`simulated`, :func:`unbuildable`).
"""

from __future__ import annotations

import importlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ggufx.analysis.layers import layer_kinds, swa_layers
from ggufx.analysis.memory.archs import arch_of
from ggufx.analysis.memory.graph.galloc import FAILED, PREALLOCATED, _reserve
from ggufx.analysis.memory.graph.ggml import _T, GLOBAL, _Graph, _ne, _strides
from ggufx.analysis.memory.graph.llm import SimParams, _Ctx, _Gdn, build_pooling, with_pooling
from ggufx.analysis.memory.graph.models import BUILT, builder, layer_kind
from ggufx.analysis.memory.graph.models.qwen35 import _gdn_dims, _recurrent_layers
from ggufx.analysis.memory.graph.sched import N_COPIES, OP_OFFLOAD_MIN_BATCH, _Sched
from ggufx.analysis.memory.hparams import Hparams, hparams, n_loops, pad
from ggufx.analysis.memory.placement import CPU, Device, OffloadParams, Placement, host_buft, place
from ggufx.errors import ValidationError
from ggufx.model import GGUFModel

T = TypeVar("T")

__all__ = ["BUILT_ARCHS", "SIMULATED_ARCHS", "SimParams", "build_graph", "simulate", "simulated", "unbuildable"]

SIMULATED_ARCHS = BUILT  # the registry entries with a builder module (graph/models/)
BUILT_ARCHS = SIMULATED_ARCHS  # every built graph is exact on every recorded run


# -- the reservation -----------------------------------------------------------------------------------


def build_graph(c: _Ctx, g: _Graph) -> _T:
    """``llama_model::build_graph`` (llama-model.cpp:2900-2916): the architecture's graph, then in an embedding run
    ``build_pooling`` and ``build_dense_out`` over its ``res->t_embd`` (graph/llm.py :func:`with_pooling`). A
    decoder's ``t_embd`` is its ``result_norm``, found by walking back from the logits; the builders that pool
    themselves (the encoders', qwen3's) return the pooled result (``result_embd_pooled``, or with pooling none
    ``t_embd`` itself) and are left as they are; lfm2's graph has no logits in an embedding run. Returns the last tensor (the caller expands it)."""
    out = builder(c.hp.arch)(c, g)
    if c.sp.pooling is None or out.name != "result_output" or any(n.name == "result_embd_pooled" for n in g.nodes):
        return out
    norm: _T | None = out
    while norm is not None and norm.name != "result_norm":  # the logits' product (bias, scale, softcap) over it
        srcs = norm.src
        norm = (srcs[1] if norm.op == "MUL_MAT" else srcs[0]) if srcs else None
    if norm is None:
        return out
    if c.hp.arch in _NO_LOGITS:  # the graph stops at result_norm: the logits are not computed
        return build_pooling(c, g, norm)
    return with_pooling(c, g, out, norm)


# the graphs without logits in an embedding run (lfm2.cpp:287 ``if (!cparams.embeddings)``, lfm2moe's too)
_NO_LOGITS = ("lfm2", "lfm2moe")


# the weights each layer's graph multiplies by (src/models/llama.cpp, src/models/qwen3moe.cpp)
_ATTN_WEIGHTS = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm")
_LAYER_WEIGHTS = {
    "llama": (*_ATTN_WEIGHTS, "ffn_gate", "ffn_up", "ffn_down"),
    "gemma3": (*_ATTN_WEIGHTS, "attn_q_norm", "attn_k_norm", "post_attention_norm", "post_ffw_norm")
    + ("ffn_gate", "ffn_up", "ffn_down"),
    "qwen3moe": (*_ATTN_WEIGHTS, "attn_q_norm", "attn_k_norm", "ffn_gate_inp")
    + ("ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"),
}
LLAMA_MAX_EXPERTS = 1024  # llama-hparams.h:12


def simulated(model: GGUFModel) -> str | None:
    """Why this model's graph is not simulated (None when it is): another architecture, or a file
    without the tensors or the expert counts the graph needs (which llama.cpp would not load; the
    phase model still sizes it)."""
    if model in _WHY_NOT:  # asked once per breakdown: --fit's dry runs, a report's contexts
        return _WHY_NOT[model]
    arch = model.architecture or ""
    why: str | None
    if arch not in SIMULATED_ARCHS:
        why = f"the {arch!r} graph is not simulated (simulated: {', '.join(sorted(SIMULATED_ARCHS))})"
    else:
        why = unbuildable(model) or _unsound(model)
    _WHY_NOT[model] = why
    return why


def _unsound(model: GGUFModel) -> str | None:
    """Head counts and sizes the graph cannot be laid out with (llama.cpp asserts on them while it
    builds the graph): every attention layer needs KV heads that divide its query heads."""
    hp = hparams(model)
    if min(hp.n_embd, hp.head_k, hp.head_v) <= 0:
        return "the graph needs positive embedding and head sizes"
    entry = arch_of(model.architecture)
    hybrid = entry is not None and entry.recurrent is not None
    deci = model.architecture == "deci"  # deci.cpp: "linear attention" (no KV heads) and attention-free layers
    kinds = layer_kinds(model)
    for il, (nh, nkv) in enumerate(zip(hp.n_head, hp.n_head_kv, strict=False)):
        if (hybrid or deci) and nkv == 0:  # a recurrent layer, or deci's layer without attention
            continue
        if il < len(kinds) and not kinds[il].is_attention:  # no attention to lay out: RWKV6Qwen2's and ARWKV7's
            continue  # converters write head_count 0 ("required by llama.cpp, unused") beside GQA's KV heads
        if nkv <= 0 or nh <= 0 or nh % nkv:
            return f"layer {il} has {nh} query heads for {nkv} KV heads, which the graph cannot lay out"
    return None


def unbuildable(model: GGUFModel) -> str | None:
    """Why :func:`simulate` cannot build this model's graph (None when it can)."""
    arch = model.architecture or ""
    if arch not in BUILT_ARCHS:
        return f"the {arch!r} graph is not built (built: {', '.join(sorted(BUILT_ARCHS))})"
    odd_type = next((t for t in model.tensors if not t.type.known), None)
    if odd_type is not None:
        return f"tensor {odd_type.name} has the ggml type {odd_type.type.name}, which this llama.cpp does not know"
    md = model.metadata
    cap = f"{arch}.final_logit_softcapping"  # gemma3.cpp:15, :203-207: SCALE, TANH, SCALE on the logits
    if arch == "gemma3" and cap in md and not (isinstance(md[cap], (int, float)) and md[cap] == 0):
        return "gemma3 graphs with final logit softcapping are not simulated"
    n_expert = md.get_int(f"{arch}.expert_count") or 0
    if arch == "llama" and n_expert > 0:
        return "mixture-of-experts llama graphs are not simulated"
    if arch == "qwen3moe":
        n_used = md.get_int(f"{arch}.expert_used_count") or 0
        if not 0 < n_used <= n_expert <= LLAMA_MAX_EXPERTS:  # qwen3moe.cpp:41-46, llama-model.cpp:1363
            return f"the graph needs 0 < expert_used_count <= expert_count <= {LLAMA_MAX_EXPERTS}"
    if arch == "qwen35":
        return _qwen35_unbuildable(model)
    tensors = {t.name: t for t in model.tensors}
    n_layer = md.get_int(f"{arch}.block_count") or 0
    if arch not in _LAYER_WEIGHTS:  # a builder module with its own check (every module of graph/models/ but llama's)
        check: Callable[[GGUFModel], str | None] = importlib.import_module(builder(arch).__module__).unbuildable
        return check(model)
    needed = ["token_embd.weight", "output_norm.weight"]
    needed += [f"blk.{il}.{role}.weight" for il in range(min(n_layer, 513)) for role in _LAYER_WEIGHTS[arch]]
    missing = next((n for n in needed if n not in tensors), None)
    if missing:
        return f"the graph needs tensor {missing}, which the file lacks"
    if arch == "qwen3moe":
        odd = next((n for n in needed if "exps" in n and len(tensors[n].shape) != 3), None)
        if odd:
            return f"the graph needs a three-dimensional tensor {odd}"
    return None


def _qwen35_unbuildable(model: GGUFModel) -> str | None:
    """Why the qwen35 graph cannot be built: per-tensor scales or embedding projection (graph parts not
    simulated), Gated DeltaNet dimensions, every tensor the main graph reads in the shape qwen35.cpp:33-135
    creates it (llama.cpp refuses the file otherwise); the MTP block's layers are not in the main graph."""
    tensors = {t.name: tuple(t.shape) for t in model.tensors}
    extra = next((n for n in tensors if n.endswith(".scale") or n.startswith("cls.")), None)
    if extra:
        return f"qwen35 graphs with tensor {extra} are not simulated"
    d = _gdn_dims(model)
    if isinstance(d, str):
        return d
    hp = hparams(model)
    E, hd, n_ff = hp.n_embd, hp.head_k, hp.n_ff
    if hd <= 0 or hd != hp.head_v:
        return "the graph needs attention.key_length = attention.value_length > 0 (qwen35.cpp:141)"
    inner, conv = d.head_v * d.n_v_heads, 2 * d.head_k * d.n_k_heads + d.head_v * d.n_v_heads
    shapes: dict[str, tuple[int, ...]] = {"output_norm.weight": (E,)}  # token_embd: columns only (below)
    recurrent = _recurrent_layers(model, hp.n_layer)
    if isinstance(recurrent, str):
        return recurrent
    for il, is_recurrent in enumerate(recurrent[: hp.n_layer_main]):  # the MTP block is not in the main graph
        nh, nkv = hp.n_head[il], hp.n_head_kv[il]
        w: dict[str, tuple[int, ...]] = {"attn_norm.weight": (E,), "post_attention_norm.weight": (E,)}
        w |= {"ffn_gate.weight": (E, n_ff), "ffn_up.weight": (E, n_ff), "ffn_down.weight": (n_ff, E)}
        if is_recurrent:
            w |= {"attn_qkv.weight": (E, conv), "attn_gate.weight": (E, inner), "ssm_conv1d.weight": (d.d_conv, conv)}
            w |= {"ssm_dt.bias": (d.n_v_heads,), "ssm_a": (d.n_v_heads,), "ssm_norm.weight": (d.head_v,)}
            w |= {
                "ssm_beta.weight": (E, d.n_v_heads),
                "ssm_alpha.weight": (E, d.n_v_heads),
                "ssm_out.weight": (inner, E),
            }
        elif nh <= 0 or nkv <= 0 or nh % nkv:
            return f"the graph needs attention heads in layer {il} (head_count a multiple of head_count_kv)"
        else:
            w |= {"attn_q.weight": (E, 2 * hd * nh), "attn_k.weight": (E, hd * nkv), "attn_v.weight": (E, hd * nkv)}
            w |= {"attn_output.weight": (hd * nh, E), "attn_q_norm.weight": (hd,), "attn_k_norm.weight": (hd,)}
        shapes |= {f"blk.{il}.{n}": shape for n, shape in w.items()}
    if len(tensors.get("token_embd.weight", ())) != 2 or tensors["token_embd.weight"][0] != E:
        return f"the graph needs a two-dimensional tensor token_embd.weight of {E} columns"
    for name, shape in shapes.items():
        if name not in tensors:
            return f"the graph needs tensor {name}, which the file lacks"
        if tensors[name] != shape:
            return f"the graph needs tensor {name} of shape {list(shape)}, not {list(tensors[name])}"
    return None


@dataclass(slots=True)
class _Loaded:
    """What every graph of one model on one placement shares: the weights as graph tensors (with the
    buffer type of each copy), the buffer type of each layer's weights, the per-layer weight part of
    the layer signatures, the layer kinds. Built once per (model, devices, offload options)."""

    hp: Hparams
    pl: Placement
    weights: dict[tuple[str, str | None], _T]
    by_name: dict[str, list[tuple[str, _T]]]
    layer_buft: list[str]
    layer_weights: list[tuple[object, ...]]
    moe: int | None
    swa: list[bool]
    recurrent: list[bool]
    gdn: _Gdn | None
    plans: dict[object, _Plan] = field(default_factory=dict)  # by the signatures' varying parts and warm-up
    kinds: dict[object, frozenset[tuple[object, ...]]] = field(default_factory=dict)  # the signatures, as a set
    tagged: _Plan | None = None  # the plan the weights' positions are set for
    blk: list[tuple[int | None, list[tuple[_T, tuple[str, str, str]]]]] | None = None  # for :func:`_one`
    # the -fa auto probe's graph, built and assigned (:func:`_flash_attn_mismatch`), with the reservation
    # and plan it was built for: the token reservation of that plan splits and reserves it (once)
    probe: tuple[SimParams, _Plan, _Graph, _Sched] | None = None


def _load(model: GGUFModel, hp: Hparams, pl: Placement) -> _Loaded:
    mapped_host = {CPU, "CPU_Mapped", "CPU_REPACK"}
    weights: dict[tuple[str, str | None], _T] = {}
    by_name: dict[str, list[tuple[str, _T]]] = {}
    roles: list[tuple[int, str, list[tuple[str, _T]]]] = []  # each layer weight's layer, role and copies
    # each (shape, type)'s ggml shape and strides: the layers repeat a few dozen (two calls, 3 K instructions)
    layouts: dict[tuple[tuple[int, ...], str], tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = {}
    for info, buft in pl.tensors:
        name, type_ = info.name, info.type.name
        layout = layouts.get((info.shape, type_))
        if layout is None:
            ne = _ne(*info.shape) if info.shape else (1, 1, 1, 1)
            layout = layouts[(info.shape, type_)] = (ne, _strides(ne, type_))
        t = _T(name, "NONE", type_, layout[0], layout[1], [], None, 0, buft, True)
        weights[(name, buft)] = t
        copies = by_name.get(name)
        if copies is None:
            copies = by_name[name] = []
            if name.startswith("blk."):
                num, _, role = name[4:].partition(".")
                if num.isdigit():
                    roles.append((int(num), role, copies))
        copies.append((buft, t))
    loops = n_loops(model)
    if loops > 1:  # nanbeige.cpp load_arch_tensors: layers[i + j * n_phys] = layers[i], the first pass's tensors
        n_phys = hp.n_layer // loops
        for il, role, copies in list(roles):
            for j in range(1, loops):
                by_name[f"blk.{il + j * n_phys}.{role}"] = copies
                roles.append((il + j * n_phys, role, copies))
    layer_buft = [d if d is not None else "CPU_Mapped" for d in pl.layer_device]
    for il, d in enumerate(pl.layer_device):
        if d is None:  # the host copy of a layer's weights: whatever host buffer holds them
            layer_buft[il] = next(
                (b for b, _ in by_name.get(f"blk.{il}.attn_norm.weight", []) if b in mapped_host), "CPU_Mapped"
            )
    per: dict[int, list[tuple[str, tuple[object, ...]]]] = {}
    for il, role, copies in roles:
        sig = tuple([(b, t.type, t.ne) for b, t in copies])
        entry = per.get(il)
        if entry is None:
            per[il] = [(role, sig)]
        else:
            entry.append((role, sig))
    layer_weights: list[tuple[object, ...]] = [tuple(sorted(per.get(il, []))) for il in range(hp.n_layer)]
    moe = model.metadata.get_int(f"{hp.arch}.expert_used_count") if hp.arch == "qwen3moe" else None
    loaded = _Loaded(hp, pl, weights, by_name, layer_buft, layer_weights, moe, swa_layers(model, hp.n_layer), [], None)
    if hp.arch == "qwen35":
        dims, recurrent = _gdn_dims(model), _recurrent_layers(model, hp.n_layer)
        if isinstance(dims, str) or isinstance(recurrent, str):
            raise ValidationError(model.path, None, str(dims if isinstance(dims, str) else recurrent))
        loaded.recurrent, loaded.gdn = recurrent, dims
    return loaded


def _context(model: GGUFModel, ld: _Loaded, sp: SimParams, n_tokens: int, n_outputs: int) -> _Ctx:
    hp, pl = ld.hp, ld.pl
    cache_buft = [CPU if sp.no_kv_offload or d is None else d for d in pl.dev_layers()]
    gpus = [d.name for d in pl.devices]
    full = pl.n_offloaded > hp.n_layer
    pin = [-1] * (hp.n_layer + 1)
    if n_tokens < OP_OFFLOAD_MIN_BATCH or full:  # graph_get_cb (llama-context.cpp:2638-2662)
        for il, d in enumerate(pl.layer_device):
            pin[il] = gpus.index(d) if d is not None else len(gpus)
    n_kv_swa = sp.n_kv_swa
    if n_kv_swa is None:  # llama-kv-cache-iswa.cpp:73: n_swa per sequence of a stream plus a micro-batch
        n_kv_swa = pad(min(sp.n_kv, hp.n_swa * (sp.n_seq_max if sp.n_streams == 1 else 1) + sp.n_ubatch))
    # graph_reserve (llama-context.cpp:2531-2534) rounds the micro-batch up to a multiple of the
    # sequences (-np 3: 513 tokens of 171 per sequence); the outputs stay as asked
    n_tokens = -(-n_tokens // sp.n_seq_max) * sp.n_seq_max
    c = _Ctx(hp, sp, n_tokens, n_outputs, ld.weights, ld.by_name, ld.layer_buft, cache_buft, pin, model.path, ld.moe)
    c.swa, c.n_kv_swa, c.recurrent, c.gdn = ld.swa, n_kv_swa, ld.recurrent, ld.gdn
    c.model, c.host = model, len(gpus)
    return c


def _layer_signatures(c: _Ctx, ld: _Loaded) -> list[tuple[object, ...]]:
    """Per layer, everything its part of the graph is built from: its kind and heads, the buffers of
    its weights, cache and pinned norm, and the name, buffer, type and shape of each of its weights.
    Two layers with one signature make identical nodes, scheduled and split identically."""
    hp = c.hp
    # a module's graph_kinds(c): the kinds of every layer of this graph, where they depend on more than
    # the layer (HRM-Text's slots, by the loop keys); else its layer_kind(il)
    graph_kinds: Callable[[_Ctx], list[object]] | None = getattr(
        importlib.import_module(builder(hp.arch).__module__), "graph_kinds", None
    )
    if graph_kinds is not None:
        kinds = graph_kinds(c)
    else:
        kind = layer_kind(hp.arch) or (lambda il: None)
        kinds = [kind(il) for il in range(hp.n_layer)]
    return [
        (
            il == hp.n_layer_main - 1,  # the last trunk layer (NextN blocks follow it, unbuilt)
            kinds[il],
            hp.n_head[il],
            hp.n_head_kv[il],
            c.swa[il] if il < len(c.swa) else False,
            c.recurrent[il] if c.recurrent else False,
            c.layer_buft[il],
            c.cache_buft[il],
            c.pin[il],
            ld.layer_weights[il],
        )
        for il in range(hp.n_layer)
    ]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The layers a shortened replay builds, and where it must find the allocator periodic: for each
    run of repeated blocks of layers it shortens, the positions (in ``layers``) of the first block it
    keeps after the left-out blocks, and of the blocks one and two periods before it, and how many
    blocks it leaves out there."""

    layers: tuple[int, ...]
    checks: tuple[tuple[int, int, int, int], ...]  # (resume, one period before, two before, the run's start)
    outs: tuple[int, ...] = ()  # per check, the blocks left out before its resume


MAX_PERIOD = 8  # the longest block of layers looked for (qwen35: 4, gemma3: 6)


def _plan(sigs: list[tuple[object, ...]], warm: int, exact: bool = False) -> _Plan:
    """Each run of identical blocks of ``P`` layers (the smallest ``P`` that leaves the most layers
    out) is built as its first ``warm`` blocks, then the replay resumes after an even number of
    blocks left out (so that a replay periodic over one or two blocks resumes in the state it would
    have reached: :func:`simulate`); everything else is built as it is. ``warm`` >= 2, so that the
    states compared follow a block (two blocks back: from three kept blocks on). ``exact``: exactly
    ``warm`` blocks kept, and where that leaves an odd number out, the replay must be periodic over
    one block there (its check compares with the block one period before only): one block fewer to
    build where the allocator settles at once."""
    n = len(sigs)
    layers: list[int] = []
    checks: list[tuple[int, int, int, int]] = []
    outs: list[int] = []
    i = 0
    while i < n:
        best: tuple[int, int, int] | None = None  # (P, blocks kept before, blocks left out)
        for period in range(1, MAX_PERIOD + 1):
            if i + period > n:
                break
            block = sigs[i : i + period]
            nb = 1
            while sigs[i + nb * period : i + (nb + 1) * period] == block:
                nb += 1
            # the replay resumes on a block, or on layers that begin as one (else a run's own
            # inputs would see their last use in the blocks left out)
            end = i + nb * period
            tail = 0 if end < n and sigs[end] == sigs[i] else 1
            kept = warm if exact else warm + (nb - warm - tail) % 2
            out = nb - kept - tail
            if out >= 2 and (best is None or out * period > best[2] * best[0]):
                best = (period, kept, out)
        if best is None:
            layers.append(i)
            i += 1
            continue
        period, kept, out = best
        start = len(layers)
        layers += range(i, i + kept * period)
        resume = len(layers)
        two = resume - 2 * period if out % 2 == 0 else resume - period  # odd: periodic over one block only
        checks.append((resume, resume - period, two, start))
        outs.append(out)
        i += (kept + out) * period
    return _Plan(tuple(layers), tuple(checks), tuple(outs))


def _one(
    model: GGUFModel,
    ld: _Loaded,
    sp: SimParams,
    n_tokens: int,
    n_outputs: int,
    warm: int | None,
    failed: set[_Plan] | None = None,
    exact: bool = False,
    settled: list[bool] | None = None,
) -> dict[str, int] | None:
    """One reservation: the graph of every layer (``warm`` None), or of a plan's layers (None when the
    allocator is not periodic where the plan needs it to be). ``failed``: the plans this reservation
    already found not periodic (another warm-up can make the same plan: one more block kept to resume
    after an even number left out); such a plan is not replayed again, and a failing one is added.
    ``exact``: the plan of :func:`_plan`'s ``exact``. ``settled``: told (appended) whether, in a
    replay that held, the allocator came back the same after the second block of every run of three
    blocks kept (a hint that the exact plan of two blocks holds for such a reservation: it is
    checked when tried, as any plan)."""
    hp, pl = ld.hp, ld.pl
    c = _context(model, ld, sp, n_tokens, n_outputs)
    plan = _Plan(tuple(range(hp.n_layer)), ())
    if warm is not None:
        key = (tuple(c.cache_buft), tuple(c.pin), warm, exact)  # what the signatures take from the reservation
        if key not in ld.plans:
            ld.plans[key] = _plan(_layer_signatures(c, ld), warm, exact)
        plan = ld.plans[key]
        if not plan.checks:
            warm = None
        elif failed is not None and plan in failed:
            return None
    c.layers = list(plan.layers)
    if warm is not None and ld.tagged is not plan:
        ld.tagged = plan
        where = {il: p for p, il in enumerate(plan.layers)}
        if ld.blk is None:  # each layer weight's layer (None: a "blk." name without one) and place
            ld.blk = []
            for name, copies in c.by_name.items():
                if name.startswith("blk."):
                    num = name[4:].partition(".")[0]
                    il = int(num) if num.isdigit() else None
                    ld.blk.append((il, [(t, ("weight", name[4 + len(num) :], buft)) for buft, t in copies]))
        for il, tagged in ld.blk:
            pos = GLOBAL if il is None else where.get(il, GLOBAL - 1)
            for t, seq in tagged:
                t.pos, t.seq = pos, seq
    probe = ld.probe
    if probe is not None and probe[1] is plan and probe[0] == sp and n_tokens == n_outputs == sp.n_seq_max:
        ld.probe = None  # split changes the graph: used once
        g, sched = probe[2], probe[3]  # the graph the probe built and assigned (weights' tags: not read before)
    else:
        g = _Graph()
        g.expand(build_graph(c, g))
        gpus = [d.name for d in pl.devices]
        sched = _Sched(gpus, _host(pl), N_COPIES if sp.pipeline else 1)
        sched.assign(g)
    nodes, leafs, node_at = sched.split(g)

    def periodic(i: int, states: dict[int, object]) -> bool:
        """Whether the allocator came back the same after a block where run ``i`` resumes."""
        resume, one, two, start = plan.checks[i]
        pre = states.get(PREALLOCATED, frozenset())
        assert isinstance(pre, frozenset)
        # up-front allocations (pipeline parallelism's input copies) of a block after the first: each
        # block left out would have its own (the first block's may come from the layers before it)
        if any(start + resume - one <= p < resume for p in pre):
            return False
        # two blocks back only where that state follows a block too (the warm-up's first block does not)
        twice = two >= start + resume - one and _shifted(states[resume], states[two])
        return twice or _shifted(states[resume], states[one])

    runs = tuple((*check, out) for check, out in zip(plan.checks, plan.outs, strict=True))
    sizes, states = _reserve(nodes, leafs, sched.bufts, node_at, runs, periodic)
    if FAILED in states:
        if failed is not None:
            failed.add(plan)
        return None
    if settled is not None:
        kept = [(resume - start) // (resume - one) for resume, one, _, start in plan.checks]
        settled.append(
            bool(plan.checks)
            and all(k in (2, 3) for k in kept)
            and all(
                # a run replayed whatever the allocator's state (its leafs) holds with two blocks too
                k == 2 or one not in states or _shifted(states[one], states[two])
                for k, (_, one, two, _) in zip(kept, plan.checks)
            )
        )
    return sizes


def _host(pl: Placement) -> str:
    """The CPU backend's buffer type: the first GPU's pinned host memory (``CUDA_Host``); -sm tensor's Meta device
    gives its GPUs' (ggml-backend-meta.cpp:377-397); ``CPU`` without a GPU."""
    gpus = pl.meta or pl.devices
    return host_buft(gpus[0].name if gpus else None)


def _kinds(
    model: GGUFModel, ld: _Loaded, sp: SimParams, n_tokens: int, n_outputs: int
) -> frozenset[tuple[object, ...]]:
    """The layer signatures of one reservation, as a set: which kinds of layers it builds."""
    c = _context(model, ld, sp, n_tokens, n_outputs)
    key = (tuple(c.cache_buft), tuple(c.pin))
    kinds = ld.kinds.get(key)
    if kinds is None:
        kinds = ld.kinds[key] = frozenset(_layer_signatures(c, ld))
    return kinds


def _shifted(a: object, b: object) -> bool:
    """Whether two allocator states (:func:`_state`) are the same."""
    return a == b


WARM = (2, 3, 6)  # the warm-up blocks tried before the whole graph
# the warm-ups tried, in this order unless another held last time, as (blocks, exact): two, three and six
# blocks (or one more, to leave an even number out). Exactly two blocks (:func:`_plan`'s ``exact``)
# are tried first where a replay of the same kinds of layers found the allocator settled after two
TRIES = ((2, False), (3, False), (6, False))


# the architectures whose last prompt reservation has one sequence (llama-context.cpp:713-725,
# TAG_RESERVE_DIAG_DECAY: their decay input grows with the square of the tokens per sequence, so a full
# micro-batch of one sequence takes more than one of every sequence); its graph is built as that of a context of
# one sequence and one stream (exact on minimax-text-01-456b's -fa off -np 3 run)
ONE_SEQUENCE_RESERVE = frozenset({"minimax-01", "kimi-linear"})


def simulate(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    sp: SimParams,
    *,
    whole: bool = False,
    placement: Placement | None = None,
) -> dict[str, int]:
    """Each backend's compute buffer (bytes by buffer type: ``CUDA0``..., ``CUDA_Host`` or ``CPU``):
    the larger of the prompt-processing and the token-generation reservations
    (``llama_context::sched_reserve``, llama-context.cpp:617-770).

    Repeated layers allocate alike: once the allocator's state (its free blocks, the tensors alive,
    where they are and what still reads them) comes back the same after a block of identical layers,
    every further such block leaves it so and allocates as that one did. So the graph is built with
    a few of each run of identical blocks, and the replay checks that periodicity where it leaves the
    others out; where it does not hold (or each block has leafs of its own, allocated before the first
    node), the blocks left out are replayed on the allocators from the last kept block's allocations and
    frees (:func:`galloc._reserve`: what ggml-alloc does for a node depends on the graph only, never
    on where things lie); where that cannot be done, with more blocks kept, then with every layer. ``whole``
    replays every layer (the oracle the shortcut is tested against). ``placement``: ``place(model,
    devices, offload)`` when the caller has it."""
    key = (_layout(devices, offload), offload, sp, whole)
    done = _cached(_RESULTS, model, key)
    if done is not None:
        return dict(done)
    ld = _loaded(model, devices, offload, placement)
    out = []
    last = _LAST_WARM.setdefault(model, {})
    reserves = [(sp, sp.n_ubatch, sp.n_outputs), (sp, sp.n_seq_max, sp.n_seq_max)]
    if model.architecture in ONE_SEQUENCE_RESERVE and sp.n_seq_max > 1:
        reserves.append((replace(sp, n_seq_max=1, n_streams=1), sp.n_ubatch, sp.n_outputs))
    for rsp, n_tokens, n_outputs in reserves:
        sizes = None
        # the warm-up that served this model's last reservation of this kind, with layers of the same
        # signatures, first (--fit's dry runs of one model differ in placement: which layers hold
        # their experts on the host, say; the allocator settles as slowly on such layers in each);
        # where none did, one try before the whole graph. Every answer is checked, so the order
        # changes the time only.
        prompt = n_tokens > rsp.n_seq_max
        if not whole:
            kinds = _kinds(model, ld, rsp, n_tokens, n_outputs)
            prev = last.get((prompt, kinds), TRIES[0])
            probe = ld.probe
            if prev == (2, True) and probe is not None and probe[0] == rsp and n_tokens == n_outputs == rsp.n_seq_max:
                prev = TRIES[0]  # the probe's graph (three blocks, or two) split and reserved, not built again
            tries = TRIES[:1] if prev is None else (prev, *(w for w in TRIES if w != prev))
            used: tuple[int, bool] | None = None
            failed: set[_Plan] = set()
            for warm, exact in tries:
                settled: list[bool] = []
                sizes = _one(model, ld, rsp, n_tokens, n_outputs, warm, failed, exact, settled)
                if sizes is not None:
                    used = (2, True) if settled[0] else (warm, exact)
                    break
            last[(prompt, kinds)] = used
        out.append(sizes or _one(model, ld, rsp, n_tokens, n_outputs, None))
    sized = [o for o in out if o is not None]
    assert len(sized) == len(reserves)
    result = {b: max(o.get(b, 0) for o in sized) for b in sized[0]}  # the buffers only grow
    return dict(_store(_RESULTS, model, key, result, 256))


def flash_attn_mismatch(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    sp: SimParams,
    placement: Placement | None = None,
    *,
    whole: bool = False,
) -> int | None:
    """``-fa auto``: ``resolve_fused_ops`` (llama-context.cpp:509-561) reserves the graph of one token
    per sequence and keeps flash attention only if the scheduler puts every layer's flash-attention
    node on that layer's device. The first layer whose node it puts elsewhere (None: flash attention
    stays on): LFM2 at ``-ngl 8``, say, whose host attention layer 8 follows the GPU's inputs.

    Layers of one signature are scheduled alike, so the probe graph holds the layers of the
    allocator's plan (the first blocks of each run of identical blocks, and every other layer): a
    node put elsewhere in a left-out block is put elsewhere in the kept one like it too, and the
    first layer that differs is in a kept block. ``whole`` builds every layer (the oracle this is
    tested against)."""
    if not devices:
        return None
    # the outcome depends on the placement and the graph's structure, not on the context's length
    key = ("flash-attn probe", _layout(devices, offload), offload, replace(sp, n_kv=256, n_kv_swa=256), whole)
    done = _cached(_RESULTS, model, key)
    if done is not None:
        return None if done < 0 else int(done)
    il = _flash_attn_mismatch(model, devices, offload, sp, placement, whole)
    _store(_RESULTS, model, key, -1 if il is None else il, 256)
    return il


def _flash_attn_mismatch(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    sp: SimParams,
    placement: Placement | None,
    whole: bool,
) -> int | None:
    ld = _loaded(model, devices, offload, placement)
    c = _context(model, ld, sp, sp.n_seq_max, sp.n_seq_max)
    plan = None
    if whole:
        c.layers = list(range(ld.hp.n_layer))
    else:  # the plan of two blocks (or three) that the token reservation tries first
        key = (tuple(c.cache_buft), tuple(c.pin), 2, False)
        if key not in ld.plans:
            ld.plans[key] = _plan(_layer_signatures(c, ld), 2)
        plan = ld.plans[key]
        c.layers = list(plan.layers)
    g = _Graph()
    g.expand(build_graph(c, g))
    gpus = [d.name for d in ld.pl.devices]
    sched = _Sched(gpus, _host(ld.pl), 1)
    sched.assign(g)
    # kept for that reservation (with flash attention kept on, the same graph) unless pipeline parallelism
    # gives it another scheduler
    ld.probe = (sp, plan, g, sched) if plan is not None and not sp.pipeline else None
    for node in g.nodes:
        if node.op == "FLASH_ATTN_EXT" and node.name.startswith("node_fa-"):
            il = int(node.name.rsplit("-", 1)[1])
            device = ld.pl.dev_layer(il)
            if node.backend != (gpus.index(device) if device in gpus else sched.cpu):
                return il
    return None


def _loaded(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, placement: Placement | None = None
) -> _Loaded:
    key = (_layout(devices, offload), offload)
    ld = _cached(_LOADED, model, key)
    if ld is None:
        pl = placement or place(model, devices, offload)
        ld = _store(_LOADED, model, key, _load(model, hparams(model), pl), LOADED_MOST)
    assert isinstance(ld, _Loaded)
    return ld


def _layout(devices: list[Device], offload: OffloadParams) -> tuple[object, ...]:
    """What of the GPUs decides the placement: their names, and their free memory only where it splits
    the layers (``-ts`` unset and several GPUs: ``placement.layer_devices`` shares them by it). One GPU
    holds every offloaded layer whatever its size, so a report's memory chart and its table, or --fit's
    searches at several budgets, share their replays."""
    if (len(devices) > 1 and not any(offload.tensor_split)) or offload.split_mode == "tensor":
        return tuple(devices)
    return tuple(d.name for d in devices)


# per model (held weakly), why its graph is not simulated (:func:`simulated`; None: it is)
_WHY_NOT: weakref.WeakKeyDictionary[GGUFModel, str | None] = weakref.WeakKeyDictionary()
# per model (held weakly: a model closed and collected takes its entries along), the loaded graph
# tensors per placement and the buffers per reservation, so that --fit's searches and a report's
# several contexts replay a configuration once per process
_LOADED: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]] = weakref.WeakKeyDictionary()
# how many placements' loaded tensors a model keeps (the oldest goes first): --fit's search of llama.cpp
# tries 9 to 12 placements per cache type, each pass in the same order, so at 8 every one of its 27 loads
# of DeepSeek-V4-Flash or the 94-layer MoE missed (600 M instructions); at 16, 9 and 12 loads, for 1.4 and
# 5 MiB more peak memory (issue 21)
LOADED_MOST = 16
_RESULTS: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]] = weakref.WeakKeyDictionary()
# per model, reservation (prompt or token) and set of layer signatures: the warm-up of the last shortened
# replay that held (None: none did, the whole graph was replayed)
_LAST_WARM: weakref.WeakKeyDictionary[GGUFModel, dict[object, tuple[int, bool] | None]] = weakref.WeakKeyDictionary()


def _cached(cache: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]], model: GGUFModel, key: object) -> Any:
    return cache.get(model, {}).get(key)


def _store(
    cache: weakref.WeakKeyDictionary[GGUFModel, dict[object, Any]], model: GGUFModel, key: object, value: T, most: int
) -> T:
    entries = cache.setdefault(model, {})
    if len(entries) >= most:
        del entries[next(iter(entries))]
    entries[key] = value
    return value
