"""Multi-token-prediction speculative decoding (``--spec-type draft-mtp``): what llama.cpp allocates beside
the main context when it drafts with the model's own NextN/MTP block.

With ``draft-mtp`` llama.cpp (common/common.cpp:1683 ``load_mtp``, common/speculative.cpp:2527-2650,
tools/server/server-context.cpp:1110-1250):

* loads the NextN blocks' tensors (``TENSOR_SKIP`` otherwise), in the model buffers of their layer's device,
  as any layer's (``mtp_model``: the bytes they add to each model buffer);
* makes a second context of type ``LLAMA_CONTEXT_TYPE_MTP`` over the same weights, from the main context's
  parameters (``common_base_params_to_speculative``): the main context's ``n_ctx``, sequences and
  ``-kvu``, the draft cache types ``-ctkd``/``-ctvd`` (f16 by default, not ``-ctk``/``-ctv``),
  ``n_outputs_max`` = ``-np``. Its memory (src/llama-model.cpp ``create_memory``) is a plain KV cache of the
  NextN layers only (``il >= n_layer()``; ``mtp_kv``); its output buffer holds ``-np`` rows of logits
  (``mtp_output``); its graph (``LLM_GRAPH_TYPE_DECODER_MTP``, :mod:`ggufx.analysis.memory.graph.models.mtp`)
  is reserved as the main one is (``mtp_compute``);
* gives the main context ``n_rs_seq`` = ``--spec-draft-n-max`` (3) rollback snapshots of the recurrent
  state (``need_n_rs_seq``: ``mem_size x (1 + n_rs_seq)`` rows, llama-memory-recurrent.cpp:101), and in
  llama-server ``n_outputs_max`` = ``-np x (1 + n_max)`` (``server_output_limits``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.buffers import (
    Breakdown,
    Buffer,
    ContextParams,
    MiB,
    _cache_type,
    _host,
    kv_buffers,
    recurrent_buffers,
    weight_buffers,
)
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.placement import Device, OffloadParams, host_buft, place
from ggufx.errors import InputError
from ggufx.model import GGUFModel

if TYPE_CHECKING:
    from ggufx.analysis.memory.fit import DeviceUse, DryRun

SPEC_TYPES = (  # common/speculative.cpp:72-84, the names --spec-type takes
    "none",
    "draft-simple",
    "draft-eagle3",
    "draft-mtp",
    "draft-dflash",
    "draft-dspark",
    "ngram-simple",
    "ngram-map-k",
    "ngram-map-k4v",
    "ngram-mod",
    "ngram-cache",
)
N_MAX = 3  # common_params_speculative_draft::n_max (common.h:329), --spec-draft-n-max
# the architectures whose MTP context's memory is a plain KV cache of the NextN layers (create_memory)
# and whose MTP graph is rebuilt here
MODELLED = ("qwen35", "qwen35moe", "qwen3next", "glm4moe", "deepseek2")
# llm_arch_supports_rs_rollback (llama-arch.cpp:1162-1179): the architectures whose context keeps the rollback
# snapshots; the others clamp n_rs_seq to 0 (llama-context.cpp:107-112)
RS_ROLLBACK = frozenset(
    ("kimi-k3", "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "glm5-next")
    + ("nemotron_h", "nemotron_h_moe", "lfm2", "lfm2moe", "bailingmoe3")
)
# of those, the ones whose state ggufx sizes in other buffers than the recurrent memory's R, S (and qwen4exp's
# P) rows: DeepSeek V4's compressor states, Kimi K3's: their snapshots are not modelled
RS_ROLLBACK_NOT_MODELLED = frozenset(("kimi-k3", "deepseek4"))
# the architectures whose NextN weights (load_mtp) are proven against llama.cpp's model buffers (mtp/ logs)
# beyond MODELLED; the others' are not counted (dots3note's loader takes fewer than its file's blk.N tensors)
WEIGHTS_PROVEN = ("bailingmoe3", "cohere2moe", "deepseek32", "glm-dsa", "glm5-next", "qwen4exp", "deepseek4")


@dataclass(frozen=True, slots=True)
class MtpOptions:
    """``--spec-type draft-mtp`` and the options of its draft context."""

    n_max: int = N_MAX  # --spec-draft-n-max: the main context's rollback snapshots (n_rs_seq)
    cache_type_k: str = "f16"  # -ctkd
    cache_type_v: str = "f16"  # -ctvd


def spec_types(text: str) -> tuple[str, ...]:
    """``--spec-type a,b``: the names, each one llama.cpp knows (InputError otherwise, in its words)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = next((n for n in names if n not in SPEC_TYPES), None)
    if bad is not None or not names:
        raise InputError(
            f"unknown speculative type: {bad or text!r} (one of {', '.join(SPEC_TYPES)})",
            "--spec-type",
        )
    return names


