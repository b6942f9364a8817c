"""Memory a model needs on one GPU at a context length, and the largest context that fits.

:func:`estimate` is the one-GPU summary of :func:`ggufx.analysis.buffers.breakdown` (every buffer
llama.cpp allocates, per device): weights on the GPU and on the host, the KV cache per cache
(full attention and sliding window, as ``llama_kv_cache: size = ...`` prints it), the recurrent
state, and the computed compute buffer. :func:`fit` searches the context for given GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ggufx.analysis.buffers import Breakdown, ContextParams, breakdown, is_cuda
from ggufx.analysis.hparams import Hparams, hparams, pad
from ggufx.analysis.layers import LayerKind
from ggufx.analysis.placement import Device, OffloadParams
from ggufx.model import GGUFModel

GPU = "CUDA0"  # the device of the one-GPU view (llama.cpp's name for the first CUDA device)


@dataclass(slots=True)
class MemoryEstimate:
    """Bytes, as llama.cpp allocates them. ``to_dict()`` is ``ggufx mem --json``."""

    n_ctx: int  # after llama.cpp's padding to 256
    cache_type_k: str
    cache_type_v: str
    parallel: int
    n_ubatch: int
    flash_attn: bool
    n_gpu_layers: int
    weights_total: int
    weights_gpu: int
    weights_host: int
    kv: int
    kv_layers: int
    kv_swa: int
    kv_swa_layers: int
    kv_cells: int
    kv_swa_cells: int
    recurrent: int
    recurrent_layers: int
    compute_estimate: int
    notes: list[str] = field(default_factory=list)
    breakdown: Breakdown | None = None  # every buffer, per device

    @property
    def gpu_total(self) -> int:
        """Everything llama.cpp allocates on the GPU: its row of the memory breakdown table."""
        if self.breakdown is None:
            return self.weights_gpu + self.kv + self.kv_swa + self.recurrent + self.compute_estimate
        return sum(r["self"] for name, r in self.breakdown.table().items() if is_cuda(name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_ctx": self.n_ctx,
            "cache_type_k": self.cache_type_k,
            "cache_type_v": self.cache_type_v,
            "parallel": self.parallel,
            "n_ubatch": self.n_ubatch,
            "flash_attn": self.flash_attn,
            "n_gpu_layers": self.n_gpu_layers,
            "weights": {"total": self.weights_total, "gpu": self.weights_gpu, "host": self.weights_host},
            "kv_cache": {
                "bytes": self.kv + self.kv_swa,
                "full_attention": {"bytes": self.kv, "layers": self.kv_layers, "cells": self.kv_cells},
                "sliding_window": {"bytes": self.kv_swa, "layers": self.kv_swa_layers, "cells": self.kv_swa_cells},
            },
            "recurrent_state": {"bytes": self.recurrent, "layers": self.recurrent_layers},
            "compute_estimate": self.compute_estimate,
            "gpu_total": self.gpu_total,
            "notes": self.notes,
        }


def estimate(
    model: GGUFModel,
    ctx: int,
    *,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    parallel: int = 1,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    n_gpu_layers: int = -1,
    kinds: list[LayerKind] | None = None,
    hp: Hparams | None = None,
) -> MemoryEstimate:
    """Memory at ``ctx`` tokens (0: the training context) on one GPU, as :func:`breakdown` computes
    it for a single CUDA device. ``n_gpu_layers=-1`` offloads everything (llama.cpp's ``-ngl``:
    the last N of the ``n_layer + 1`` layers, the output layer counting as one)."""
    del kinds, hp  # computed by breakdown; kept for callers of the earlier signature
    b = breakdown(
        model,
        [Device(GPU, 0)],
        OffloadParams(n_gpu_layers=n_gpu_layers),
        ContextParams(
            n_ctx=ctx,
            n_ubatch=n_ubatch,
            n_parallel=max(1, parallel),
            flash_attn="auto" if flash_attn else "off",
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
        ),
    )
    return summarize_breakdown(
        model,
        b,
        ContextParams(cache_type_k=cache_type_k, cache_type_v=cache_type_v, flash_attn="auto" if flash_attn else "off"),
    )


def summarize_breakdown(model: GGUFModel, b: Breakdown, cp: ContextParams) -> MemoryEstimate:
    """The GPU-versus-host summary of a breakdown (all GPUs together)."""
    weights = b.by_kind("model")
    w_gpu = sum(v for k, v in weights.items() if is_cuda(k))
    notes = list(b.notes)
    if not any(t.name == "output.weight" for t in model.tensors) and b.layers_offloaded == b.n_layer + 1:
        notes.append("tied embeddings: the token embedding is also loaded on the GPU as the output layer")
    return MemoryEstimate(
        b.n_ctx,
        cp.cache_type_k,
        cp.cache_type_v,
        b.n_seq_max,
        b.n_ubatch,
        cp.flash_attn != "off",
        b.layers_offloaded,
        sum(t.nbytes for t in model.tensors),
        w_gpu,
        sum(v for k, v in weights.items() if not is_cuda(k)),
        b.kv_bytes,
        b.kv_layers,
        b.kv_swa_bytes,
        b.kv_swa_layers,
        b.n_ctx_seq if b.kv_layers else 0,
        b.swa_cells if b.kv_swa_layers else 0,
        b.recurrent_bytes,
        b.recurrent_layers,
        sum(v for k, v in b.by_kind("compute").items() if is_cuda(k)),
        notes,
        b,
    )


@dataclass(frozen=True, slots=True)
class Fit:
    cache_type: str
    n_ctx: int  # 0 when even 256 tokens do not fit
    gpu_total: int
    capped: bool  # reached the training context

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache_type": self.cache_type,
            "n_ctx": self.n_ctx,
            "gpu_bytes": self.gpu_total,
            "capped_at_training_context": self.capped,
        }


def fit(
    model: GGUFModel,
    budget: int,
    cache_types: tuple[str, ...] = ("f16", "q8_0", "q4_0"),
    *,
    max_ctx: int = 0,
    parallel: int = 1,
    n_ubatch: int = 512,
    flash_attn: bool = True,
    n_gpu_layers: int = -1,
) -> list[Fit]:
    """The largest context (a multiple of 256) whose GPU total fits ``budget`` bytes, per cache type
    (one GPU, nothing kept free: :func:`fit_devices` is the general form)."""
    cp = ContextParams(
        n_ctx=max_ctx, n_ubatch=n_ubatch, n_parallel=max(1, parallel), flash_attn="auto" if flash_attn else "off"
    )
    fits = fit_devices(
        model, [Device(GPU, budget)], OffloadParams(n_gpu_layers=n_gpu_layers), cp, margin=0, cache_types=cache_types
    )
    return [Fit(f.cache_type, f.value, f.use[GPU], f.capped) for f in fits]


def parse_size(text: str) -> int:
    """``24GiB``, ``24G``, ``16000MiB``, ``8e9`` -> bytes (G and GiB are binary, GB decimal)."""
    import re

    m = re.match(r"^\s*([\d.]+(?:e\d+)?)\s*([KMGT]?)(i?)(B?)\s*$", text, re.I)
    if not m:
        raise ValueError(f"{text!r} is not a size such as 24GiB, 24GB or 16000MiB")
    n = float(m.group(1))
    unit = m.group(2).upper()
    binary = m.group(3) or not m.group(4)  # "G" and "GiB" binary, "GB" decimal
    base = 1024 if binary else 1000
    return int(n * base ** "_KMGT".index(unit)) if unit else int(n)


@dataclass(slots=True)
class DeviceFit:
    """What fits a set of GPUs: the setting found and each GPU's use at it (bytes)."""

    what: str  # "context" or "layers"
    cache_type: str
    value: int  # tokens, or layers for -ngl; 0 when nothing fits
    n_layer: int
    use: dict[str, int]  # GPU -> bytes llama.cpp's fit counts there (model + context + compute)
    capped: bool  # reached the training context / every layer

    def to_dict(self) -> dict[str, Any]:
        key = "n_ctx" if self.what == "context" else "n_gpu_layers"
        return {
            "fit": self.what,
            "cache_type": self.cache_type,
            key: self.value,
            "n_layer": self.n_layer,
            "use": self.use,
            "capped": self.capped,
        }


