"""Memory a model needs at a context length, as llama.cpp allocates it.

* Weights: each tensor goes where llama.cpp's loader puts it: the token embedding stays on the
  host, block ``il`` is offloaded when ``il >= n_layer - n_gpu_layers``, the output layer only when
  ``n_gpu_layers > n_layer``.
* KV cache (``llama-kv-cache.cpp``): only attention layers; per layer
  ``row_size(type_k, n_head_kv(il) * head_dim_k) + row_size(type_v, n_head_kv(il) * head_dim_v)``
  bytes per cell; ``n_ctx`` is padded to 256 (``llama-context.cpp``) and split into
  ``parallel`` streams of ``pad256(n_ctx / parallel)`` cells; sliding-window layers hold only
  ``pad256(min(n_ctx, n_swa + n_ubatch))`` cells (``llama-kv-cache-iswa.cpp``); quantized cache
  types use their block sizes.
* Recurrent state (``llama-memory-recurrent.cpp``): per recurrent layer and sequence,
  ``n_embd_r`` conv/shift values and ``n_embd_s`` state values in f32 (``llama-hparams.cpp``).
* Compute buffer: an *estimate* (logits, activations, attention scores), labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ggufx.analysis.layers import LayerKind, layer_kinds
from ggufx.analysis.roles import parse_name
from ggufx.format.ggmltypes import ggml_type_by_name
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel

MiB = 1 << 20


def pad(n: int, to: int = 256) -> int:
    return -(-n // to) * to


def row_size(type_name: str, n: int) -> int:
    """``ggml_row_size``: bytes of ``n`` elements of a type."""
    t = ggml_type_by_name(type_name)
    if n % t.block_size:
        raise ValueError(f"{n} elements are not a multiple of the {t.name} block size {t.block_size}")
    return n // t.block_size * t.type_size


@dataclass(frozen=True, slots=True)
class Hparams:
    arch: str
    n_layer: int
    n_embd: int
    n_vocab: int
    n_ctx_train: int
    n_head: list[int]
    n_head_kv: list[int]
    head_k: int
    head_v: int
    head_k_swa: int
    head_v_swa: int
    n_swa: int
    n_ff: int
    n_embd_r: int
    n_embd_s: int


def _arr(md: Any, key: str, n: int, default: int) -> list[int]:
    if key not in md:
        return [default] * n
    v = md[key]
    if isinstance(v, GGUFArray):
        items = [int(x) for x in v.tolist()]
        return (items + [items[-1] if items else default] * n)[:n]
    return [int(v)] * n


def hparams(model: GGUFModel) -> Hparams:
    md = model.metadata
    a = model.architecture or ""

    def get(suffix: str, default: int = 0) -> int:
        v = md.get_int(f"{a}.{suffix}")
        return default if v is None else v

    n_layer = get("block_count")
    n_embd = get("embedding_length")
    n_head = _arr(md, f"{a}.attention.head_count", n_layer, 0)
    n_head_kv = _arr(md, f"{a}.attention.head_count_kv", n_layer, n_head[0] if n_head else 0)
    h0 = n_head[0] or 1
    head_k = get("attention.key_length", n_embd // h0)
    head_v = get("attention.value_length", n_embd // h0)
    tokens = md["tokenizer.ggml.tokens"] if "tokenizer.ggml.tokens" in md else None
    n_vocab = get("vocab_size", len(tokens) if tokens is not None else 0)
    ff = md[f"{a}.feed_forward_length"] if f"{a}.feed_forward_length" in md else 0
    n_ff = max(ff.tolist()) if isinstance(ff, GGUFArray) and len(ff) else int(ff or 0)
    # recurrent state sizes, as llama_hparams::n_embd_r / n_embd_s
    d_conv, d_inner = get("ssm.conv_kernel"), get("ssm.inner_size")
    d_state, n_group = get("ssm.state_size"), get("ssm.group_count")
    wkv = get("wkv.head_size")
    l_cache = get("shortconv.l_cache")
    if wkv:
        n_r, n_s = get("token_shift_count", 2) * n_embd, n_embd * wkv
    elif l_cache:
        n_r, n_s = n_embd * (l_cache - 1), d_state * d_inner
    else:
        n_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
        n_s = d_state * d_inner
    return Hparams(
        a,
        n_layer,
        n_embd,
        n_vocab,
        get("context_length"),
        n_head,
        n_head_kv,
        head_k,
        head_v,
        get("attention.key_length_swa", head_k),
        get("attention.value_length_swa", head_v),
        get("attention.sliding_window"),
        n_ff,
        n_r,
        n_s,
    )


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

    @property
    def gpu_total(self) -> int:
        """Weights offloaded + KV + recurrent state + compute estimate (all on the GPU when offloaded)."""
        return self.weights_gpu + self.kv + self.kv_swa + self.recurrent + self.compute_estimate

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
    """Memory at ``ctx`` tokens (0: the training context). ``n_gpu_layers=-1`` offloads everything."""
    hp = hp or hparams(model)
    kinds = kinds if kinds is not None else layer_kinds(model)
    notes: list[str] = []
    n_ctx = pad(ctx or hp.n_ctx_train or 4096)
    parallel = max(1, parallel)
    n_ctx_seq = pad(n_ctx // parallel)
    n_ctx = n_ctx_seq * parallel
    ngl = hp.n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    if not flash_attn and ggml_type_by_name(cache_type_v).is_quantized:
        notes.append("llama.cpp needs flash attention for a quantized V cache")

    w_total = w_gpu = 0
    names = {t.name for t in model.tensors}
    if "output.weight" not in names and ngl > hp.n_layer:
        # tied embeddings: llama.cpp loads token_embd a second time, on the GPU, as the output layer
        w_gpu += sum(t.nbytes for t in model.tensors if t.name == "token_embd.weight")
        notes.append("tied embeddings: the token embedding is also loaded on the GPU as the output layer")
    for t in model.tensors:
        w_total += t.nbytes
        r = parse_name(t.name)
        if r.tower is not None:
            continue
        if r.layer is not None:
            if r.layer >= hp.n_layer - ngl:
                w_gpu += t.nbytes
        elif r.role in ("output", "output_norm") and ngl > hp.n_layer:
            w_gpu += t.nbytes

    kv = kv_swa = n_kv_layers = n_swa_layers = 0
    swa_cells = pad(min(n_ctx_seq, hp.n_swa + n_ubatch)) if hp.n_swa else 0
    for k in kinds:
        if not k.is_attention:
            continue
        i = k.index
        head_k = hp.head_k_swa if k.is_swa else hp.head_k
        head_v = hp.head_v_swa if k.is_swa else hp.head_v
        n_kv = hp.n_head_kv[i] if i < len(hp.n_head_kv) else 0
        if n_kv == 0:
            continue
        per_cell = row_size(cache_type_k, n_kv * head_k) + row_size(cache_type_v, n_kv * head_v)
        if k.is_swa:
            kv_swa += per_cell * swa_cells * parallel
            n_swa_layers += 1
        else:
            kv += per_cell * n_ctx_seq * parallel
            n_kv_layers += 1

    rec_layers = sum(1 for k in kinds if k.is_recurrent)
    recurrent = (
        rec_layers * (row_size("f32", hp.n_embd_r) + row_size("f32", hp.n_embd_s)) * parallel if rec_layers else 0
    )

    # compute buffer: an estimate, not llama.cpp's graph allocator
    n_head_max = max(hp.n_head) if hp.n_head else 0
    logits = n_ubatch * hp.n_vocab * 4
    acts = n_ubatch * max(hp.n_ff, 4 * hp.n_embd) * 4 * 3
    scores = n_head_max * n_ubatch * (256 if flash_attn else n_ctx_seq) * 4
    compute = logits + acts + scores
    return MemoryEstimate(
        n_ctx,
        cache_type_k,
        cache_type_v,
        parallel,
        n_ubatch,
        flash_attn,
        ngl,
        w_total,
        w_gpu,
        max(0, w_total - w_gpu),
        kv,
        n_kv_layers,
        kv_swa,
        n_swa_layers,
        n_ctx_seq if n_kv_layers else 0,
        swa_cells if n_swa_layers else 0,
        recurrent,
        rec_layers,
        compute,
        notes,
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
    **kw: Any,
) -> list[Fit]:
    """The largest context (a multiple of 256) whose GPU total fits ``budget`` bytes, per cache type."""
    hp = hparams(model)
    kinds = layer_kinds(model)
    top = pad(max_ctx or hp.n_ctx_train or 131072)
    out = []
    for ct in cache_types:

        def total(n: int) -> int:
            return estimate(model, n, cache_type_k=ct, cache_type_v=ct, kinds=kinds, hp=hp, **kw).gpu_total

        lo, hi = 0, top // 256
        while lo < hi:  # largest m with total(256 m) <= budget
            mid = (lo + hi + 1) // 2
            if total(mid * 256) <= budget:
                lo = mid
            else:
                hi = mid - 1
        n = lo * 256
        out.append(Fit(ct, n, total(n) if n else total(256), n == top))
    return out


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
