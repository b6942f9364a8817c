"""The result of every read-only command as the JSON object its ``--json`` prints.

One function per command, used by the CLI and by the MCP tools alike, so that the two cannot
disagree. Functions take a parsed model (or template set) and plain options and return plain
dicts; a bad option (a regular expression that does not compile, an unknown type name) raises
:class:`InputError`, which the CLI shows as a usage error and the MCP server as a tool error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ggufx.analysis.summary import summarize
from ggufx.errors import GGUFError, InputError, SourceError, ValidationError
from ggufx.format.ggmltypes import CACHE_TYPES
from ggufx.format.reader import KV, TensorInfo
from ggufx.format.values import GGUFArray, ValueType, f32_short
from ggufx.io.sources import is_remote
from ggufx.model import GGUFModel

if TYPE_CHECKING:  # the memory model is imported by the commands that use it (info stays light)
    from ggufx.analysis.memory.buffers import Breakdown, Buffer, ContextParams
    from ggufx.analysis.memory.graph.projector import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

__all__ = ["CACHE_TYPES", "SORT_ORDERS", "InputError"]  # and one function per command, below

SORT_ORDERS = ("offset", "name", "size", "type", "bpw")

# -- records --------------------------------------------------------------------------------------

ARRAY_HEAD = 8  # array elements shown without --full


def tensor_dict(t: TensorInfo) -> dict[str, Any]:
    """One tensor as ``tensors --json`` gives it."""
    return {
        "name": t.name,
        "type": t.type.name,
        "shape": list(t.shape),
        "elements": t.n_elements,
        "bytes": t.nbytes,
        "bpw": round(t.bpw, 4),
        "shard": t.shard,
        "offset": t.offset,
        "file_offset": t.file_offset,
        "size_derived": t.size_derived,
    }


def _elem_label(a: GGUFArray) -> str:
    label = f"{a.elem_type.short},{a.count}"
    if a.elem_type is ValueType.ARRAY and a.count:
        label = f"arr[{_elem_label(a[0])}],{a.count}"
    return label


def json_value(kv_type: ValueType, value: Any, full: bool) -> Any:
    """A metadata value as JSON: floats as the shortest float32 text, arrays optionally cut."""
    if kv_type is ValueType.FLOAT32:
        return f32_short(value)
    if kv_type is ValueType.ARRAY:
        a: GGUFArray = value
        if a.elem_type is ValueType.ARRAY:
            return [json_value(ValueType.ARRAY, v, full) for v in (a if full else a[:ARRAY_HEAD])]
        items = a.tolist() if full else a[:ARRAY_HEAD]
        if a.elem_type is ValueType.FLOAT32:
            items = [f32_short(v) for v in items]
        return items
    return value


def kv_dict(kv: KV, full: bool) -> dict[str, Any]:
    """A metadata record as ``meta --json`` gives it (arrays cut to their first items unless ``full``)."""
    d: dict[str, Any] = {"type": kv.type.short}
    if kv.type is ValueType.ARRAY:
        d["type_label"] = f"arr[{_elem_label(kv.value)}]"
        d["element_type"] = kv.value.elem_type.short
        d["length"] = kv.value.count
        d["truncated"] = (not full) and kv.value.count > ARRAY_HEAD
    d["value"] = json_value(kv.type, kv.value, full)
    d["offset"] = kv.offset
    return d


# -- read-only commands --------------------------------------------------------------------------


def info(model: GGUFModel) -> dict[str, Any]:
    return summarize(model).to_dict()


def _sort_key(order: str) -> Callable[[TensorInfo], Any]:
    return {
        "offset": lambda t: (t.shard, t.offset),
        "name": lambda t: t.name,
        "size": lambda t: (-t.nbytes, t.name),
        "type": lambda t: (t.type.name, t.name),
        "bpw": lambda t: (-t.bpw, t.name),
    }[order]


def parse_layer_range(text: str) -> tuple[int, int]:
    """``"12"`` -> (12, 12); ``"10-19"`` -> (10, 19)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if m is None:
        raise InputError(f"{text!r} is not a layer or a range like 10-19", "--layers")
    lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
    if hi < lo:
        raise InputError(f"layer range {text!r} ends before it starts", "--layers")
    return lo, hi