def _fits(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, cp: ContextParams, margin: int
) -> tuple[bool, dict[str, int]]:
    b = breakdown(model, devices, offload, cp)
    table = b.table()
    use = {d.name: table.get(d.name, {}).get("self", 0) for d in devices}
    return all(use[d.name] <= d.free - margin for d in devices), use


def fit_devices(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    cp: ContextParams,
    *,
    target: str = "context",
    margin: int = 1 << 30,
    cache_types: tuple[str, ...] = (),
) -> list[DeviceFit]:
    """As llama.cpp's ``--fit`` (``common/fit.cpp``): what fits every GPU with ``margin`` bytes left
    free (``-fitt``, default 1 GiB); it counts weights, KV, state and compute, not the output buffer.

    ``target="context"``: the largest context (a multiple of 256 per stream, at most the training
    context) per cache type, everything offloaded as ``offload`` says. ``target="layers"``: the
    largest ``-ngl`` at ``cp.n_ctx``."""
    if not devices:
        raise ValueError("fitting needs at least one GPU")
    hp = hparams(model)
    types = cache_types or ((cp.cache_type_k,) if target == "layers" else ("f16", "q8_0", "q4_0"))
    out = []
    for ct in types:
        ctx_params = replace(cp, cache_type_k=ct, cache_type_v=ct)
        if target == "layers":
            lo, hi = -1, hp.n_layer + 1  # largest ngl that fits (-1: none does)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _fits(model, devices, replace(offload, n_gpu_layers=mid), ctx_params, margin)[0]:
                    lo = mid
                else:
                    hi = mid - 1
            ngl = max(lo, 0)
            use = _fits(model, devices, replace(offload, n_gpu_layers=ngl), ctx_params, margin)[1]
            out.append(DeviceFit("layers", ct, ngl if lo >= 0 else 0, hp.n_layer, use, lo == hp.n_layer + 1))
            continue
        step = 256 * (1 if cp.kv_unified else cp.n_parallel)
        top = pad(cp.n_ctx or hp.n_ctx_train or 131072, step)
        lo, hi = 0, top // step
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _fits(model, devices, offload, replace(ctx_params, n_ctx=mid * step), margin)[0]:
                lo = mid
            else:
                hi = mid - 1
        n = lo * step
        use = _fits(model, devices, offload, replace(ctx_params, n_ctx=n or step), margin)[1]
        out.append(DeviceFit("context", ct, n, hp.n_layer, use, n == top))
    return out


