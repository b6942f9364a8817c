"""Memory a model needs on one GPU at a context length.

:func:`estimate` is the one-GPU summary of :func:`ggufx.analysis.memory.buffers.breakdown` (every buffer
llama.cpp allocates, per device): weights on the GPU and on the host, the KV cache per cache
(full attention and sliding window, as ``llama_kv_cache: size = ...`` prints it), the recurrent
state, and the computed compute buffer. What fits given GPUs is :mod:`ggufx.analysis.memory.fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ggufx.analysis.layers import LayerKind
from ggufx.analysis.memory.buffers import Breakdown, ContextParams, breakdown, is_cuda
from ggufx.analysis.memory.hparams import Hparams
from ggufx.analysis.memory.placement import Device, OffloadParams
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
    kv_indexer: int = 0  # a DSA model's indexer-key cache: bytes (within ``kv``) and layers
    kv_indexer_layers: int = 0

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
                # DeepSeek Sparse Attention's indexer-key cache (DeepSeek-V3.2, GLM-5): within full_attention
                "indexer": {"bytes": self.kv_indexer, "layers": self.kv_indexer_layers},
            },
            "recurrent_state": {"bytes": self.recurrent, "layers": self.recurrent_layers},
            "compute_estimate": self.compute_estimate,
            # why the compute figure is the generic decoder estimate (None: the graph is rebuilt)
            "compute_note": self.breakdown.compute_estimate if self.breakdown is not None else None,
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
        b.kv_indexer_bytes,
        b.kv_indexer_layers,
    )


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