def tensors(
    model: GGUFModel,
    types: Iterable[str] = (),
    grep: str | None = None,
    sort: str = "offset",
    layers: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Tensors filtered by ggml type names, a regular expression searched in the name and a layer
    range; sorted; then the page ``[offset, offset + limit)``. ``count`` is the number that matched;
    with a limit, ``next_offset`` is where the next page starts (null after the last)."""
    from ggufx.analysis.filekind import file_kind
    from ggufx.analysis.roles import parse_name
    from ggufx.format.ggmltypes import ggml_type_by_name

    if sort not in SORT_ORDERS:
        raise InputError(f"sort must be one of {', '.join(SORT_ORDERS)}", "--sort")
    pattern = None
    if grep is not None:
        try:
            pattern = re.compile(grep)
        except re.error as e:
            raise InputError(f"invalid regular expression: {e}", "--grep") from None
    wanted = set()
    for type_name in types:
        try:
            wanted.add(ggml_type_by_name(type_name).name)
        except ValueError as e:
            raise InputError(str(e), "--type") from None
    span = parse_layer_range(layers) if layers is not None else None
    if offset < 0 or (limit is not None and limit < 1):
        raise InputError("offset must be >= 0 and limit >= 1", "--limit")
    selected = []
    for t in model.tensors:
        if wanted and t.type.name not in wanted:
            continue
        if pattern is not None and not pattern.search(t.name):
            continue
        if span is not None:
            layer = parse_name(t.name).layer
            if layer is None or not span[0] <= layer <= span[1]:
                continue
        selected.append(t)
    selected.sort(key=_sort_key(sort))
    out: dict[str, Any] = {"path": model.path, "kind": file_kind(model), "count": len(selected)}
    if limit is None and offset == 0:
        out["tensors"] = [tensor_dict(t) for t in selected]
        return out
    page = selected[offset : offset + limit if limit is not None else None]
    end = offset + len(page)
    out.update(
        {
            "offset": offset,
            "limit": limit,
            "next_offset": end if end < len(selected) else None,
            "tensors": [tensor_dict(t) for t in page],
        }
    )
    return out


def meta(model: GGUFModel, key: str | None = None, full: bool = False) -> dict[str, Any]:
    """All keys (arrays summarised unless ``full``), or one key's record with its whole value."""
    from ggufx.analysis.filekind import file_kind

    md = model.metadata
    if key is None:
        return {
            "path": model.path,
            "kind": file_kind(model),
            "metadata": {kv.key: kv_dict(kv, full) for kv in md.kvs()},
        }
    if key not in md:
        raise InputError(f"{model.path}: no metadata key {key!r} (`ggufx meta {model.path}` lists them)", "KEY")
    return {"key": key, **kv_dict(md.kv(key), True)}


def roles(model: GGUFModel) -> dict[str, Any]:
    """Where the bits go, per role; a companion file's roles are those of the model tensors it
    adapts or measures (``attn_q.lora_a``, ``attn_q.in_sum2``) or its towers' (``v.attn_q``)."""
    from ggufx.analysis.filekind import file_kind
    from ggufx.analysis.roles import role_table

    return {"path": model.path, "kind": file_kind(model), "roles": [r.to_dict() for r in role_table(model)]}


def layers(model: GGUFModel, collapse: bool = True) -> dict[str, Any]:
    """The layer grid; for a companion file the layers it holds or covers
    (:func:`ggufx.analysis.layers.companion_grid`)."""
    from ggufx.analysis.filekind import file_kind
    from ggufx.analysis.layers import layer_grid

    kind = file_kind(model)
    return {"path": model.path, "kind": kind, **layer_grid(model, collapse=collapse, kind=kind).to_dict()}


def recipe(model: GGUFModel, imatrix_file: GGUFModel | None = None, budget_bpw: float | None = None) -> dict[str, Any]:
    """``ggufx recipe``: the llama-quantize recipe that reproduces ``model``'s types; with an
    importance matrix and a budget (BPW as llama.cpp prints it), the ``--tensor-type`` promotions
    of the most important tensors that fit it (``analysis.promotion``), as one command."""
    from ggufx.analysis.recipe import check_recipe
    from ggufx.analysis.recipe import recipe as make_recipe

    if (imatrix_file is None) != (budget_bpw is None):
        raise InputError("--imatrix and --budget go together", "--budget")
    if imatrix_file is not None and budget_bpw is not None:
        from ggufx.analysis.companions import imatrix_coverage
        from ggufx.analysis.promotion import Importance, plan

        stats = imatrix(imatrix_file)  # a file that is not an imatrix fails here, naming it
        if (why := imatrix_coverage(model, imatrix_file)) is not None:
            raise ValidationError(imatrix_file.path, None, f"not an imatrix for {model.path}: {why}")
        importance = {
            r["name"]: Importance(r["importance"], r["rank"], r["role_count"])
            for r in stats["tensors"]
            if r["importance"] is not None
        }
        try:
            p = plan(model, importance, budget_bpw, imatrix_file.path)
        except ValueError as e:
            raise InputError(f"{model.path}: {e}", "--budget") from None
        return {"path": model.path, **p.to_dict()}
    rec = make_recipe(model)
    d = rec.to_dict()
    d["path"] = model.path
    d["verified"] = not check_recipe(model, rec)
    return d


def diff(a: GGUFModel, b: GGUFModel) -> dict[str, Any]:
    from ggufx.analysis.diff import diff as model_diff

    return model_diff(a, b).to_dict()


def memory(
    model: GGUFModel,
    ctx: int = 0,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    flash_attn: bool = True,
    parallel: int = 1,
    ubatch: int = 512,
    n_gpu_layers: int = -1,
    *,
    gpus: Sequence[Device] | None = None,
    offload: OffloadParams | None = None,
    context: ContextParams | None = None,
    mmproj: GGUFModel | None = None,
    draft: GGUFModel | None = None,
    draft_offload: OffloadParams | None = None,
    draft_context: ContextParams | None = None,
    projector: ProjectorOptions | None = None,
) -> dict[str, Any]:
    """Every buffer llama.cpp allocates, per device, and the one-GPU summary of earlier versions.

    ``mmproj`` adds a projector's weights and compute buffers (on the first GPU, as ``mtmd`` loads
    it, with ``projector``'s ``--image-*-tokens`` / ``--no-mmproj-offload``); ``draft`` adds a draft
    model's buffers (its own context, ``-ngld``/``-cd``/``-ctkd``/``-ctvd`` in ``draft_*``).

    ``gpus`` (default one CUDA GPU; empty: a build without GPUs), ``offload`` and ``context`` carry
    every llama.cpp option; without them the positional arguments are used."""
    from ggufx.analysis.memory.buffers import ContextParams, breakdown
    from ggufx.analysis.memory.estimate import GPU, summarize_breakdown
    from ggufx.analysis.memory.graph.projector import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

    if context is None:
        for name, v in (("--cache-type-k", cache_type_k), ("--cache-type-v", cache_type_v)):
            if v not in CACHE_TYPES:
                raise InputError(f"cache type {v!r} is not one of {', '.join(CACHE_TYPES)}", name)
        if ctx < 0 or parallel < 1 or ubatch < 1:
            raise InputError("ctx must be >= 0, parallel and ubatch >= 1", "--ctx")
        context = ContextParams(
            n_ctx=ctx,
            n_ubatch=ubatch,
            n_parallel=parallel,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            flash_attn="auto" if flash_attn else "off",
        )
    offload = offload or OffloadParams(n_gpu_layers=n_gpu_layers)
    devices = list(gpus) if gpus is not None else [Device(GPU, 0)]
    b = breakdown(model, devices, offload, context)
    extra = companion_buffers(
        model, devices, context, mmproj, draft, draft_offload, draft_context, b.notes, projector or ProjectorOptions()
    )
    e = summarize_breakdown(model, b, context)
    b.buffers += extra
    return {"path": model.path, **e.to_dict(), "n_gpu_layers_requested": offload.n_gpu_layers, **memory_details(b)}


def companion_buffers(
    model: GGUFModel,
    devices: Sequence[Device],
    context: ContextParams,
    mmproj: GGUFModel | None,
    draft: GGUFModel | None,
    draft_offload: OffloadParams | None,
    draft_context: ContextParams | None,
    notes: list[str],
    projector: ProjectorOptions,
) -> list[Buffer]:
    """A projector's weights and compute buffers and a draft model's buffers (kinds ``projector``,
    ``projector_compute`` and ``draft_*``); a pair llama.cpp would refuse is an
    :class:`InputError` naming the reason."""
    from ggufx.analysis.companions import draft_incompatibility, projector_incompatibility
    from ggufx.analysis.memory.buffers import Buffer, alloc_size, breakdown
    from ggufx.analysis.memory.graph.projector import projector_buffers, projector_unsupported
    from ggufx.analysis.memory.placement import OffloadParams

    out: list[Buffer] = []
    if mmproj is not None:
        reason = projector_incompatibility(model, mmproj)
        if reason:
            raise InputError(f"--mmproj {mmproj.path}: {reason}", "--mmproj")
        gpu = devices[0].name if devices and projector.offload else None
        buft = gpu or "CPU"
        size = sum(alloc_size(buft, t.type, t.shape[0], t.n_elements // t.shape[0]) for t in mmproj.tensors if t.shape)
        out.append(Buffer("projector", buft, size))
        why = projector_unsupported(mmproj)
        if why:
            notes.append(f"the projector's compute buffer is not counted: {why}")
        else:
            out += projector_buffers(
                mmproj,
                gpu,
                flash_attn=context.flash_attn,
                image_max_tokens=projector.image_max_tokens,
                image_min_tokens=projector.image_min_tokens,
            )
    if draft is not None:
        reason = draft_incompatibility(model, draft)
        if reason:
            raise InputError(f"--model-draft {draft.path}: llama.cpp refuses this pair: {reason}", "--model-draft")
        dcp = draft_context or replace(context, cache_type_k="f16", cache_type_v="f16")
        db = breakdown(draft, list(devices), draft_offload or OffloadParams(), dcp)
        out += [Buffer(f"draft_{x.kind}", x.buft, x.bytes, x.exact) for x in db.buffers]
    return out


def memory_details(b: Breakdown) -> dict[str, Any]:
    """The per-device keys of ``mem --json``: llama.cpp's memory breakdown table and every buffer."""
    d = b.to_dict()
    outputs = b.by_kind("output")
    rows = []
    others: dict[str, int] = {}
    for x in b.buffers:
        if x.kind.startswith(("projector", "draft_")):
            others[b.row(x.buft)] = others.get(b.row(x.buft), 0) + x.bytes
    for name in others:
        d["table"].setdefault(name, {"model": 0, "context": 0, "compute": 0, "self": 0})
    for name, r in d["table"].items():
        free = next((dev.free for dev in b.devices if dev.name == name), None)
        out = sum(v for k, v in outputs.items() if b.row(k) == name)
        rows.append(
            {
                "name": name,
                "free": free or None,
                "model": r["model"],
                "context": r["context"],
                "compute": r["compute"],
                "self": r["self"],
                "output": out,
                "companions": others.get(name, 0),
            }
        )
    return {
        "devices": rows,
        "buffers": d["buffers"],
        "n_ctx_seq": d["n_ctx_seq"],
        "n_streams": d["n_streams"],
        "n_batch": d["n_batch"],
        "swa_cells": d["swa_cells"],
        "layers_offloaded": d["layers_offloaded"],
        "n_layer": d["n_layer"],
        "exact": ["model", "kv", "recurrent", "output"],
        "computed": ["compute", "projector_compute"],
    }


def memory_check(
    model: GGUFModel,
    log_text: str,
    *,
    gpus: Sequence[Device] | None = None,
    offload: OffloadParams | None = None,
    context: ContextParams | None = None,
    tolerance: float = 0.05,
    mmproj: GGUFModel | None = None,
    draft: GGUFModel | None = None,
    draft_offload: OffloadParams | None = None,
    draft_context: ContextParams | None = None,
    projector: ProjectorOptions | None = None,
) -> dict[str, Any]:
    """Compare ggufx's buffers with a llama.cpp log's (``-v``): per kind and buffer type, llama.cpp's
    MiB, ggufx's and the difference. Exact buffers must agree to llama.cpp's printed 0.01 MiB,
    computed ones within ``tolerance``; ``ok`` says whether all do. A draft model's buffers and a
    projector's weights and compute buffers are compared too when given."""
    from ggufx.analysis.memory.buffers import ContextParams, MiB, breakdown
    from ggufx.analysis.memory.graph.projector import ProjectorOptions
    from ggufx.analysis.memory.llamalog import parse_log
    from ggufx.analysis.memory.placement import Device, OffloadParams

    log = parse_log(log_text)
    if not log.buffers:
        raise InputError("the log has no buffer lines: run llama.cpp with -v (--verbose)", "--check")
    if gpus is None:
        gpus = [Device(name, free * MiB) for name, free in log.devices]
    context = context or ContextParams()
    b = breakdown(model, list(gpus), offload or OffloadParams(), context)
    companions = companion_buffers(
        model, gpus, context, mmproj, draft, draft_offload, draft_context, b.notes, projector or ProjectorOptions()
    )
    rows = _check_rows(b.buffers, log.buffers, "", tolerance)
    if draft is not None:
        if log.draft is None:
            raise InputError("the log loaded no draft model (no 'loading draft model' line)", "--model-draft")
        theirs = {f"draft_{k}": v for k, v in log.draft.buffers.items()}
        rows += _check_rows([x for x in companions if x.kind.startswith("draft_")], theirs, "draft_", tolerance)
    if mmproj is not None and "weights" in log.projector:
        mine = sum(t.nbytes for t in mmproj.tensors) / MiB  # mtmd prints the tensors' bytes, not the buffer
        rows.append(
            {
                "kind": "projector",
                "buft": "model size",
                "llama_cpp_mib": log.projector["weights"],
                "ggufx_mib": round(mine, 2),
                "difference_mib": round(mine - log.projector["weights"], 2),
                "difference_pct": round(100 * (mine - log.projector["weights"]) / log.projector["weights"], 2),
                "exact": True,
                "ok": round(mine, 2) == log.projector["weights"],
            }
        )
    if mmproj is not None:
        printed = {buft: mib for buft, mib in log.projector.items() if buft != "weights"}
        mine_compute = [x for x in companions if x.kind == "projector_compute"]
        if printed and mine_compute:
            rows += _check_rows(mine_compute, {"projector_compute": printed}, "projector_", tolerance)
    return {
        "path": model.path,
        "tolerance": tolerance,
        "ok": all(r["ok"] for r in rows),
        "rows": rows,
        "log_devices": [{"name": n, "free_mib": f} for n, f in log.devices],
        "pipeline_parallel": log.pipeline_parallel,
        "notes": b.notes,
    }


def _check_rows(
    buffers: list[Buffer], theirs_by_kind: dict[str, dict[str, float]], prefix: str, tolerance: float
) -> list[dict[str, Any]]:
    from ggufx.analysis.memory.buffers import MiB

    rows = []
    for kind in ("model", "kv", "recurrent", "output", "compute"):
        theirs = {k: v for k, v in theirs_by_kind.get(prefix + kind, {}).items() if v > 0 or kind != "compute"}
        ours: dict[str, int] = {}
        for x in buffers:
            if x.kind == prefix + kind:
                ours[x.buft] = ours.get(x.buft, 0) + x.bytes
        for buft in sorted(set(theirs) | {k for k, v in ours.items() if v}):
            t = theirs.get(buft)
            o = ours.get(buft, 0) / MiB
            exact = kind != "compute"
            if t is None:
                ok = False
            elif exact:
                ok = round(o, 2) == round(t, 2)
            else:
                ok = abs(o - t) <= tolerance * max(t, 1.0)
            rows.append(
                {
                    "kind": prefix + kind,
                    "buft": buft,
                    "llama_cpp_mib": t,
                    "ggufx_mib": round(o, 2),
                    "difference_mib": None if t is None else round(o - t, 2),
                    "difference_pct": None if not t else round(100 * (o - t) / t, 2),
                    "exact": exact,
                    "ok": ok,
                }
            )
    return rows


def fit(
    model: GGUFModel,
    budget: str | int,
    flash_attn: bool = True,
    parallel: int = 1,
    ubatch: int = 512,
    n_gpu_layers: int = -1,
    *,
    offload: OffloadParams | None = None,
    context: ContextParams | None = None,
    margin: int | list[int] | None = None,
    layers: bool = False,
    n_ctx_min: int = 4096,
    mmproj: GGUFModel | None = None,
    projector: ProjectorOptions | None = None,
) -> dict[str, Any]:
    """What fits GPUs of ``budget`` free memory (``"24GiB"`` or ``"24GiB,24GiB"``, or bytes).

    ``mmproj``: a projector loaded beside the model takes its weights and compute buffers from the
    first GPU first, as llama-server adds them to that GPU's ``-fitt`` margin
    (tools/server/server-context.cpp:1174-1198, ``mtmd_get_memory_usage``).

    ``llama_cpp``: what llama.cpp's ``--fit`` decides (``-c``, ``-ngl``, ``-ts``, ``-ot``), keeping
    ``margin`` bytes free per GPU (one value or one per GPU; None: llama.cpp's 1024 MiB), from the
    free memory llama.cpp's fit reads while its dry run holds the recurrent state (``free_seen``), with
    ``n_ctx_min`` as ``-fitc``; ``context.n_ctx`` 0 is ``-c`` not given. ``fits``: ggufx's own
    search per KV cache type (``margin`` None: nothing kept free), the largest context, or with
    ``layers`` the most whole layers at ``context.n_ctx``, each with llama.cpp's answer beside it."""
    from ggufx.analysis.memory.buffers import ContextParams
    from ggufx.analysis.memory.estimate import parse_size
    from ggufx.analysis.memory.fit import MARGIN, fit_devices, free_seen, llama_fit
    from ggufx.analysis.memory.graph.projector import ProjectorOptions
    from ggufx.analysis.memory.placement import Device, OffloadParams

    sizes: list[int] = []
    for part in str(budget).split(","):
        try:
            sizes.append(parse_size(part) if not part.strip().isdigit() else int(part))
        except ValueError as e:
            raise InputError(str(e), "--fit") from None
    devices = [Device(f"CUDA{i}", n) for i, n in enumerate(sizes)]
    context = context or ContextParams(n_ubatch=ubatch, n_parallel=parallel, flash_attn="auto" if flash_attn else "off")
    offload = offload or OffloadParams(n_gpu_layers=n_gpu_layers)
    margins = [margin] if isinstance(margin, int) else list(margin or [])[: len(devices)]  # llama.cpp ignores extras
    own_margin = max(margins, default=0)
    llama_margins = margins or [MARGIN]
    vision = _projector_usage(model, devices, context, mmproj, projector or ProjectorOptions())
    if vision:
        per_device = llama_margins * len(devices) if len(llama_margins) == 1 else list(llama_margins)
        per_device += [MARGIN] * (len(devices) - len(per_device))
        llama_margins = [m + vision.get(d.name, 0) for m, d in zip(per_device, devices, strict=False)]
        devices_left = [Device(d.name, d.free - vision.get(d.name, 0)) for d in devices]
    else:
        devices_left = devices

    def decide(ct: str) -> Any:
        cp = replace(context, cache_type_k=ct, cache_type_v=ct)
        return llama_fit(
            model, free_seen(model, devices, offload, cp), offload, cp, margins=llama_margins, n_ctx_min=n_ctx_min
        )

    found = fit_devices(
        model, devices_left, offload, context, target="layers" if layers else "context", margin=own_margin
    )
    seen = free_seen(model, devices, offload, context)  # what llama.cpp's fit reads during its dry run
    decision = llama_fit(model, seen, offload, context, margins=llama_margins, n_ctx_min=n_ctx_min)
    out: dict[str, Any] = {
        "path": model.path,
        "budget": sizes[0] if len(sizes) == 1 else sizes,
        "margin": own_margin,
        "projector_bytes": vision or None,
        "fits": [],
        "llama_cpp": decision.to_dict(),
    }
    for f in found:
        d = f.to_dict()
        same = f.cache_type == context.cache_type_k == context.cache_type_v
        answer = decision if same else decide(f.cache_type)
        d["llama_cpp_args"] = None if answer.status == "failed" else answer.args
        if not layers:  # the keys of earlier versions, and llama.cpp's own choice
            d.update(
                {
                    "gpu_bytes": sum(f.use.values()),
                    "capped_at_training_context": f.capped,
                    "llama_cpp_n_ctx": None if context.n_ctx else answer.n_ctx,
                }
            )
        out["fits"].append(d)
    return out


def _projector_usage(
    model: GGUFModel,
    devices: list[Device],
    context: ContextParams,
    mmproj: GGUFModel | None,
    projector: ProjectorOptions,
) -> dict[str, int]:
    """What ``mtmd_get_memory_usage`` says a projector takes per GPU: its tensors' bytes
    (``ggml_nbytes``, clip.cpp:2181) and its compute buffers (clip.cpp:3819)."""
    if mmproj is None or not devices or not projector.offload:
        return {}
    notes: list[str] = []
    bufs = companion_buffers(model, devices, context, mmproj, None, None, None, notes, projector)
    gpu = devices[0].name
    usage = sum(t.nbytes for t in mmproj.tensors)
    return {gpu: usage + sum(x.bytes for x in bufs if x.kind == "projector_compute" and x.buft == gpu)}


REPORT_CONTEXTS = (4096, 32768, 131072)  # and the training context, where it is smaller or between


def report(model: GGUFModel) -> dict[str, Any]:
    """Everything ``ggufx report`` shows: summary, roles, the layer grid (collapsed, and one row per
    layer for the heat map in ``layer_map``), memory at a few contexts for f16/q8_0/q4_0 caches,
    and the chat template's facts. A companion file (projector, adapter, imatrix...) gets its
    ``companion`` summary and grid instead of a language model's memory and template."""
    from ggufx.analysis.filekind import companion_summary, file_kind
    from ggufx.analysis.layers import layer_grid
    from ggufx.analysis.roles import role_table

    s = summarize(model).to_dict()
    kind = file_kind(model)
    is_model = kind == "model"
    return {
        "kind": kind,
        "summary": s,
        "companion": companion_summary(model, kind),
        "roles": [r.to_dict() for r in role_table(model)],
        "layers": layer_grid(model, kind=kind).to_dict(),
        "memory": _report_memory(model, s["context_length"]) if is_model else [],
        "chat_template": _report_template(model) if is_model else None,
        "layer_map": layer_grid(model, collapse=False, kind=kind).to_dict(),
    }


def _report_memory(model: GGUFModel, context_length: Any) -> list[dict[str, Any]]:
    """One GPU, everything offloaded, at the report's contexts (up to the training context)."""
    from ggufx.analysis.memory.estimate import estimate

    n_train = context_length if isinstance(context_length, int) and 0 < context_length < 1 << 32 else 0
    ctxs = sorted({c for c in (*REPORT_CONTEXTS, n_train) if c and (not n_train or c <= n_train)})
    try:
        return [
            estimate(model, c, cache_type_k=ct, cache_type_v=ct).to_dict()
            for c in ctxs
            for ct in ("f16", "q8_0", "q4_0")
        ]
    except GGUFError:  # a file llama.cpp cannot size (no block count...): the rest of the page still stands
        return []


def _report_template(model: GGUFModel) -> dict[str, Any] | None:
    from ggufx.chat.dialect import analyze
    from ggufx.chat.sources import special_tokens

    tmpl = model.metadata.get_str("tokenizer.chat_template")
    if tmpl is None:
        return None
    bos, eos = special_tokens(model)
    return analyze(tmpl, {"bos_token": bos or "", "eos_token": eos or ""}).to_dict()


# -- chat templates ----------------------------------------------------------------------------


def template_variables(ts: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """bos_token/eos_token of the model, then the caller's extra variables."""
    v: dict[str, Any] = {}
    if ts.bos_token is not None:
        v["bos_token"] = ts.bos_token
    if ts.eos_token is not None:
        v["eos_token"] = ts.eos_token
    v.update(extra or {})
    return v


def template_show(source: str, ts: Any) -> dict[str, Any]:
    return {"path": source, "default": ts.default, "named": ts.named}


def template_info(
    source: str,
    ts: Any,
    name: str | None = None,
    variables: dict[str, Any] | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """What the template speaks (as transformers renders it) and llama.cpp's capability flags
    (``llama_cpp_caps``, computed as llama.cpp's caps.cpp does); with ``server`` (a llama-server
    URL) also the server's own ``/props`` flags (``llama_server_caps``)."""
    from ggufx.chat.dialect import analyze
    from ggufx.chat.llamacpp.caps import caps_report
    from ggufx.chat.render import time_budget

    tmpl = ts.get(name)
    with time_budget():
        res = {"source": source, **analyze(tmpl, template_variables(ts, variables)).to_dict(), **caps_report(tmpl)}
    if server is not None:
        from ggufx.chat.llamacpp.server import server_caps

        res["llama_server_caps"] = server_caps(server)
    return res


def template_lint(
    source: str,
    ts: Any,
    name: str | None = None,
    variables: dict[str, Any] | None = None,
    model: GGUFModel | None = None,
):
    """The :class:`~ggufx.chat.lint.LintResult` (``to_dict()`` is the JSON; ``ok`` the verdict)."""
    from ggufx.chat.lint import lint as run_lint

    tokens = add_bos = None
    if model is not None:
        md = model.metadata
        tokens = md.get("tokenizer.ggml.tokens")
        add_bos = md.get("tokenizer.ggml.add_bos_token")
    from ggufx.chat.render import time_budget

    with time_budget():
        return run_lint(
            ts.get(name),
            origin=source,
            variables=template_variables(ts, variables),
            tokens=tokens,
            add_bos_token=add_bos,
        )


def template_render(
    source: str,
    ts: Any,
    conversations: list[tuple[str, dict]],
    name: str | None = None,
    add_generation_prompt: bool = True,
    variables: dict[str, Any] | None = None,
    engine: str = "transformers",
    server: str | None = None,
) -> dict[str, Any]:
    """Render each (label, {"messages", "tools"?, "documents"?}) in the sandbox: ``engine``
    "transformers" (apply_chat_template) or "llama.cpp" (llama-server's inputs and llama.cpp's
    Jinja rules). With ``server`` (a llama-server URL, llama.cpp engine) each output is the prompt
    the server's ``/apply-template`` returns, beside ggufx's own (``ggufx_output``, ``agrees``)."""
    from ggufx.chat.render import ENGINES, RenderError, render, time_budget

    if engine not in ENGINES:
        raise InputError(f"unknown template engine {engine!r} (one of {', '.join(ENGINES)})")
    tmpl = ts.get(name)
    v = template_variables(ts, variables)
    add_bos = add_eos = False
    if ts.model is not None:
        md = ts.model.metadata
        add_bos = bool(md["tokenizer.ggml.add_bos_token"]) if "tokenizer.ggml.add_bos_token" in md else False
        add_eos = bool(md["tokenizer.ggml.add_eos_token"]) if "tokenizer.ggml.add_eos_token" in md else False
    results = []
    with time_budget():
        for label, conv in conversations:
            try:
                if engine == "llama.cpp":
                    from ggufx.chat.llamacpp.caps import render_server

                    out, _ = render_server(
                        tmpl,
                        conv["messages"],
                        tools=conv.get("tools"),
                        add_generation_prompt=add_generation_prompt,
                        variables=v,
                        add_bos=add_bos,
                        add_eos=add_eos,
                    )
                else:
                    out = render(
                        tmpl,
                        conv["messages"],
                        tools=conv.get("tools"),
                        documents=conv.get("documents"),
                        add_generation_prompt=add_generation_prompt,
                        variables=v,
                    )
                r: dict[str, Any] = {"conversation": label, "output": out, "error": None}
            except RenderError as e:
                r = {"conversation": label, "output": None, "error": str(e), "kind": e.kind, "line": e.line}
            if server is not None and engine == "llama.cpp":
                r = _server_render(server, conv, add_generation_prompt, variables, r)
            results.append(r)
    res: dict[str, Any] = {"source": source, "engine": engine, "results": results}
    if server is not None and engine == "llama.cpp":
        res["server"] = server
    return res


def _server_render(
    server: str, conv: dict, add_generation_prompt: bool, variables: dict[str, Any] | None, local: dict[str, Any]
) -> dict[str, Any]:
    """The server's prompt as the output, ggufx's llama.cpp rendering beside it."""
    from ggufx.chat.llamacpp.server import apply_template
    from ggufx.chat.render import RenderError

    r: dict[str, Any] = {"conversation": local["conversation"]}
    try:
        r.update(
            output=apply_template(
                server,
                conv["messages"],
                tools=conv.get("tools"),
                add_generation_prompt=add_generation_prompt,
                kwargs=variables or None,
            ),
            error=None,
        )
    except RenderError as e:
        r.update(output=None, error=str(e), kind=e.kind, line=None)
    r["ggufx_output"] = local["output"]
    r["ggufx_error"] = local["error"]
    r["agrees"] = r["output"] == local["output"] and (r["error"] is None) == (local["error"] is None)
    return r


def template_diff(a: str, b: str, ta: Any, tb: Any, name: str | None = None) -> dict[str, Any]:
    from ggufx.chat.dialect import analyze
    from ggufx.chat.render import time_budget

    sa, sb = ta.get(name), tb.get(name)
    with time_budget():
        ia, ib = analyze(sa, template_variables(ta)), analyze(sb, template_variables(tb))
    text = "".join(difflib.unified_diff(sa.splitlines(keepends=True), sb.splitlines(keepends=True), a, b))
    if sa == sb:
        verdict = "identical templates"
    elif ia.dialect != ib.dialect:
        verdict = f"tool-call dialect changes: {ia.dialect} -> {ib.dialect} (tool calls will be written differently)"
    elif ia.family != ib.family:
        verdict = f"family changes: {ia.family} -> {ib.family}"
    else:
        verdict = f"same family ({ia.family}) and tool-call dialect ({ia.dialect})"
    return {
        "a": a,
        "b": b,
        "identical": sa == sb,
        "diff": text,
        "verdict": verdict,
        "a_info": ia.to_dict(),
        "b_info": ib.to_dict(),
    }


# -- companion files ------------------------------------------------------------------------------


def _f32_rows(model: GGUFModel, t: TensorInfo) -> Any:
    """The data of a small F32 tensor of ``model`` as a numpy float64 array (ne[1] rows of ne[0])."""
    import os

    import numpy as np

    path = model.shards[t.shard].path
    if t.type.name != "F32":
        raise ValidationError(path, t.info_offset, f"tensor '{t.name}' is {t.type.name}, an imatrix holds F32")
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, t.nbytes, t.file_offset)
    finally:
        os.close(fd)
    if len(data) != t.nbytes:
        raise ValidationError(path, t.file_offset, f"tensor '{t.name}' data is cut short")
    order = ">" if model.header.endianness == "big" else "<"
    arr = np.frombuffer(data, dtype=f"{order}f4").astype(np.float64)
    ne0 = t.shape[0] if t.shape else 1
    return arr.reshape(-1, ne0) if ne0 else arr.reshape(0, 0)


def imatrix(im: GGUFModel, quant: GGUFModel | None = None) -> dict[str, Any]:
    """``ggufx imatrix``: per tensor the importance llama-imatrix's statistics report, ranked within
    its role; with ``quant`` the type each tensor got and where rank and type disagree.

    ``sum_sq`` is llama-imatrix's ``∑ E[A²]`` (``compute_vector_statistics`` in
    ``tools/imatrix/imatrix.cpp``): the sum over every matrix with a positive count of
    ``in_sum2 / counts``, skipping values that are not finite; ``importance`` is that sum over the
    ``elements`` summed (the mean of ``in_sum2 / counts``). Only the ``.in_sum2`` and ``.counts``
    tensors' data are read.
    """
    import math

    import numpy as np

    from ggufx.analysis.filekind import file_kind, imatrix_pairs, imatrix_summary
    from ggufx.analysis.roles import parse_name

    if is_remote(im.path):
        raise SourceError(im.path, None, "reading an imatrix needs its tensor data; download the file first")
    kind = file_kind(im)
    if kind != "imatrix":
        gtype = im.metadata.get_str("general.type")
        raise ValidationError(
            im.path,
            None,
            f"not an imatrix: the file's kind is {kind} (general.type {gtype or 'absent'}, not 'imatrix')",
        )
    by_name = {t.name: t for t in im.tensors}
    rows: list[dict[str, Any]] = []
    for name in imatrix_pairs(im):
        s2, cn = by_name[name + ".in_sum2"], by_name[name + ".counts"]
        values, counts = _f32_rows(im, s2), _f32_rows(im, cn).reshape(-1)
        n_mat = counts.size
        if n_mat == 0 or values.size == 0 or values.size % n_mat:
            raise ValidationError(
                im.shards[s2.shard].path,
                s2.info_offset,
                f"tensor '{name}.in_sum2' has {values.size} values for {n_mat} counts (not a multiple)",
            )
        values = values.reshape(n_mat, -1)
        total = 0.0
        n = 0
        for m in range(n_mat):
            c = float(np.float32(counts[m]))
            if not c > 0.0:
                continue
            v = values[m] * (1.0 / c)
            ok = np.isfinite(v)
            total += float(v[ok].sum())
            n += int(ok.sum())
        role = parse_name(name)
        rows.append(
            {
                "name": name,
                "role": role.label,
                "layer": role.layer,
                "matrices": n_mat,
                "elements": n,
                "sum_sq": total,
                "importance": total / n if n else None,
                "counts": int(cmax) if math.isfinite(cmax := float(counts.max())) else None,
            }
        )
    # rank within role: 1 = most important; ties by name
    by_role: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    for members in by_role.values():
        members.sort(key=lambda r: (-(r["importance"] if r["importance"] is not None else -math.inf), r["name"]))
        top = math.ceil(len(members) / 4)
        for i, r in enumerate(members, 1):
            r["rank"], r["role_count"], r["top_quartile"] = i, len(members), i <= top
    summary = imatrix_summary(im)
    res: dict[str, Any] = {
        "path": im.path,
        "datasets": summary["datasets"],
        "chunk_count": summary["chunk_count"],
        "chunk_size": summary["chunk_size"],
        "count": len(rows),
        "model": None,
    }
    if quant is not None:
        types = {t.name: t.type.name for t in quant.tensors}
        common: dict[str, str] = {}
        for role_name, members in by_role.items():
            hist: dict[str, int] = {}
            for r in members:
                ty = types.get(r["name"])
                if ty is not None:
                    hist[ty] = hist.get(ty, 0) + 1
            if hist:
                common[role_name] = min(hist, key=lambda k: (-hist[k], k))
        for r in rows:
            r["type"] = types.get(r["name"])
        res["model"] = quant.path
        res["missing_in_model"] = [r["name"] for r in rows if r["type"] is None]
        res["most_common_type"] = dict(sorted(common.items()))
        res["high_at_common_type"] = [
            r["name"]
            for r in rows
            if r["top_quartile"] and r["type"] is not None and r["type"] == common.get(r["role"])
        ]
        res["low_not_at_common_type"] = [
            r["name"]
            for r in rows
            if not r["top_quartile"] and r["type"] is not None and r["type"] != common.get(r["role"])
        ]
    res["tensors"] = rows
    return res