def llama_fit_context(
    model: GGUFModel,
    devices: list[Device],
    offload: OffloadParams,
    cp: ContextParams,
    *,
    margin: int = 1 << 30,
    n_ctx_min: int = 4096,
) -> int:
    """The context llama.cpp's ``--fit`` picks when ``-c`` is not given (``common/fit.cpp``): the
    training context if everything fits; otherwise the linear interpolation of the memory used at
    ``-fitc`` (4096 per stream) and at the training context towards the free memory less ``-fitt``,
    rounded down to 256 per stream. (When even the smallest context does not fit, llama.cpp then
    moves layers to the host; that step is :func:`fit_devices` with ``target="layers"``.)"""
    hp = hparams(model)
    streams = 1 if cp.kv_unified else cp.n_parallel
    n_max = pad(hp.n_ctx_train or 4096) * streams
    n_min = min(n_ctx_min * streams, n_max)

    def used(n: int) -> list[int]:
        table = breakdown(model, devices, offload, replace(cp, n_ctx=n)).table()
        return [table.get(d.name, {}).get("self", 0) for d in devices]

    at_max = used(n_max)
    if all(u <= d.free - margin for u, d in zip(at_max, devices, strict=True)):
        return n_max
    target = sum(d.free for d in devices) - margin * len(devices)
    if len(devices) > 1:
        n_expert = model.metadata.get_int(f"{model.architecture}.expert_count") or 0
        w_gpu = sum(v for k, v in breakdown(model, devices, offload, cp).by_kind("model").items() if is_cuda(k))
        target -= (len(devices) + 1) * (w_gpu // (hp.n_layer + 1)) // (6 if n_expert else 2)
    at_min = sum(used(n_min))
    if target <= at_min or sum(at_max) == at_min:
        return n_min
    n = n_min + (n_max - n_min) * (target - at_min) // (sum(at_max) - at_min)
    return max(n - n % (256 * streams), n_min)