def no_mtp_reason(model: GGUFModel) -> str | None:
    """Why llama.cpp cannot make this model's MTP context (None: it can): no NextN block
    (llama_init_from_model, llama-context.cpp:3883-3888: "context type MTP requested but model doesn't
    contain MTP layers", and llama-server stops: "failed to create MTP context")."""
    hp = hparams(model)
    if hp.n_layer == hp.n_layer_main or hp.router_layer >= 0:
        return (
            f"{model.path} has no MTP layers ({model.architecture}.nextn_predict_layers is 0): llama.cpp "
            'cannot create the MTP context ("context type MTP requested but model doesn\'t contain MTP layers")'
        )
    return None


def main_context(context: ContextParams, opts: MtpOptions, server: bool) -> ContextParams:
    """The main context's parameters under ``draft-mtp``: ``n_max`` rollback snapshots of the recurrent state
    (``n_rs_seq``: the graph writes them, :func:`rollback_state` sizes them), and in llama-server
    ``-np x (1 + n_max)`` outputs (``server_output_limits``, capped at ``-b``)."""
    context = replace(context, n_rs_seq=max(0, opts.n_max))
    if not server:
        return context
    return replace(context, n_outputs_max=min(context.n_batch, context.n_parallel * (1 + max(0, opts.n_max))))


def rollback_state(
    model: GGUFModel, b: Breakdown, devices: list[Device], offload: OffloadParams, context: ContextParams, n_rs_seq: int
) -> None:
    """The main context's recurrent state with ``n_rs_seq`` rollback snapshots per sequence: every R and S
    tensor has ``max(1, n_seq) x (1 + n_rs_seq)`` rows (llama-memory-recurrent.cpp:101). Replaces
    ``b``'s recurrent buffers and byte count in place. Only the architectures of :data:`RS_ROLLBACK` keep
    snapshots (llama.cpp clamps ``n_rs_seq`` to 0 for the others)."""
    arch = model.architecture or ""
    if n_rs_seq <= 0 or arch not in RS_ROLLBACK or not any(x.kind in ("recurrent", "state") for x in b.buffers):
        return
    if arch in RS_ROLLBACK_NOT_MODELLED:
        b.notes.append(
            f"--spec-type draft-mtp: {arch} keeps {n_rs_seq} rollback snapshots of its state per sequence, "
            "which ggufx does not model (its state figures are without them)"
        )
        return
    if not any(x.kind == "recurrent" for x in b.buffers):
        return
    hp = hparams(model)
    pl = place(model, devices, offload)
    rows = max(1, context.n_parallel) * (1 + n_rs_seq)
    kinds = layer_kinds(model)
    rs = recurrent_buffers(hp, kinds, pl, context, rows)
    if arch == "qwen4exp":  # its PLE history rows too (llama-memory-recurrent.cpp:109-114)
        from ggufx.analysis.memory.buffers import ple_state_buffers

        rs = ple_state_buffers(model, kinds, pl, context, rows, rs)
    at = next(i for i, x in enumerate(b.buffers) if x.kind == "recurrent")
    b.buffers = [x for x in b.buffers if x.kind != "recurrent"]
    b.buffers[at:at] = rs
    b.recurrent_bytes *= 1 + n_rs_seq
    b.notes.append(
        f"--spec-type draft-mtp: the recurrent state keeps {n_rs_seq} rollback snapshots per sequence "
        f"(--spec-draft-n-max; {1 + n_rs_seq}x the state of each sequence)"
    )


