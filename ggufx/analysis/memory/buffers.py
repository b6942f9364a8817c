"""Every buffer llama.cpp allocates for a model and a context, per buffer type, from the header alone.

Exact (byte for byte what llama.cpp allocates, checked against recorded logs in tests):

* **model**: weights per buffer type (:mod:`ggufx.analysis.memory.placement`). CUDA buffers align every
  tensor to 128 bytes and give a quantized tensor whose row is not a multiple of 512 elements one
  padded partial row (``ggml_backend_cuda_buffer_type_get_alloc_size``); memory-mapped host weights
  (``CPU_Mapped``) span the file from the first to the last host tensor of each shard.
* **kv**: per attention layer, on its layer's device (the host with ``-nkvo``): K ``[n_embd_k_gqa,
  cells]`` and V (``[n_embd_v_gqa_max, ...]`` when V is transposed, i.e. ``-fa off``), cells =
  ``n_ctx`` (``n_ctx_seq`` per stream); sliding-window layers hold ``pad256(min(n_ctx_seq, n_swa x
  (unified ? np : 1) + n_ubatch))`` cells per stream unless ``--swa-full``.
* **recurrent**: per recurrent layer and sequence, ``n_embd_r`` and ``n_embd_s`` f32 values.
* **output**: ``n_vocab`` floats per sequence, on the host buffer of the output layer's device.
* ``-sm tensor``: the weights, KV cache and recurrent state of the Meta device are cut per GPU
  (:func:`ggufx.analysis.memory.placement.meta_split`); each such buffer is one buffer per GPU
  (``Buffer.slices``) and llama.cpp prints the largest as ``Meta()``. Its compute buffer is the graph's (as
  one GPU's, without CUDA's ``graph_optimize``), whole on every GPU (:func:`_meta_compute`).

Computed: **compute** buffers. Where the architecture's graph is rebuilt
(:mod:`ggufx.analysis.memory.graph`, the registry's ``builder``) they follow llama.cpp's allocator; every
other model gets the phase model of :mod:`ggufx.analysis.memory.compute` as a generic decoder estimate,
labelled so: each such compute :class:`Buffer` carries its ``reason`` and the :class:`Breakdown` its
``compute_estimate`` and a note (no graph builder for the architecture, an unregistered architecture, or
what the file lacks for its builder).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ggufx.analysis.layers import LayerKind, layer_kinds
from ggufx.analysis.memory.archs import ARCHS, arch_of, memory_of
from ggufx.analysis.memory.graph.galloc import CUDA_ALIGN, HOST_ALIGN, MATRIX_ROW_PADDING
from ggufx.analysis.memory.graph.graphsim import SimParams, flash_attn_mismatch, simulated
from ggufx.analysis.memory.graph.graphsim import simulate as simulate_compute
from ggufx.analysis.memory.graph.llm import classifier_pooling
from ggufx.analysis.memory.hparams import DSV4_ARCHS, DSV4_CSA, DSV4_HCA, Hparams, hparams, pad
from ggufx.analysis.memory.options import POOLING_TYPES
from ggufx.analysis.memory.placement import (
    CPU,
    CPU_MAPPED,
    CPU_REPACK,
    META,
    MIRRORED,
    PLACED_MOST,
    Device,
    OffloadParams,
    Placement,
    host_buft,
    layer_of,
    meta_split,
    place,
)
from ggufx.errors import InputError, ValidationError
from ggufx.format.ggmltypes import GGMLType, ggml_type_by_name
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

if TYPE_CHECKING:  # the phase model (compute.py) is imported where an estimate is made: off the rebuilt graphs' path
    from ggufx.analysis.memory.compute import ComputeModel, GraphShape

MiB = 1 << 20
FLASH_ATTN = ("on", "off", "auto")
# llm_arch_is_diffusion (llama-arch.cpp:1150-1160: dream, llada, llada-moe, rnd1): the registry's diffusion builder's
# architectures, graph/models/diffusion.py's DIFFUSION (whose graph modules stay off every other model's path)
DIFFUSION = frozenset(a.name for a in ARCHS.values() if a.builder == "diffusion")


@dataclass(frozen=True, slots=True)
class ContextParams:
    """The llama.cpp context options that size the KV cache, state, output and compute buffers."""

    n_ctx: int = 0  # -c (0: the training context)
    n_batch: int = 2048  # -b
    n_ubatch: int = 512  # -ub
    n_parallel: int = 1  # -np
    kv_unified: bool = False  # --kv-unified
    flash_attn: str = "auto"  # -fa on|off|auto
    cache_type_k: str = "f16"  # -ctk
    cache_type_v: str = "f16"  # -ctv
    no_kv_offload: bool = False  # -nkvo
    swa_full: bool = False  # --swa-full
    n_outputs_max: int = 0  # 0: n_batch, as llama-completion; llama-server reserves -np outputs
    # an embedding run (llama.cpp's cparams.embeddings: llama-server --embedding, llama-embedding): the output
    # buffer holds embeddings beside the logits, the graph ends with the pooling nodes
    embeddings: bool = False
    pooling: str | None = None  # --pooling none|mean|cls|last|rank (None: the file's pooling_type)
    # the recurrent state's rollback snapshots (--spec-draft-n-max under --spec-type draft-mtp; mtp.main_context)
    n_rs_seq: int = 0


@dataclass(slots=True)
class Buffer:
    """One buffer: what it holds, its buffer type (``CUDA0``, ``CPU_Mapped``...), size in bytes."""

    kind: str  # model, kv, recurrent, output, compute
    buft: str
    bytes: int
    exact: bool = True
    # -sm tensor: the Meta device's buffer is one buffer per GPU and ``bytes`` the largest, as llama.cpp
    # prints it (ggml-backend-meta.cpp:1772); this is every GPU's own
    slices: dict[str, int] | None = None
    reason: str = ""  # a compute buffer of the generic estimate: why it is one (exact is False)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "kind": self.kind,
            "buft": self.buft,
            "bytes": self.bytes,
            "mib": round(self.bytes / MiB, 2),
            "exact": self.exact,
        }
        if self.slices is not None:
            d["slices"] = dict(self.slices)
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass(slots=True)
class Breakdown:
    """All buffers of one model and context, and the resolved llama.cpp parameters."""

    buffers: list[Buffer]
    n_ctx: int
    n_ctx_seq: int
    n_streams: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    swa_cells: int
    layers_offloaded: int
    n_layer: int
    devices: list[Device] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # tensor bytes (as ``llama_kv_cache: size = ...`` prints them, without buffer padding) and layers
    kv_bytes: int = 0
    kv_layers: int = 0
    kv_swa_bytes: int = 0
    kv_swa_layers: int = 0
    recurrent_bytes: int = 0
    recurrent_layers: int = 0
    reservation: SimParams | None = None  # the graph reservation these options resolve to (graphsim)
    compute_estimate: str | None = None  # why the compute buffers are an estimate (None: the graph is rebuilt)
    # DeepSeek Sparse Attention's indexer-key cache: its tensor bytes (within kv_bytes, as llama.cpp's
    # "llama_kv_cache: size" lines add it to the full-attention cache's) and layers
    kv_indexer_bytes: int = 0
    kv_indexer_layers: int = 0

    def by_kind(self, kind: str) -> dict[str, int]:
        """Bytes per buffer type; a Meta buffer (``-sm tensor``) counts every GPU's slice."""
        out: dict[str, int] = {}
        for b in self.buffers:
            if b.kind == kind:
                out[b.buft] = out.get(b.buft, 0) + (sum(b.slices.values()) if b.slices is not None else b.bytes)
        return out

    def row(self, buft: str) -> str:
        """The row of llama.cpp's memory breakdown table a buffer type is counted in."""
        if buft in (CPU, CPU_MAPPED) or buft.endswith("_Host"):
            return "Host"
        return buft

    def table(self) -> dict[str, dict[str, int]]:
        """llama.cpp's ``memory breakdown``: per device and the host, model / context / compute bytes
        (the output buffer is not in llama.cpp's table and not here)."""
        rows: dict[str, dict[str, int]] = {d.name: {"model": 0, "context": 0, "compute": 0} for d in self.devices}
        col = {"model": "model", "kv": "context", "recurrent": "context", "state": "context", "compute": "compute"}
        for b in self.buffers:
            if b.kind in col:
                for name, n in (b.slices or {self.row(b.buft): b.bytes}).items():
                    r = rows.setdefault(name, {"model": 0, "context": 0, "compute": 0})
                    r[col[b.kind]] += n
        for r in rows.values():
            r["self"] = r["model"] + r["context"] + r["compute"]
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_ctx": self.n_ctx,
            "n_ctx_seq": self.n_ctx_seq,
            "n_streams": self.n_streams,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_seq_max": self.n_seq_max,
            "swa_cells": self.swa_cells,
            "layers_offloaded": self.layers_offloaded,
            "n_layer": self.n_layer,
            "devices": [{"name": d.name, "free": d.free} for d in self.devices],
            "buffers": [b.to_dict() for b in self.buffers],
            "table": self.table(),
            "notes": self.notes,
            "compute_estimate": self.compute_estimate,
        }


