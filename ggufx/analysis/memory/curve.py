"""Memory per GPU against the context, per KV cache type: the data of the report's memory chart.

Every point is :func:`~ggufx.analysis.memory.buffers.breakdown`'s row of that GPU (model + context +
compute, llama.cpp's ``self``) with every layer offloaded, at a context on a log scale from 4096 to
the training context; what ``ggufx mem -c N -ctk T -ctv T --gpus ...`` prints for that GPU. With GPU
sizes, llama.cpp's ``--fit`` point (:func:`~ggufx.analysis.memory.fit.llama_fit` without ``-c``, the
first cache type) is the context it would choose and what it would use there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ggufx.analysis.memory.buffers import ContextParams, breakdown, flash_attn_default, refused_cache_types
from ggufx.analysis.memory.fit import MARGIN, free_seen, llama_fit
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.placement import Device, OffloadParams
from ggufx.model import GGUFModel

CHART_TYPES = ("f16", "q8_0", "q4_0")
START = 4096


def chart_contexts(n_ctx_train: int, start: int = START, per_doubling: int = 4) -> list[int]:
    """Contexts from ``start`` to ``n_ctx_train``: ``per_doubling`` points per doubling (multiples of
    256), every power of two, and the training context itself."""
    top = n_ctx_train or 131072
    lo = min(start, max(256, top))
    out = {lo, top}
    k = 0
    while True:
        c = int(lo * 2 ** (k / per_doubling)) // 256 * 256
        if c >= top:
            break
        out.add(c)
        k += 1
    return sorted(c for c in out if lo <= c <= top)


@dataclass(slots=True)
class MemoryCurve:
    """``to_json()``: ``n_ctx_train``, ``gpus`` ([{name, free}], free 0: no size given), ``margin``,
    ``contexts``, ``series`` ([{cache_type, points: [{n_ctx, use: {gpu: bytes}}]}]) and ``fit``
    (null, or {cache_type, status, n_ctx, n_gpu_layers, args, use: {gpu: bytes}})."""

    n_ctx_train: int
    gpus: list[Device]
    margin: int
    contexts: list[int]
    series: dict[str, list[dict[str, int]]] = field(default_factory=dict)  # cache type -> per context {gpu: bytes}
    fit: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "n_ctx_train": self.n_ctx_train,
            "gpus": [{"name": d.name, "free": d.free} for d in self.gpus],
            "margin": self.margin,
            "contexts": list(self.contexts),
            "series": [
                {
                    "cache_type": ct,
                    "points": [{"n_ctx": c, "use": dict(u)} for c, u in zip(self.contexts, pts, strict=True)],
                }
                for ct, pts in self.series.items()
            ],
            "fit": self.fit,
        }


def memory_curve(
    model: GGUFModel,
    gpus: list[Device] | None = None,
    *,
    cache_types: tuple[str, ...] = CHART_TYPES,
    contexts: list[int] | None = None,
    context: ContextParams | None = None,
    margin: int = MARGIN,
) -> MemoryCurve:
    """Memory per GPU at each context (default :func:`chart_contexts`), per cache type, all layers
    offloaded; ``gpus`` default one GPU of unknown size (no budget, no fit point)."""
    hp = hparams(model)
    devices = list(gpus) if gpus else [Device("CUDA0", 0)]
    cp = context or ContextParams(flash_attn=flash_attn_default(model))
    ctxs = contexts or chart_contexts(hp.n_ctx_train)
    curve = MemoryCurve(hp.n_ctx_train, devices, margin, ctxs)
    offload = OffloadParams()
    refused = refused_cache_types(model, cp, cache_types)  # llama.cpp makes no context with these: no series
    cache_types = tuple(ct for ct in cache_types if ct not in refused)
    for ct in cache_types:
        pts = []
        for c in ctxs:
            table = breakdown(model, devices, offload, replace(cp, n_ctx=c, cache_type_k=ct, cache_type_v=ct)).table()
            pts.append({d.name: table.get(d.name, {}).get("self", 0) for d in devices})
        curve.series[ct] = pts
    if gpus and all(d.free > 0 for d in devices) and cache_types:
        ct = cache_types[0]
        fcp = replace(cp, n_ctx=0, cache_type_k=ct, cache_type_v=ct)
        decision = llama_fit(model, free_seen(model, devices, offload, fcp), offload, fcp, margins=margin)
        if decision.status != "failed":
            curve.fit = {
                "cache_type": ct,
                "status": decision.status,
                "n_ctx": decision.n_ctx,
                "n_gpu_layers": decision.n_gpu_layers,
                "args": decision.args,
                "use": dict(decision.use),
            }
    return curve