def mtp_buffers(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    context: ContextParams,
    main: Breakdown,
    opts: MtpOptions,
    notes: list[str],
) -> list[Buffer]:
    """The MTP context's buffers and the MTP weights (kinds ``mtp_model``, ``mtp_kv``, ``mtp_output``,
    ``mtp_compute``) beside ``main``, the main context's breakdown with the same options. An architecture
    whose MTP context is not modelled gets a note saying so, and no rows."""
    why = no_mtp_reason(model)
    if why:
        raise InputError(f"--spec-type draft-mtp: {why}", "--spec-type")
    arch = model.architecture or ""
    if offload.split_mode == "tensor" or main.reservation is None:
        notes.append("--spec-type draft-mtp: the MTP context is not modelled with -sm tensor")
        return []
    if arch not in MODELLED + WEIGHTS_PROVEN:
        notes.append(
            f"--spec-type draft-mtp: the MTP context of {arch} and the NextN weights it loads are not modelled; "
            f"modelled: {', '.join(MODELLED)}"
        )
        return []
    hp = hparams(model)
    with_mtp = replace(offload, mtp=True)
    pl = place(model, devices, with_mtp)
    out: list[Buffer] = []
    # the NextN weights: what they add to each model buffer (the same buffers as the trunk's), any architecture
    before: dict[str, int] = {}
    for x in weight_buffers(model, place(model, devices, offload)):
        before[x.buft] = before.get(x.buft, 0) + x.bytes
    after: dict[str, int] = {}
    for x in weight_buffers(model, pl):
        after[x.buft] = after.get(x.buft, 0) + x.bytes
    out += [Buffer("mtp_model", buft, n - before.get(buft, 0)) for buft, n in after.items() if n != before.get(buft, 0)]
    if arch not in MODELLED:
        notes.append(
            f"--spec-type draft-mtp: the MTP context of {arch} (its KV cache, output and compute buffers) is not "
            f"modelled, only the NextN weights it loads; modelled: {', '.join(MODELLED)}"
        )
        return out
    # the MTP context's KV cache: the NextN layers only, of the draft cache types
    cp = replace(context, cache_type_k=opts.cache_type_k, cache_type_v=opts.cache_type_v)
    if cp.flash_attn == "off" and _cache_type(cp.cache_type_v, "-ctvd").is_quantized:
        raise InputError("a quantized draft V cache (-ctvd) needs flash attention (llama.cpp refuses -fa off)", "-ctvd")
    kinds = [replace(k, kv=k.nextn and k.is_attention) for k in layer_kinds(model)]
    kv, _ = kv_buffers(hp, kinds, pl, cp, main.n_ctx_seq, main.swa_cells, main.n_streams, model.path)
    out += [Buffer("mtp_kv", x.buft, x.bytes) for x in kv]
    n_seq = max(1, context.n_parallel)
    out.append(Buffer("mtp_output", _host(pl, pl.output_device), 4 * hp.n_vocab * n_seq))
    from ggufx.analysis.memory.graph.models.mtp import unbuildable

    why_not = unbuildable(model)
    if why_not:
        notes.append(f"--spec-type draft-mtp: the MTP context's compute buffer is not counted: {why_not}")
        return out
    sp = replace(
        main.reservation,
        n_outputs=min(main.n_ubatch, n_seq),
        type_k=_cache_type(cp.cache_type_k, "-ctkd").name,
        type_v=_cache_type(cp.cache_type_v, "-ctvd").name,
    )
    out += [
        Buffer("mtp_compute", b, n, exact=False) for b, n in mtp_compute(model, devices, with_mtp, sp).items() if n > 1
    ]
    notes.append(summary(out, main, cp, hp.n_layer - hp.n_layer_main))
    return out