def is_cuda(buft: str) -> bool:
    """A CUDA device buffer, or the Meta device of CUDA GPUs (whose buffer type takes their alignment
    and the largest of their tensor sizes, ggml-backend-meta.cpp:295-323)."""
    return (buft.startswith("CUDA") and not buft.endswith("_Host")) or buft == META


def alloc_size(buft: str, t: GGMLType, ne0: int, rows: int, nbytes: int | None = None) -> int:
    """Bytes a tensor of ``rows`` rows of ``ne0`` elements takes in a buffer of type ``buft``
    (``nbytes``: the size when the type's is not known, derived from the file's offsets)."""
    if not t.known or not t.block_size:
        return pad(nbytes or 0, CUDA_ALIGN if is_cuda(buft) else HOST_ALIGN)
    size = ne0 // t.block_size * t.type_size * rows
    if is_cuda(buft):
        if t.is_quantized and ne0 % MATRIX_ROW_PADDING:
            size += (MATRIX_ROW_PADDING - ne0 % MATRIX_ROW_PADDING) // t.block_size * t.type_size
        return pad(size, CUDA_ALIGN)
    return pad(size, HOST_ALIGN)


def meta_alloc(pl: Placement, name: str, t: GGMLType, ne: tuple[int, ...]) -> dict[str, int]:
    """The bytes each GPU of the Meta device allocates for its slice of a tensor of shape ``ne``
    (ggml-backend-meta.cpp:1184-1222: the slice is a contiguous tensor of the same type)."""
    assert pl.layout is not None
    axis, per = meta_split(name, ne, pl.layout)
    out = {}
    for j, d in enumerate(pl.meta):
        shape = list(ne)
        if axis != MIRRORED:
            shape[axis] = per[j]
        rows = 1
        for x in shape[1:]:
            rows *= x
        out[d.name] = alloc_size(d.name, t, shape[0], rows)
    return out


def meta_buffer(kind: str, slices: dict[str, int]) -> Buffer:
    """A Meta device buffer: llama.cpp prints (and its memory table counts) the largest GPU's."""
    return Buffer(kind, META, max(slices.values(), default=0), slices=slices)


def _add(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


# per model (held weakly), the bytes of each (tensor, buffer type): --fit places the same weights again
_SIZES: weakref.WeakKeyDictionary[GGUFModel, dict[tuple[str, int, str], int]] = weakref.WeakKeyDictionary()
# alloc_size of a tensor of a known type by what it reads (buffer type, the type's name and sizes, ne0, rows): a
# model's layers repeat a few dozen shapes, and the call with its own three is 5 K instructions (issue 21)
_ALLOC_SIZES: dict[tuple[str, str, int, int, int, int], int] = {}


# TENSOR_READ_LAZY tensors (gemma4.cpp: the per-layer token embeddings; qwen4exp.cpp:215: the PLE n-gram table)
# that llama.cpp's default --lazy-mode auto reads on demand when over 4 GiB (llama-model-loader.cpp:1088-1112): a
# context and a buffer of their own, from the file's mapping (lazy_read::buft, even with --no-mmap), printed as a
# second CPU_Mapped buffer
_LAZY = {"gemma4": ("per_layer_token_embd.weight",), "qwen4exp": ("per_layer_token_embd.weight",)}
LAZY_MIN = 4 << 30


# per model (held weakly), the model buffers of each placement (:func:`placement.place` gives one object per
# question, which nobody changes; kept with it, so that an id is never taken for another's): --fit's dry runs
# come back to the same placements (DeepSeek-V4-Flash's fit: 42 breakdowns, 9 placements)
_WEIGHTS: weakref.WeakKeyDictionary[GGUFModel, dict[int, tuple[Placement, tuple[Buffer, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def weight_buffers(model: GGUFModel, pl: Placement) -> list[Buffer]:
    """The model buffers of a placement: one per buffer type (``CPU_Mapped`` one per shard)."""
    done = _WEIGHTS.setdefault(model, {})
    entry = done.get(id(pl))
    if entry is None or entry[0] is not pl:
        if len(done) >= PLACED_MOST:
            del done[next(iter(done))]
        entry = done[id(pl)] = (pl, tuple(_weight_buffers(model, pl)))
    return list(entry[1])


def _weight_buffers(model: GGUFModel, pl: Placement) -> list[Buffer]:
    sizes: dict[str, int] = {}
    spans: dict[int, tuple[int, int]] = {}
    meta: dict[str, int] = {}
    known = _SIZES.setdefault(model, {})
    lazy: list[int] = []
    lazy_names = _LAZY.get(model.architecture or "", ())
    for t, buft in pl.tensors:
        if t.name in lazy_names and t.nbytes > LAZY_MIN:
            lazy.append(t.nbytes)  # its own context and mapped buffer, whatever the placement and --no-mmap
            continue
        if buft == CPU_MAPPED:
            if t.name not in pl.repacked_only:
                lo, hi = spans.get(t.shard, (t.file_offset, t.file_offset + t.nbytes))
                spans[t.shard] = (min(lo, t.file_offset), max(hi, t.file_offset + t.nbytes))
            continue
        if buft == META:
            _add(meta, meta_alloc(pl, t.name, t.type, tuple(t.shape)))
            continue
        if buft == CPU and t.name in pl.repacked_only:
            continue  # without a mapping (-lm none / --no-mmap) its one host copy is the CPU_REPACK one
        key = (t.name, t.file_offset, buft)
        size = known.get(key)
        if size is None:
            shape, gt = t.shape, t.type
            ne0 = shape[0] if shape else 1
            rows = t.n_elements // shape[0] if shape and shape[0] else 1
            if gt.known and gt.block_size:
                same = (buft, gt.name, gt.block_size, gt.type_size, ne0, rows)
                size = _ALLOC_SIZES.get(same)
                if size is None:
                    if len(_ALLOC_SIZES) >= 1 << 16:
                        _ALLOC_SIZES.clear()
                    size = _ALLOC_SIZES[same] = alloc_size(buft, gt, ne0, rows)
            else:
                size = alloc_size(buft, gt, ne0, rows, t.nbytes)
            known[key] = size
        sizes[buft] = sizes.get(buft, 0) + size
    out = [Buffer("model", CPU_MAPPED, hi - lo) for _shard, (lo, hi) in sorted(spans.items())]
    out += [Buffer("model", b, n) for b, n in sizes.items()]
    if meta:
        out.append(meta_buffer("model", meta))
    if pl.repack:
        out.append(Buffer("model", CPU_REPACK, sum(pad(t.nbytes, HOST_ALIGN) for t in pl.repack)))
    out += [Buffer("model", CPU_MAPPED, n) for n in lazy]
    return out


def _cache_type(name: str, option: str) -> GGMLType:
    try:
        return ggml_type_by_name(name)
    except ValueError:
        raise InputError(f"{option} {name}: not a ggml type", option) from None


def kv_buffers(
    hp: Hparams,
    kinds: list[LayerKind],
    pl: Placement,
    cp: ContextParams,
    cells: int,
    swa_cells: int,
    n_streams: int,
    path: str = "",
) -> tuple[list[Buffer], dict[bool | None, tuple[int, int]]]:
    """The KV cache: one buffer per buffer type and cache (the sliding-window layers' cache apart),
    and per cache (sliding window or not; None: a DSA indexer-key cache, within the full-attention one's
    figure) its tensor bytes and layers."""
    tk, tv = _cache_type(cp.cache_type_k, "-ctk"), _cache_type(cp.cache_type_v, "-ctv")
    v_trans = cp.flash_attn == "off"
    # the layers with a cache of their own: no NextN/MTP layer (llama-model.cpp:2812-2819), no layer
    # that reuses an earlier one's (gemma3n, has_kv), no recurrent-only or MLP-only layer
    every = (a := arch_of(hp.arch)) is not None and a.kv_every_layer  # deci: a cache tensor per layer
    attn = [k for k in kinds if k.kv and k.index < len(hp.n_head_kv) and (hp.n_head_kv[k.index] > 0 or every)]
    # [TAG_V_CACHE_VARIABLE] n_embd_v_gqa_max over every layer (llama-hparams.cpp:199-206)
    v_max = max((hp.n_head_kv[k.index] * (hp.head_v_swa if k.is_swa else hp.head_v) for k in kinds), default=0)
    has_v = not hp.is_mla  # MLA caches the compressed latent and the rope part of K only (llama-kv-cache.cpp:210-211)
    out: list[Buffer] = []
    stats: dict[bool | None, tuple[int, int]] = {None: (0, 0)}
    for swa in (False, True):
        per: dict[str, int] = {}
        meta: dict[str, int] = {}
        nbytes = layers = 0
        for k in attn:
            if k.is_swa != swa:
                continue
            n_kv = hp.n_head_kv[k.index]
            hk, hv = (hp.head_k_swa, hp.head_v_swa) if swa else (hp.head_k, hp.head_v)
            dev = pl.dev_layer(k.index)  # the layer's device (Granite Switch's router layer: its own)
            buft = CPU if cp.no_kv_offload or dev is None else dev
            rows = (swa_cells if swa else cells) * n_streams
            v_width = (v_max if v_trans else hv * n_kv) if has_v else 0
            if buft == META:  # llama-kv-cache.cpp:233-237: K and V are [width, cells, streams]
                n_cells = swa_cells if swa else cells
                _add(meta, meta_alloc(pl, f"cache_k_l{k.index}", tk, (hk * n_kv, n_cells, n_streams)))
                if has_v:
                    _add(meta, meta_alloc(pl, f"cache_v_l{k.index}", tv, (v_width, n_cells, n_streams)))
            else:
                v_bytes = alloc_size(buft, tv, v_width, rows) if has_v else 0
                per[buft] = per.get(buft, 0) + alloc_size(buft, tk, hk * n_kv, rows) + v_bytes
            nbytes += (_row(tk, hk * n_kv, path) + (_row(tv, v_width, path) if has_v else 0)) * rows
            layers += 1
        out += [Buffer("kv", b, n) for b, n in per.items()]
        if meta:
            out.append(meta_buffer("kv", meta))
        if not swa and hp.indexer_layers:
            indexer = _indexer_buffers(hp, pl, cp, tk, cells, n_streams, path, out)
            nbytes += indexer
            stats[None] = (indexer, len(hp.indexer_layers))
        stats[swa] = (nbytes, layers)
    return out, stats


def _indexer_buffers(
    hp: Hparams,
    pl: Placement,
    cp: ContextParams,
    tk: GGMLType,
    cells: int,
    n_streams: int,
    path: str,
    out: list[Buffer],
) -> int:
    """DeepSeek Sparse Attention's indexer-key cache (``llama_kv_cache_dsa``'s second ``llama_kv_cache``,
    llama-kv-cache-dsa.cpp:41-53): one K tensor of ``indexer.key_length`` values (one head) per cell and
    indexer layer, of the -ctk type, no V (the hparams are MLA's); its own buffer per buffer type, after
    the MLA cache's. Appends them to ``out``; returns the tensor bytes."""
    per: dict[str, int] = {}
    meta: dict[str, int] = {}
    for il in hp.indexer_layers:
        dev = pl.layer_device[il] if il < len(pl.layer_device) else None
        buft = CPU if cp.no_kv_offload or dev is None else dev
        if buft == META:
            _add(meta, meta_alloc(pl, f"cache_k_l{il}", tk, (hp.indexer_k, cells, n_streams)))
        else:
            per[buft] = per.get(buft, 0) + alloc_size(buft, tk, hp.indexer_k, cells * n_streams)
    out += [Buffer("kv", b, n) for b, n in per.items()]
    if meta:
        out.append(meta_buffer("kv", meta))
    return _row(tk, hp.indexer_k, path) * cells * n_streams * len(hp.indexer_layers)


def msa_buffers(
    model: GGUFModel,
    hp: Hparams,
    pl: Placement,
    cp: ContextParams,
    cells: int,
    n_streams: int,
    out: list[Buffer],
    stats: dict[bool | None, tuple[int, int]],
) -> dict[bool | None, tuple[int, int]]:
    """MiniMax Sparse Attention's indexer cache: ``llama_kv_cache_msa``'s second ``llama_kv_cache``
    (llama-kv-cache-msa.cpp:40-50) over a copy of the hparams with one KV head per layer and
    ``indexer.key_length`` as the K head size, for the layers from ``leading_dense_block_count`` on
    (create_memory's ``filter_idx``); the hparams are not MLA, so each layer keeps K (``indexer.key_length``
    values per cell) and V (``value_length`` values: ``n_embd_v_gqa`` of one head, and ``n_embd_v_gqa_max``,
    the same, when ``-fa off`` transposes it), of the -ctk / -ctv types, the same cells and streams as the
    main cache, on the layer's device (the host with -nkvo). Appends its buffers (one per buffer type, after
    the main cache's) to ``out``; returns ``stats`` with the indexer cache (``None``) and its bytes within
    the full-attention figure, as for DeepSeek Sparse Attention."""
    tk, tv = _cache_type(cp.cache_type_k, "-ctk"), _cache_type(cp.cache_type_v, "-ctv")
    n_dense = model.metadata.get_int(f"{hp.arch}.leading_dense_block_count") or 0
    layers = [il for il in range(max(n_dense, 0), hp.n_layer_main) if il < len(hp.n_head_kv)]
    per: dict[str, int] = {}
    meta: dict[str, int] = {}
    for il in layers:
        dev = pl.layer_device[il] if il < len(pl.layer_device) else None
        buft = CPU if cp.no_kv_offload or dev is None else dev
        if buft == META:
            _add(meta, meta_alloc(pl, f"cache_k_l{il}", tk, (_msa_key(model), cells, n_streams)))
            _add(meta, meta_alloc(pl, f"cache_v_l{il}", tv, (hp.head_v, cells, n_streams)))
        else:
            rows = cells * n_streams
            per[buft] = (
                per.get(buft, 0) + alloc_size(buft, tk, _msa_key(model), rows) + alloc_size(buft, tv, hp.head_v, rows)
            )
    out += [Buffer("kv", b, n) for b, n in per.items()]
    if meta:
        out.append(meta_buffer("kv", meta))
    nbytes = (_row(tk, _msa_key(model), model.path) + _row(tv, hp.head_v, model.path)) * cells * n_streams * len(layers)
    full, n_full = stats[False]
    return {**stats, False: (full + nbytes, n_full), None: (nbytes, len(layers))}


def _msa_key(model: GGUFModel) -> int:
    """``attention.indexer.key_length`` (minimax-m3.cpp ``load_arch_hparams`` requires it)."""
    return model.metadata.get_int(f"{model.architecture}.attention.indexer.key_length") or 0


def hp_layers(hp: Hparams, ratio: int) -> tuple[int, ...]:
    """The blocks of a DeepSeek V4 model whose ``attention.compress_ratios`` entry is ``ratio``."""
    return tuple(il for il, r in enumerate(hp.dsv4_ratios) if r == ratio)


def _element_bytes(t: GGMLType) -> float:
    return t.type_size / t.block_size if t.known and t.block_size else 2.0


def _row(t: GGMLType, n: int, path: str) -> int:
    if n % t.block_size:
        raise ValidationError(
            path,
            None,
            f"a KV cache row of {n} values (heads x head size) is not a whole number "
            f"of {t.name} blocks ({t.block_size}): llama.cpp cannot use that cache type",
        )
    return n // t.block_size * t.type_size


@dataclass(frozen=True, slots=True)
class Dsv4Cache:
    """One cache of DeepSeek V4's ``llama_kv_cache_dsv4`` (llama-kv-cache-dsv4.cpp:1213-1340): its name as
    llama.cpp's log says it, the blocks it holds, its cells per stream and its K width (values per cell)."""

    name: str  # "raw" (the sliding window), "csa", "hca", "lid" (the lightning indexer's compressed keys)
    layers: tuple[int, ...]
    cells: int
    width: int  # per KV head: n_embd_k_gqa(il) = width x head_count_kv(il), except the indexer's (one head)
    per_kv_head: bool = True


@dataclass(frozen=True, slots=True)
class Dsv4State:
    """One compressor state of ``llama_kv_cache_dsv4`` (``llama_dsv4_comp_state``, llama-kv-cache-dsv4.cpp:896-1003):
    per layer two F32 tensors (kv and score) of ``width`` x ``rows`` x streams."""

    name: str  # "csa", "hca", "lid"
    layers: tuple[int, ...]
    rows: int
    width: int


def dsv4_layout(
    hp: Hparams, n_ctx_seq: int, n_seq: int, n_ubatch: int, swa_full: bool
) -> tuple[list[Dsv4Cache], list[Dsv4State]]:
    """What ``llama_kv_cache_dsv4`` makes for ``-c``'s ``n_ctx_seq``, ``-np`` and ``-ub``
    (llama-model.cpp create_memory passes ``cparams.n_ctx_seq`` and no layer filter):

    * ``raw``: a ``llama_kv_cache_iswa`` over a copy of the hparams with ``n_layer_nextn`` 0, so every block,
      NextN/MTP ones too, is an SWA layer; K only (``dsv4_make_k_only``: the MLA path), ``key_length x
      head_count_kv`` values per cell; never unified (``unified_raw = false``, whatever -kvu says), so the
      window is ``pad256(min(n_ctx_seq, n_swa + n_ubatch))`` cells (``n_ctx_seq`` with --swa-full) per
      sequence. Its non-SWA half has no layer and no buffer.
    * ``csa`` / ``hca``: K-only ``llama_kv_cache``s of the blocks whose ratio is 4 / 128,
      ``pad256(max(1, ceil(n_ctx_seq / ratio)))`` cells per sequence, same width.
    * ``lid``: the lightning indexer's, on the CSA blocks, CSA's cells, one head of
      ``indexer.key_length`` values.
    * the compressor states (F32, ``n_seq x (1 + n_rs_seq)`` planes; ``n_rs_seq`` is 0 without speculative
      decoding): CSA ``8 x 2·key_length``, HCA ``128 x key_length``, the indexer's ``8 x 2·indexer.key_length``.
    """
    n_all = hp.n_layer
    ratios = hp.dsv4_ratios
    csa = tuple(il for il in range(n_all) if ratios[il] == DSV4_CSA)
    hca = tuple(il for il in range(n_all) if ratios[il] == DSV4_HCA)
    window = n_ctx_seq if swa_full else pad(min(n_ctx_seq, hp.n_swa + n_ubatch))
    # n_embd_head_k(il): every block is an SWA layer (set_swa_pattern(0), the NextN ones marked too), so
    # key_length_swa, which defaults to key_length
    head = hp.head_k_swa

    def comp(ratio: int) -> int:
        return pad(max(1, -(-n_ctx_seq // ratio)))

    caches = [
        Dsv4Cache("raw", tuple(range(n_all)), window, head),
        Dsv4Cache("csa", csa, comp(DSV4_CSA), head),
        Dsv4Cache("hca", hca, comp(DSV4_HCA), head),
        Dsv4Cache("lid", csa, comp(DSV4_CSA), hp.indexer_k, per_kv_head=False),  # n_head_kv_arr filled with 1
    ]
    states = [
        Dsv4State("csa", csa, 2 * DSV4_CSA, 2 * hp.head_k),
        Dsv4State("hca", hca, DSV4_HCA, hp.head_k),
        Dsv4State("lid", csa, 2 * DSV4_CSA, 2 * hp.indexer_k),
    ]
    return caches, states


def dsv4_buffers(
    hp: Hparams,
    pl: Placement,
    cp: ContextParams,
    n_ctx_seq: int,
    n_seq: int,
    n_ubatch: int,
    path: str = "",
) -> tuple[list[Buffer], dict[str, tuple[int, int]]]:
    """DeepSeek V4's KV caches (kind ``kv``: one buffer per buffer type and cache, as each
    ``llama_kv_cache`` prints its own) and compressor states (kind ``state``: llama.cpp prints them as
    ``llama_dsv4_comp_state: ... DSV4 csa state buffer size``; its memory breakdown counts them as context),
    each tensor on its block's device (``model.dev_layer``), the host with -nkvo. The K width and cells
    are per :func:`dsv4_layout`; the -ctk type applies to every cache (there is no V), -ctv to none.

    Returns the buffers and, per cache and state (``raw``, ``csa``, ``hca``, ``lid``, ``state``), its
    tensor bytes and layers."""
    tk = _cache_type(cp.cache_type_k, "-ctk")
    f32 = ggml_type_by_name("F32")
    caches, states = dsv4_layout(hp, n_ctx_seq, n_seq, n_ubatch, cp.swa_full)

    def buft_of(il: int) -> str:
        dev = pl.layer_device[il] if il < len(pl.layer_device) else None
        return CPU if cp.no_kv_offload or dev is None else dev

    out: list[Buffer] = []
    stats: dict[str, tuple[int, int]] = {}
    for c in caches:
        per: dict[str, int] = {}
        nbytes = 0
        for il in c.layers:
            buft = buft_of(il)
            width = c.width * (hp.n_head_kv[il] if c.per_kv_head and il < len(hp.n_head_kv) else 1)
            per[buft] = per.get(buft, 0) + alloc_size(buft, tk, width, c.cells * n_seq)
            nbytes += _row(tk, width, path) * c.cells * n_seq
        out += [Buffer("kv", b, n) for b, n in per.items()]
        stats[c.name] = (nbytes, len(c.layers))
    state_bytes = 0
    state_layers: set[int] = set()
    for st in states:
        per = {}
        for il in st.layers:
            buft = buft_of(il)
            per[buft] = per.get(buft, 0) + 2 * alloc_size(buft, f32, st.width, st.rows * n_seq)
        out += [Buffer("state", b, n) for b, n in per.items()]
        state_bytes += 2 * 4 * st.width * st.rows * n_seq * len(st.layers)
        state_layers |= set(st.layers)
    stats["state"] = (state_bytes, len(state_layers))
    return out, stats


def recurrent_buffers(
    hp: Hparams, kinds: list[LayerKind], pl: Placement, cp: ContextParams, n_seq: int
) -> list[Buffer]:
    f32 = ggml_type_by_name("F32")
    per: dict[str, int] = {}
    meta: dict[str, int] = {}
    for k in kinds:
        if not k.state:
            continue
        dev = pl.layer_device[k.index]
        buft = CPU if cp.no_kv_offload or dev is None else dev
        if buft == META:  # llama-memory-recurrent.cpp:102-105: R and S are [n_embd_r or n_embd_s, rows]
            _add(meta, meta_alloc(pl, f"cache_r_l{k.index}", f32, (hp.n_embd_r, n_seq)))
            _add(meta, meta_alloc(pl, f"cache_s_l{k.index}", f32, (hp.n_embd_s, n_seq)))
            continue
        per[buft] = (
            per.get(buft, 0) + alloc_size(buft, f32, hp.n_embd_r, n_seq) + alloc_size(buft, f32, hp.n_embd_s, n_seq)
        )
    return [Buffer("recurrent", b, n) for b, n in per.items()] + ([meta_buffer("recurrent", meta)] if meta else [])


def breakdown(
    model: GGUFModel, devices: list[Device], offload: OffloadParams, cp: ContextParams, *, builder: bool = True
) -> Breakdown:
    """Every buffer llama.cpp allocates for ``model`` on ``devices`` with these options.

    ``builder=False`` switches the architecture's graph builder off: the compute buffers are then the
    generic decoder estimate, as for an architecture without one (what its error table measures)."""
    if cp.flash_attn not in FLASH_ATTN:
        raise InputError(f"-fa must be one of {', '.join(FLASH_ATTN)}", "-fa")
    if min(cp.n_batch, cp.n_ubatch, cp.n_parallel) < 1 or cp.n_ctx < 0:
        raise InputError("-b, -ub and -np must be >= 1 and -c >= 0", "-c")
    # llama_init_from_model (llama-context.cpp:3819-3822): flash attention is not compatible with Grok
    grok_fa_off = model.architecture == "grok" and cp.flash_attn != "off"
    if grok_fa_off:
        cp = replace(cp, flash_attn="off")
    if cp.flash_attn != "off" and (why := FLASH_ATTN_ABORTS.get(model.architecture or "")):
        raise InputError(f"llama.cpp aborts this run with -fa {cp.flash_attn}: {why}; run it with -fa off", "-fa")
    hp = hparams(model)
    memory = memory_of(hp.arch)
    kinds = layer_kinds(model)
    pl = place(model, devices, offload)
    if pl.meta:
        cp = _tensor_parallel_context(cp)
    n_seq = cp.n_parallel
    n_ctx = pad(cp.n_ctx or hp.n_ctx_train or 4096)
    if cp.kv_unified:
        n_ctx_seq, n_streams = n_ctx, 1
    else:
        n_ctx_seq, n_streams = pad(n_ctx // n_seq), n_seq
        n_ctx = n_ctx_seq * n_seq
    n_batch = min(n_ctx, cp.n_batch)
    if cp.embeddings:  # common_init_from_params (common.cpp:1297-1303): the whole batch in one micro-batch
        n_batch = min(n_batch, cp.n_ubatch)
    n_ubatch = min(n_batch, cp.n_ubatch)
    swa_cells = n_ctx_seq
    if hp.n_swa and not cp.swa_full:
        swa_cells = pad(min(n_ctx_seq, hp.n_swa * (n_seq if cp.kv_unified else 1) + n_ubatch))
    notes: list[str] = []
    if grok_fa_off:
        notes.append("flash attention off: llama.cpp forces it off for Grok")
    if cp.flash_attn == "off" and ggml_type_by_name(cp.cache_type_v).is_quantized:
        raise InputError("a quantized V cache needs flash attention (llama.cpp refuses -fa off with it)", "-ctv")
    if refusal := cache_block_refusal(hp, kinds, cp):
        raise InputError(refusal[1], refusal[0])
    if hp.dsv4_ratios and _cache_type(cp.cache_type_k, "-ctk") != _cache_type(cp.cache_type_v, "-ctv"):
        # llama_init_from_model (llama-context.cpp:3838-3841): MLA models and DeepSeek V4 refuse different K and V
        # cache types (llama-completion: "unable to create context")
        raise InputError(
            f"-ctk {cp.cache_type_k} -ctv {cp.cache_type_v}: DeepSeek V4 needs the same K and V cache types "
            "(llama.cpp refuses different ones)",
            "-ctv",
        )
    buffers = weight_buffers(model, pl)
    dsv4: dict[str, tuple[int, int]] = {}
    if hp.dsv4_ratios:  # DeepSeek V4: llama_kv_cache_dsv4, one stream per sequence whatever -kvu says
        kv, dsv4 = dsv4_buffers(hp, pl, cp, n_ctx_seq, max(1, n_seq), n_ubatch, model.path)
        comp = [dsv4[k] for k in ("csa", "hca", "lid")]
        kv_stats = {
            False: (sum(b for b, _ in comp), len({*hp_layers(hp, DSV4_CSA), *hp_layers(hp, DSV4_HCA)})),
            True: dsv4["raw"],
            None: dsv4["lid"],
        }
        swa_cells = dsv4_layout(hp, n_ctx_seq, max(1, n_seq), n_ubatch, cp.swa_full)[0][0].cells
    else:
        kv_kinds = kinds
        if hp.router_layer >= 0:  # Granite Switch's router layer: a KV cache layer of its own (1 KV head)
            kv_kinds = [*kinds, LayerKind(hp.router_layer, "attention", "none", 1, True)]
        kv, kv_stats = kv_buffers(hp, kv_kinds, pl, cp, n_ctx_seq, swa_cells, n_streams, model.path)
        if memory == "msa":  # MiniMax-M3: llama_kv_cache_msa's indexer cache after the main one
            kv_stats = msa_buffers(model, hp, pl, cp, n_ctx_seq, n_streams, kv, kv_stats)
        if memory == "hybrid_idx":  # llama_memory_hybrid_idx: the indexer's own cache
            kv_stats = hybrid_idx_buffers(model, hp, kinds, pl, cp, n_ctx_seq, n_streams, kv, kv_stats)
    if memory == "none":  # create_memory makes none: no KV cache, no recurrent state
        kv, kv_stats, kinds = [], {False: (0, 0), True: (0, 0), None: (0, 0)}, memoryless(kinds)
    buffers += kv
    rs = recurrent_buffers(hp, kinds, pl, cp, max(1, n_seq))
    if memory == "hybrid_idx":  # qwen4exp's PLE conv history: a row of its own in the recurrent memory
        rs = ple_state_buffers(model, kinds, pl, cp, max(1, n_seq), rs)
    buffers += rs
    out_bytes = output_bytes(model, hp, cp, n_seq)
    if hp.arch in DIFFUSION:  # llama.cpp runs these only through llama-diffusion-cli: its run's output buffer
        from ggufx.analysis.memory.graph.models.diffusion import tool_output_bytes

        tokens = min(cp.n_batch, cp.n_ubatch)
        out_bytes = tool_output_bytes(hp.n_vocab, tokens, n_seq)
        notes.append(
            f"output buffer: llama-diffusion-cli's run after its first decode (the logits of all {tokens:,} tokens "
            f"it denoises, {hp.n_vocab:,} floats each); the context starts with {4 * hp.n_vocab * n_seq:,} bytes "
            "(one row per sequence, as llama-completion and the tool print it)"
        )
    buffers.append(Buffer("output", _host(pl, pl.output_device), out_bytes))
    n_outputs = min(n_ubatch, cp.n_outputs_max or n_batch)
    pipeline = (
        len(pl.devices) > 1
        and pl.n_offloaded == hp.n_layer + 1
        and offload.split_mode == "layer"
        and not cp.no_kv_offload
        and not offload.overrides
    )
    sp = SimParams(
        n_ubatch,
        n_outputs,
        max(1, n_seq),
        n_ctx_seq,
        n_streams,
        cp.flash_attn != "off",
        _cache_type(cp.cache_type_k, "-ctk").name,
        _cache_type(cp.cache_type_v, "-ctv").name,
        cp.no_kv_offload,
        pipeline,
        swa_cells,
        pooling=pooling_of(model, cp),
        # the rollback snapshots in the graph: where the builder writes them (Arch.rs_rollback_graph)
        n_rs_seq=cp.n_rs_seq if (a := arch_of(hp.arch)) is not None and a.rs_rollback_graph else 0,
    )
    if sp.pooling is not None:
        embedding_refusal(model, sp, cp.n_outputs_max or n_batch, n_ubatch)
        source = "the file's pooling_type" if cp.pooling is None else "--pooling"
        notes.append(
            f"embedding run: {sp.pooling} pooling ({source}) "
            f"over {n_seq} sequence(s), {n_outputs:,} outputs a micro-batch; the output buffer holds "
            f"{n_embd_out(model, hp):,} embedding floats per sequence beside the {hp.n_vocab:,} logits (llama.cpp "
            "reserves both)"
        )
    why_not = simulated(model) if builder else "the graph builder is switched off"
    # -fa auto with a quantized V cache is flash attention on before any probe (llama_init_from_model,
    # llama-context.cpp:3843-3847: the V cache needs it); otherwise resolve_fused_ops' probe decides
    v_quantized = _cache_type(cp.cache_type_v, "-ctv").is_quantized
    if not pl.meta and why_not is None and cp.flash_attn == "auto" and not v_quantized:
        il = flash_attn_mismatch(model, devices, offload, sp, placement=pl)
        if il is not None:
            # llama.cpp turns flash attention off after making the KV cache for it (llama-context.cpp:232,
            # :399, :509-561): the graphs are reserved without flash attention over an untransposed V cache
            sp = replace(sp, flash_attn=False, v_trans=False)
            notes.append(
                f"-fa auto: llama.cpp turns flash attention off (layer {il}'s attention is scheduled on "
                "another device than the layer's: resolve_fused_ops)"
            )
    if why_not is None:  # the graph itself, split and allocated as llama.cpp does
        sizes = simulate_compute(model, devices, offload, sp, placement=pl)
        buffers += [_meta_compute(pl, Buffer("compute", b, n, exact=False)) for b, n in sizes.items() if n > 1]
        estimate = None
    else:
        from ggufx.analysis.memory.compute import GraphShape

        shape = GraphShape(
            n_tokens=n_ubatch,
            n_outputs=n_outputs,
            n_kv=n_ctx_seq,
            n_kv_swa=swa_cells,
            n_streams=n_streams,
            flash_attn=cp.flash_attn != "off",
            k_quantized=ggml_type_by_name(cp.cache_type_k).is_quantized,
            v_quantized=ggml_type_by_name(cp.cache_type_v).is_quantized,
            k_bytes=_element_bytes(_cache_type(cp.cache_type_k, "-ctk")),
            v_bytes=_element_bytes(_cache_type(cp.cache_type_v, "-ctv")),
        )
        estimate = estimate_reason(model, why_not)
        try:
            computed, decided_by = compute_buffers(
                model, hp, kinds, pl, shape, pipeline, cp.flash_attn == "off", cp.no_kv_offload
            )
        except (ArithmeticError, IndexError, ValueError) as e:  # a shape the phase model cannot size
            computed, decided_by = [], None
            estimate = f"no compute figure: the generic decoder estimate cannot size this model ({e})"
        buffers += [_meta_compute(pl, replace(b, reason=estimate or "")) for b in computed]
        rough = approximate_compute(model, kinds, pl, shape, pipeline, cp, offload) or decided_by
        if rough:
            notes.append(f"compute buffers are a rough approximation here ({rough}); the other figures stay exact")
        if estimate:
            notes.append(f"compute buffers: {estimate}; the weights, KV cache, state and output stay exact")
    for rx in pl.unmatched_overrides:  # llama.cpp applies the overrides that match and ignores the rest
        notes.append(f"-ot {rx}: matches no tensor of this model; llama.cpp ignores it")
    n_rec = sum(1 for k in kinds if k.state)
    rec_bytes = n_rec * 4 * (hp.n_embd_r + hp.n_embd_s) * max(1, n_seq)
    if memory == "hybrid_idx":  # qwen4exp's PLE conv history (ple_state_buffers)
        rec_bytes += 4 * ple_conv_state(model) * len(ple_layers(model)) * max(1, n_seq)
    if dsv4:  # the compressor states are DeepSeek V4's per-sequence state
        rec_bytes, n_rec = dsv4["state"]
        caches = dsv4_layout(hp, n_ctx_seq, max(1, n_seq), n_ubatch, cp.swa_full)[0]
        rows = ", ".join(
            f"{what} {len(c.layers)} layers x {c.cells:,} rows ({dsv4[c.name][0] / MiB:,.2f} MiB)"
            for c, what in zip(caches[1:], ("CSA (1/4)", "HCA (1/128)", "indexer keys (1/4)"), strict=True)
        )
        seqs = f", rows for each of {n_seq} sequences" if n_seq > 1 else ""
        notes.append(
            f"DeepSeek V4 cache (llama_kv_cache_dsv4): the full-attention figure is its compressed caches: "
            f"{rows}{seqs}; the sliding window holds every block; the recurrent state is its F32 "
            f"compressor states ('state' buffers)"
        )
    return Breakdown(
        buffers,
        n_ctx,
        n_ctx_seq,
        n_streams,
        n_batch,
        n_ubatch,
        n_seq,
        swa_cells,
        pl.n_offloaded_all,  # llama.cpp's "offloaded N/M layers": Granite Switch's router layer counted
        pl.n_layer_all,
        pl.meta or pl.devices,
        notes,
        kv_stats[False][0],
        kv_stats[False][1],
        kv_stats[True][0],
        kv_stats[True][1],
        rec_bytes,
        n_rec,
        sp,
        estimate,
        kv_stats[None][0],
        kv_stats[None][1],
    )


# the architectures llama-arch.cpp names but llama.cpp does not load: why (the generic estimate's reason)
NOT_LOADED = {
    # llama_model_mapping (llama-model.cpp:43-352) has no LLM_ARCH_GPTJ case: "unsupported model architecture: 'gptj'"
    "gptj": (
        "llama.cpp 11434 does not load gptj (unsupported model architecture: llama_model_mapping has no case for it)"
    ),
}


def estimate_reason(model: GGUFModel, why_not: str | None) -> str:
    """Why a model's compute buffers are the phase model's estimate (:mod:`.compute`), not its rebuilt graph:
    no builder for the architecture, an unknown architecture, or a file the builder cannot build (what is
    missing)."""
    arch = model.architecture or ""
    a = arch_of(arch)
    if a is None:
        if arch in NOT_LOADED:
            return f"generic decoder estimate: {NOT_LOADED[arch]}"
        return f"generic decoder estimate: {arch!r} is not a registered architecture"
    if a.builder is None:
        return f"generic decoder estimate: no graph builder for {arch}"
    assert why_not is not None
    return f"generic decoder estimate: {why_not}"


def approximate_compute(
    model: GGUFModel,
    kinds: list[LayerKind],
    pl: Placement,
    s: GraphShape,
    pipeline: bool,
    cp: ContextParams,
    offload: OffloadParams,
) -> str | None:
    """Why the compute model is only approximate for this configuration (None: it is within 5% of
    llama.cpp on every recorded run of this kind)."""
    if model.architecture in DSV4_ARCHS:
        # the generic decoder sees window layers only; DeepSeek V4's compressed attention and lightning indexer
        # score n_ctx_seq / 4 rows per token (deepseek4.cpp), so llama.cpp's buffer grows with the context:
        # on the CPU build the estimate is 31-78% under llama.cpp's on the small model (-c 512 to 65536), 9%
        # over at 4096 cells and 82% under at 1,048,576 (llama.cpp's 5.5x) on the published Flash dimensions
        return (
            "DeepSeek V4's compressed attention and lightning indexer grow with the context and are not "
            "modelled; llama.cpp's compute buffer was up to 5.5x this estimate on the recorded runs"
        )
    from ggufx.analysis.memory.compute import OP_OFFLOAD_MIN_BATCH

    host_weights = any(not is_cuda(buft) and layer_of(t.name, len(kinds)) != "input" for t, buft in pl.tensors)
    if len(pl.devices) > 1 and not pipeline and host_weights and s.n_tokens >= OP_OFFLOAD_MIN_BATCH:
        # the first GPU multiplies every host weight (op offload) and runs the host layers' attention
        # over copies of their cache; how those copies and the GPU's own layers fragment its buffer
        # is beyond the phase model (recorded: -44% to -63% without this term)
        return "several GPUs with weights on the host (partial offload or overrides)"
    moe = (model.metadata.get_int(f"{model.architecture}.expert_count") or 0) > 0
    if moe and offload.overrides and pl.n_offloaded < len(pl.layer_device):
        return "MoE experts on the host with partial offload"
    return None


def compute_model(model: GGUFModel, hp: Hparams, kinds: list[LayerKind]) -> ComputeModel:
    from ggufx.analysis.memory.compute import ComputeModel

    md = model.metadata
    a = model.architecture or ""
    n_expert = md.get_int(f"{a}.expert_count") or 0
    per = tuple(
        "none"
        if k.nextn  # the graph does not run the NextN/MTP layers
        else "recurrent"
        if k.is_recurrent
        else "swa"
        if k.is_swa
        else "attention"
        if k.is_attention
        else "none"
        for k in kinds
    )
    entry = arch_of(a)
    hybrid_q = bool(entry and entry.gated_q)
    return ComputeModel(
        per,
        n_expert > 0,
        md.get_int(f"{a}.expert_feed_forward_length") or 0,
        md.get_int(f"{a}.expert_used_count") or 0,
        hybrid_q,
        hybrid_q,
    )


def compute_buffers(
    model: GGUFModel,
    hp: Hparams,
    kinds: list[LayerKind],
    pl: Placement,
    s: GraphShape,
    pipeline: bool,
    v_trans: bool,
    no_kv_offload: bool,
) -> tuple[list[Buffer], str | None]:
    """Computed (not exact) compute buffers per backend (see :mod:`ggufx.analysis.memory.compute`), and why
    the figures are rough when a phase the model only bounds decides them (None otherwise)."""
    from ggufx.analysis.memory.compute import (
        OP_OFFLOAD_MIN_BATCH,
        cpu_compute,
        cpu_layers_peak,
        device_compute,
        host_compute,
        host_layers_attention,
        masks,
    )

    cm = compute_model(model, hp, kinds)
    if not pl.devices:
        return [Buffer("compute", CPU, cpu_compute(hp, cm, s), exact=False)], None
    full = pl.n_offloaded == hp.n_layer + 1
    biggest = 0  # the largest host weight the first GPU multiplies (op offload) when the output stays on the host
    if pl.output_device is None:
        host_weights = [
            t
            for t, buft in pl.tensors
            if not is_cuda(buft) and len(t.shape) >= 2 and layer_of(t.name, hp.n_layer) not in ("input", hp.n_layer)
        ]
        if s.n_outputs >= OP_OFFLOAD_MIN_BATCH:  # fewer outputs: the host multiplies the output matrix itself
            host_weights += [t for t, _ in pl.tensors if t.name in ("output.weight", "token_embd.weight")][-1:]
        gpu = pl.devices[0].name
        biggest = max(
            (alloc_size(gpu, t.type, t.shape[0], t.n_elements // t.shape[0]) for t in host_weights), default=0
        )
    host_layers = tuple(il for il in range(hp.n_layer) if pl.layer_device[il] is None)
    rough = None
    out: list[Buffer] = []
    for i, d in enumerate(pl.devices):
        layers = [il for il in range(hp.n_layer) if pl.layer_device[il] == d.name]
        has_output = pl.output_device == d.name
        if not layers and not has_output and not (i == 0 and (biggest or host_layers)):
            continue
        args = (hp, cm, s, layers, has_output, full, pipeline, biggest if i == 0 else 0, not no_kv_offload)
        size = device_compute(*args, len(pl.devices) == 1, bool(layers) and layers[0] == 0)
        if i == 0 and host_layers and host_layers_attention(hp, cm, s, list(host_layers)) > size:
            size = host_layers_attention(hp, cm, s, list(host_layers))
            rough = (
                "the host layers' attention over copies of their cache decides the first GPU's buffer; "
                "how the next host layers' copies fit the holes one layer leaves is not modelled"
            )
        out.append(Buffer("compute", d.name, size, exact=False))
    all_masks = masks(s, list(cm.kinds))
    v_rows = hp.head_v * max(hp.n_head_kv, default=0) if v_trans else 0
    on_host = cpu_layers_peak(hp, cm, s, list(host_layers)) if s.n_tokens < OP_OFFLOAD_MIN_BATCH else 0
    host = host_compute(hp, s, all_masks, v_rows, pipeline, on_host)
    out.append(Buffer("compute", _host(pl, pl.devices[0].name), host, exact=False))
    return out, rough


# the architectures whose graph llama.cpp 11434 aborts while reserving it with flash attention on or auto (both
# reserve the flash-attention graph first), and why (recorded: the CUDA runs g-plm-1.8b-*, fit-plm-1.8b-*)
FLASH_ATTN_ABORTS = {
    "plm": "plm.cpp hands the cache a V shaped as n_tokens heads of one token, and ggml asserts while the graph "
    "is reserved (ggml_set_rows' GGML_ASSERT(a->ne[0] == b->ne[0]); with several sequences ggml_reshape_2d's)",
}


def flash_attn_default(model: GGUFModel) -> str:
    """llama.cpp's -fa default (auto), or off where llama.cpp aborts the run with it: what searches and reports
    that take no -fa from the user assume."""
    return "off" if model.architecture in FLASH_ATTN_ABORTS else "auto"


def cache_block_refusal(hp: Hparams, kinds: list[LayerKind], cp: ContextParams) -> tuple[str, str] | None:
    """llama_init_from_model (llama-context.cpp:3854-3874): where flash attention may run (on or auto), a quantized
    K or V cache type's block must divide every layer's head size (n_embd_head_k(il): a sliding-window layer's is
    key_length_swa), or llama.cpp makes no context ("unable to create context"). The option and the reason, or
    None where llama.cpp accepts the cache types."""
    if cp.flash_attn == "off":
        return None
    swa = any(k.mixer == "attention (SWA)" for k in kinds)
    for flag, name, which, heads in (
        ("-ctk", cp.cache_type_k, "K", {hp.head_k, *((hp.head_k_swa,) if swa else ())}),
        ("-ctv", cp.cache_type_v, "V", {hp.head_v, *((hp.head_v_swa,) if swa else ())}),
    ):
        t = ggml_type_by_name(name)
        bad = sorted(h for h in heads if t.is_quantized and h % t.block_size)
        if bad:
            return flag, (
                f"{flag} {name}: its block of {t.block_size} values does not divide the {which} head size {bad[0]} "
                f"(llama.cpp makes no context: '{which} cache type {name} with block size {t.block_size} does not "
                f"divide n_embd_head_{which.lower()}={bad[0]}')"
            )
    return None


def refused_cache_types(model: GGUFModel, cp: ContextParams, types: tuple[str, ...]) -> dict[str, str]:
    """The cache types (each for K and V) of ``types`` that llama.cpp refuses for ``model`` with ``cp``, and why."""
    hp, kinds = hparams(model), layer_kinds(model)
    out = {}
    for ct in types:
        if cp.flash_attn == "off" and ggml_type_by_name(ct).is_quantized:
            out[ct] = f"-ctv {ct}: a quantized V cache needs flash attention (llama.cpp refuses -fa off with it)"
        elif why := cache_block_refusal(hp, kinds, replace(cp, cache_type_k=ct, cache_type_v=ct)):
            out[ct] = why[1]
    return out


def _host(pl: Placement, device: str | None) -> str:
    """The host buffer type beside a device: the Meta device's is its GPUs' (ggml-backend-meta.cpp:377-397)."""
    return host_buft(pl.meta[0].name if device == META and pl.meta else device)


def _tensor_parallel_context(cp: ContextParams) -> ContextParams:
    """-sm tensor turns flash attention on and refuses it off (llama-context.cpp:3824-3832)."""
    if cp.flash_attn == "off":
        raise InputError("-sm tensor needs flash attention: llama.cpp refuses -fa off with it", "-fa")
    if cp.no_kv_offload:
        raise InputError(
            "-sm tensor with -nkvo is not modelled: the compute buffers of a Meta device over a host "
            "cache were never recorded",
            "-nkvo",
        )
    return replace(cp, flash_attn="on")


def _meta_compute(pl: Placement, b: Buffer) -> Buffer:
    """The Meta device's compute buffer, on every GPU alike. ggml_gallocr reserves the whole graph on the Meta
    buffer type, sizing each tensor at its full shape (the largest of its GPUs' sizes of it,
    ggml-backend-meta.cpp:315-323); the buffer of that size is then allocated once per GPU
    (``ggml_backend_meta_buffer_type_alloc_buffer``, :1697-1720) and llama.cpp prints it as ``Meta()``. Each GPU
    runs its slices of the nodes inside its own copy, so -ts changes nothing here (recorded: 314.5156 MiB at -ts
    3,1 as at 1,1)."""
    if b.buft != META:
        return b
    return Buffer(b.kind, b.buft, b.bytes, b.exact, slices={d.name: b.bytes for d in pl.meta}, reason=b.reason)


# -- llama_memory_hybrid_idx (issue 25, h-hybidx) ------------------------------------------------------------------
# llama-memory-hybrid-idx.cpp:52-75: llama_memory_hybrid (attention cache + recurrent state) plus a third
# llama_kv_cache, the indexer's: one head (n_head_kv_arr filled with 1) of attention.indexer.key_length x
# indexer_kpool_row values per cell when the indexer pools its keys (kpool > 0), of the -ctk type, K only (the
# hparams are made MLA's), n_ctx_seq cells, the attention cache's streams; its layers are create_memory's
# filter_idx (llama-model.cpp: GLM5_NEXT, and QWEN4EXP's needs_mem_idx branch). The row: glm5-next caches key |
# gate | pooled (llama_hparams::indexer_kpool_row's default 3), qwen4exp key | pooled (qwen4exp.cpp:81, 2).
HYBRID_IDX_ROW = {"glm5-next": 3, "qwen4exp": 2}


def _per_layer_ints(model: GGUFModel, key: str, n: int) -> list[int] | None:
    """A ``get_key_or_arr`` key of ``n`` entries (None: absent); an array of another length is llama.cpp's
    "wrong array length" refusal."""
    md = model.metadata
    if key not in md:
        return None
    v = md[key]
    raw = v.tolist() if isinstance(v, GGUFArray) else [v] * n
    if not all(isinstance(x, (bool, int, float)) for x in raw):
        raise ValidationError(model.path, md.kv(key).offset, f"{key} is not a number or an array of numbers")
    items = [int(x) for x in raw]
    if len(items) != n:
        raise ValidationError(
            model.path,
            md.kv(key).offset,
            f"{key} has {len(items)} entries but llama.cpp expects {n} (wrong array length)",
        )
    return items


def hybrid_idx_layout(model: GGUFModel, hp: Hparams, kinds: list[LayerKind]) -> tuple[int, tuple[int, ...]]:
    """The indexer cache of ``llama_memory_hybrid_idx``: (values per cell, layers).

    glm5-next (llama-model.cpp create_memory, GLM5_NEXT): the trunk's MLA layers (``!is_recr``) whose
    ``attention.indexer.types`` entry is set (every one without the key: glm5-next.cpp fills the array with 1),
    rows of key | gate | pooled. qwen4exp (its ``needs_mem_idx`` branch): every trunk
    attention layer, rows of key | pooled when ``attention.compress_ratios`` gives a k-pool, else the key alone."""
    a = hp.arch
    attn = [k.index for k in kinds if k.kv and not k.nextn]
    key_len = model.metadata.get_int(f"{a}.attention.indexer.key_length") or 0
    n_main = hp.n_layer - hp.n_nextn
    if a == "glm5-next":
        types = _per_layer_ints(model, f"{a}.attention.indexer.types", n_main) or [1] * n_main
        return key_len * HYBRID_IDX_ROW[a], tuple(il for il in attn if types[il])
    ratios = _per_layer_ints(model, f"{a}.attention.compress_ratios", hp.n_layer) or []
    kpool = max(ratios, default=0)
    return key_len * (HYBRID_IDX_ROW[a] if kpool > 0 else 1), tuple(attn)


def hybrid_idx_buffers(
    model: GGUFModel,
    hp: Hparams,
    kinds: list[LayerKind],
    pl: Placement,
    cp: ContextParams,
    cells: int,
    n_streams: int,
    out: list[Buffer],
    stats: dict[bool | None, tuple[int, int]],
) -> dict[bool | None, tuple[int, int]]:
    """Appends the indexer cache's buffers to ``out`` (after the attention cache's, as llama.cpp allocates
    them; per buffer type, on each layer's device) and returns the KV statistics with its bytes (within the
    full-attention figure, as for llama_kv_cache_dsa) and layers."""
    width, layers = hybrid_idx_layout(model, hp, kinds)
    if not layers or not width:
        return stats
    tk = _cache_type(cp.cache_type_k, "-ctk")
    idx = replace(hp, indexer_k=width, indexer_layers=layers)
    nbytes = _indexer_buffers(idx, pl, cp, tk, cells, n_streams, model.path, out)
    full_bytes, full_layers = stats[False]
    return {**stats, False: (full_bytes + nbytes, full_layers), None: (nbytes, len(layers))}


def ple_conv_state(model: GGUFModel) -> int:
    """``llama_hparams::ple_conv_state`` (llama-hparams.cpp:268-275): qwen4exp's PLE convolution history per
    sequence, ``(ple.conv_kernel - 1) x ple.ngram_size x hyper_connection.count x n_embd`` F32 values (0: no PLE,
    ``ple.layers`` absent)."""
    md = model.metadata
    a = model.architecture or ""
    layers = md.get(f"{a}.ple.layers")
    if not isinstance(layers, GGUFArray) or not len(layers):
        return 0

    def get(suffix: str) -> int:
        return md.get_int(f"{a}.{suffix}") or 0

    heads = (get("ple.ngram_size") - 1) * get("ple.heads_per_ngram")
    if heads <= 0 or get("ple.conv_kernel") <= 0:
        return 0
    return (
        (get("ple.conv_kernel") - 1) * get("ple.ngram_size") * get("hyper_connection.count") * get("embedding_length")
    )


def ple_layers(model: GGUFModel) -> tuple[int, ...]:
    """qwen4exp's PLE layers (``ple.layers``; llama.cpp takes one, a Gated DeltaNet layer)."""
    v = model.metadata.get(f"{model.architecture}.ple.layers")
    return tuple(int(x) for x in v.tolist()) if isinstance(v, GGUFArray) else ()


def ple_state_buffers(
    model: GGUFModel, kinds: list[LayerKind], pl: Placement, cp: ContextParams, n_seq: int, rs: list[Buffer]
) -> list[Buffer]:
    """The recurrent buffers ``rs`` with qwen4exp's ``cache_ple_r_l`` tensors (llama-memory-recurrent.cpp:109-114:
    ``[ple_conv_state, mem_size x (1 + n_rs_seq)]`` of the R type, F32, in the PLE layer's recurrent context, so in
    its buffer) added to the buffer of each PLE layer's buffer type; on the Meta device mirrored on every GPU."""
    width = ple_conv_state(model)
    if not width:
        return rs
    f32 = ggml_type_by_name("F32")
    per: dict[str, int] = {}
    meta: dict[str, int] = {}
    state = {k.index for k in kinds if k.state}
    for il in ple_layers(model):
        if il not in state:
            continue
        dev = pl.layer_device[il]
        buft = CPU if cp.no_kv_offload or dev is None else dev
        if buft == META:
            _add(meta, meta_alloc(pl, f"cache_ple_r_l{il}", f32, (width, n_seq)))
        else:
            per[buft] = per.get(buft, 0) + alloc_size(buft, f32, width, n_seq)
    out = []
    for b in rs:
        if b.buft == META and meta:
            merged = dict(b.slices or {})
            _add(merged, meta)
            out.append(meta_buffer("recurrent", merged))
            meta = {}
        else:
            out.append(replace(b, bytes=b.bytes + per.pop(b.buft, 0)))
    out += [Buffer("recurrent", b, n) for b, n in per.items()]
    if meta:
        out.append(meta_buffer("recurrent", meta))
    return out


# llama-model.cpp create_memory: the architectures it makes no memory module for (res = nullptr: BERT-style encoders,
# the diffusion models, CLEF's decision model) among the registered ones (``Arch.memory == "none"``): no KV cache,
# no recurrent state, whatever their layers would keep in a decoder's memory
NO_MEMORY = frozenset(a.name for a in ARCHS.values() if a.memory == "none")


def memoryless(kinds: list[LayerKind]) -> list[LayerKind]:
    """The layer kinds of a model without memory: no layer keeps a cache or a state."""
    return [replace(k, kv=False, state=False) for k in kinds]


def pooling_of(model: GGUFModel, cp: ContextParams) -> str | None:
    """The pooling type of an embedding run (None without embeddings): ``--pooling``, else the file's
    ``{arch}.pooling_type`` (llama-model.cpp:1327), else none (llama-context.cpp:218-224)."""
    if not cp.embeddings:
        return None
    if cp.pooling is not None:
        if cp.pooling not in POOLING_TYPES:
            raise InputError(f"--pooling must be one of {', '.join(POOLING_TYPES)}", "--pooling")
        return cp.pooling
    key = model.metadata.get_int(f"{model.architecture}.pooling_type")
    return POOLING_TYPES[key] if key is not None and 0 <= key < len(POOLING_TYPES) else "none"


def n_embd_out(model: GGUFModel, hp: Hparams) -> int:
    """``hparams.n_embd_out()`` (llama-hparams.cpp:136): the width of an output embedding: the file's
    ``{arch}.embedding_length_out``, the architectures' own (modern-bert's decision head: 3 scores; CLEF: 1;
    WavTokenizer's decoder: its embedding_length, beside features_length as n_embd;
    DeepSeek V4 / qwen4exp: the hyper-connection streams), else ``n_embd``."""
    md, arch = model.metadata, model.architecture
    out = md.get_int(f"{arch}.embedding_length_out") or 0
    if arch == "modern-bert" and (md.get_int(f"{arch}.decision.block_count") or 0) > 0:
        out = 3  # N_DECISION_TYPES (modern-bert.cpp:4, :41)
    elif arch == "clef":
        out = 1  # clef.cpp:22
    elif arch == "wavtokenizer-dec":
        out = md.get_int(f"{arch}.embedding_length") or 0  # n_embd_out_impl (llama-model.cpp:1348)
    elif hp.dsv4_ratios or arch == "qwen4exp":
        out = (md.get_int(f"{arch}.hyper_connection.count") or 1) * hp.n_embd
    return out if out > 0 else hp.n_embd


def output_bytes(model: GGUFModel, hp: Hparams, cp: ContextParams, n_seq: int) -> int:
    """``llama_context::output_reserve(n_seq_max)`` at the context's creation (llama-context.cpp:2118-2174): the
    logits of ``n_vocab`` floats per sequence (always: ``has_logits``), and in an embedding run ``n_embd_out``
    floats more per sequence (``has_embd``; always for T5, llama-context.cpp:2133-2137: "hacky enc-dec support")."""
    per = hp.n_vocab + (n_embd_out(model, hp) if cp.embeddings or hp.arch == "t5" else 0)
    return 4 * per * n_seq


def embedding_refusal(model: GGUFModel, sp: SimParams, n_outputs_max: int, n_ubatch: int) -> None:
    """The embedding runs llama.cpp aborts while it sizes the buffers (an :class:`InputError` worded so):

    * more sequences than outputs (``llama-embedding --attention causal`` with a micro-batch below its 256
      sequences): ``output_reserve(n_seq_max)`` asserts ``n_outputs_max <= cparams.n_outputs_max``
      (llama-context.cpp:2275);
    * mean pooling (or rank pooling over means) where ``graph_reserve`` rounds the micro-batch up to a multiple of
      the sequences (llama-context.cpp:2531-2534) but the outputs stay as asked: the ``mean`` input's tokens and
      the embeddings' rows differ and ``ggml_mul_mat`` asserts (llama-graph.cpp:3831)."""
    if sp.n_seq_max > n_outputs_max:
        raise InputError(
            f"llama.cpp aborts this embedding run: {sp.n_seq_max} sequences need {sp.n_seq_max} outputs, but the "
            f"batch holds {n_outputs_max} (llama_context::output_reserve); raise -ub/-b or lower -np",
            "-np",
        )
    mean = sp.pooling == "mean" or (sp.pooling == "rank" and classifier_pooling(model) == "mean")
    if mean and n_ubatch % sp.n_seq_max and sp.n_outputs == n_ubatch:
        raise InputError(
            f"llama.cpp aborts this embedding run: its mean pooling reserves "
            f"{-(-n_ubatch // sp.n_seq_max) * sp.n_seq_max} tokens ({n_ubatch} rounded up to a multiple of -np "
            f"{sp.n_seq_max}) for {n_ubatch} outputs (ggml_mul_mat's shapes differ); make -ub a multiple of -np",
            "-np",
        )