def summary(bufs: list[Buffer], main: Breakdown, cp: ContextParams, n_nextn: int) -> str:
    """One line on the MTP context: what each of its kinds takes, in MiB."""

    def mib(kind: str) -> str:
        return f"{sum(x.bytes for x in bufs if x.kind == kind) / MiB:,.2f} MiB"

    cells = f"{main.n_ctx_seq:,} cells" + (f" x {main.n_streams} streams" if main.n_streams > 1 else "")
    return (
        f"--spec-type draft-mtp: the NextN weights add {mib('mtp_model')} to the model buffers; the MTP draft context's KV cache "
        f"{mib('mtp_kv')} ({n_nextn} layer(s) x {cells}, K {cp.cache_type_k} V {cp.cache_type_v}: -ctkd/-ctvd), "
        f"output {mib('mtp_output')}, compute {mib('mtp_compute')} (computed)"
    )


def mtp_compute(model: GGUFModel, devices: list[Device], offload: OffloadParams, sp: object) -> dict[str, int]:
    """Each backend's compute buffer of the MTP context: its graph of ``n_ubatch`` tokens and of one token
    per sequence, split and allocated as the main context's are (graphsim's scheduler and allocator), the
    larger of the two per buffer type."""
    from ggufx.analysis.memory.graph.galloc import _reserve
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.graphsim import _context, _load
    from ggufx.analysis.memory.graph.llm import SimParams
    from ggufx.analysis.memory.graph.models.mtp import build
    from ggufx.analysis.memory.graph.sched import N_COPIES, _Sched

    assert isinstance(sp, SimParams)
    hp = hparams(model)
    ld = _load(model, hp, place(model, devices, offload))
    gpus = [d.name for d in ld.pl.devices]
    result: dict[str, int] = {}
    for n_tokens, n_outputs in ((sp.n_ubatch, sp.n_outputs), (sp.n_seq_max, sp.n_seq_max)):
        c = _context(model, ld, sp, n_tokens, n_outputs)
        c.layers = [hp.n_layer_main]
        g = _Graph()
        g.expand(build(c, g))
        sched = _Sched(gpus, host_buft(gpus[0] if gpus else None), N_COPIES if sp.pipeline else 1)
        sched.assign(g)
        nodes, leafs, node_at = sched.split(g)
        sizes, _ = _reserve(nodes, leafs, sched.bufts, node_at)
        for b, n in sizes.items():
            result[b] = max(result.get(b, 0), n)
    return result


_EXIT = re.compile(r"~llama_context:\s+(?P<buft>\S+) compute buffer size is")
_RESERVE = re.compile(r"sched_reserve:\s+(?P<buft>\S+) compute buffer size =")
MARK = "creating MTP draft context"  # common_speculative_init_result (speculative.cpp:2639)


def split_log(text: str) -> tuple[str, str]:
    """A ``--spec-type draft-mtp`` log (``-v``) as two logs: the main context's and the MTP context's.

    The MTP context's lines follow ``creating MTP draft context``; it reserves its graph again once the
    draft samplers are set (``set_sampler``: the last ``sched_reserve`` line per buffer type counts). At
    exit the MTP context ends first: the first ``~llama_context`` line of each buffer type is its own, the
    next the main context's."""
    head, sep, tail = text.partition(MARK)
    if not sep:
        raise InputError(f"the log made no MTP context (no '{MARK}' line)", "--check")
    lines = tail.splitlines()
    last = {m["buft"]: i for i, line in enumerate(lines) if (m := _RESERVE.search(line))}
    mtp: list[str] = []
    main_exit: list[str] = []
    seen: set[str] = set()
    for i, line in enumerate(lines):
        if m := _EXIT.search(line):
            (main_exit if m["buft"] in seen else mtp).append(line)
            seen.add(m["buft"])
        elif (r := _RESERVE.search(line)) is None or last[r["buft"]] == i:
            mtp.append(line)
    return "\n".join([head, *main_exit]), "\n".join(mtp)


def fit_measure(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, context: ContextParams, opts: MtpOptions
) -> Callable[[DryRun], tuple[DeviceUse, ...]]:
    """The dry runs of llama.cpp's fit under ``draft-mtp`` (common/common.cpp:1236-1265, common/fit.cpp:200-262):
    the main model loaded with its NextN tensors (``load_mtp``), its context with the rollback snapshots,
    and on each GPU the MTP context's memory beside it (``common_fit_extra_model`` with ``shares_model``: its
    KV cache and compute buffers, no weights), measured at the main context's ``n_ctx`` with the options
    as given (the extra model's parameters are copied before fit changes the main ones)."""
    import re

    from ggufx.analysis.memory.buffers import breakdown
    from ggufx.analysis.memory.fit import MOE_ALL, device_use, layer_args
    from ggufx.analysis.memory.placement import CPU

    hp = hparams(model)
    with_mtp = replace(offload, mtp=True)
    names = [t.name for t in model.tensors]
    extra: dict[int, dict[tuple[str, str], int]] = {}
    measured: dict[DryRun, tuple[DeviceUse, ...]] = {}

    def mtp_use(n_ctx: int) -> dict[tuple[str, str], int]:
        """(device, kv or compute) -> bytes of the MTP context at this context size."""
        if n_ctx not in extra:
            cp = replace(context, n_ctx=n_ctx)
            b = breakdown(model, devices, offload, cp)
            per: dict[tuple[str, str], int] = {}
            for x in mtp_buffers(model, devices, offload, cp, b, opts, []):
                if x.kind in ("mtp_kv", "mtp_compute"):
                    key = (x.buft, x.kind[4:])
                    per[key] = per.get(key, 0) + x.bytes
            extra[n_ctx] = per
        return extra[n_ctx]

    def measure(run: DryRun) -> tuple[DeviceUse, ...]:
        if run in measured:
            return measured[run]
        off = with_mtp
        if run.experts_on_host:
            off = replace(with_mtp, overrides=((MOE_ALL, CPU),))
        elif run.layers is not None:
            # llama.cpp's hp_ngl counts the NextN layers under load_mtp (common/fit.cpp:140-143)
            ngl, ts, ot = layer_args(run.layers, run.bufts, hp.n_layer)
            off = replace(
                with_mtp,
                n_gpu_layers=ngl,
                tensor_split=tuple(float(n) for n in ts) or offload.tensor_split,
                overrides=tuple(o for o in ot if any(re.search(o[0], n) for n in names)),
            )
        cp = replace(context, n_ctx=run.n_ctx)
        b = breakdown(model, devices, off, cp)
        rollback_state(model, b, devices, off, cp, opts.n_max)
        use = device_use(b, devices)
        more = mtp_use(run.n_ctx)
        measured[run] = tuple(
            replace(
                u, context=u.context + more.get((d.name, "kv"), 0), compute=u.compute + more.get((d.name, "compute"), 0)
            )
            for u, d in zip(use, devices, strict=True)
        )
        return measured[run]

    return measure


def free_seen(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, context: ContextParams, opts: MtpOptions
) -> list[Device]:
    """:func:`ggufx.analysis.memory.fit.free_seen` under ``draft-mtp``: the first dry run allocates the main
    context's recurrent state with its rollback snapshots (the MTP context's plain KV cache is a dummy)."""
    from ggufx.analysis.memory.buffers import breakdown
    from ggufx.analysis.memory.fit import PAGE

    with_mtp = replace(offload, mtp=True)
    b = breakdown(model, devices, with_mtp, context)
    rollback_state(model, b, devices, with_mtp, context, opts.n_max)
    rs = b.by_kind("recurrent")
    for name, n in b.by_kind("state").items():
        rs[name] = rs.get(name, 0) + n
    out = []
    for d in devices:
        state = -(-rs.get(d.name, 0) // PAGE) * PAGE
        out.append(replace(d, free=d.free - state - (PAGE if state or len(devices) > 1 else 0)))
    return out
