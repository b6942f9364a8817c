"""What each layer of a model is: attention (full or sliding-window), recurrent (Mamba, Mamba-2,
Gated DeltaNet, RWKV, short convolution), dense or mixture-of-experts feed-forward.

The model's own keys decide, as llama.cpp's loader reads them: ``{arch}.attention.recurrent_layers``
and ``{arch}.full_attention_interval`` (Qwen3-Next, Qwen 3.5), per-layer
``{arch}.attention.head_count_kv`` arrays (a 0 marks a layer without attention),
``{arch}.attention.sliding_window`` with ``{arch}.attention.sliding_window_pattern`` or llama.cpp's
per-architecture default pattern. The tensors each layer has are the cross-check.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from ggufx.analysis.memory.archs import arch_of
from ggufx.analysis.memory.hparams import LLAMA_MAX_LAYERS, n_loops, n_nextn, sliding_window
from ggufx.analysis.roles import ATTENTION_ROLES, RECURRENT_ROLES, block_role, parse_name
from ggufx.errors import ValidationError
from ggufx.format.ggmltypes import bpw
from ggufx.format.values import GGUFArray
from ggufx.model import GGUFModel


@dataclass(frozen=True, slots=True)
class LayerKind:
    """One block's kind as llama.cpp decides it: its mixer and feed-forward."""

    index: int
    mixer: (
        str  # "attention", "attention (SWA)", "recurrent (Gated DeltaNet)", "attention + recurrent (Mamba-2)", "none"
    )
    ffn: str  # "dense", "MoE", "none"
    n_head_kv: int | None = None
    kv: bool = False  # has its own KV cache (llama.cpp's filter and has_kv: not a NextN layer, not a shared-KV one)
    state: bool = False  # keeps a recurrent state (the recurrent memory's filter)
    nextn: bool = False  # a NextN/MTP layer (the last nextn_predict_layers blocks): no cache, skipped by the loader

    @property
    def is_attention(self) -> bool:
        return self.mixer.startswith("attention")

    @property
    def is_swa(self) -> bool:
        return self.mixer == "attention (SWA)"

    @property
    def is_recurrent(self) -> bool:
        return self.mixer.startswith("recurrent")

    @property
    def label(self) -> str:
        return self.mixer if self.ffn in ("dense", "none") else f"{self.mixer} + {self.ffn}"


def _per_layer(model: GGUFModel, suffix: str, n: int) -> list[int] | None:
    arch = model.architecture
    key = f"{arch}.{suffix}"
    if key not in model.metadata:
        return None
    v = model.metadata[key]
    if isinstance(v, GGUFArray):
        if len(v) > LLAMA_MAX_LAYERS:
            raise ValidationError(
                model.path,
                model.metadata.kv(key).offset,
                f"{key} has {len(v)} entries; llama.cpp allows at most {LLAMA_MAX_LAYERS}",
            )
        items = v.tolist()
        if not all(isinstance(x, int) for x in items):  # bools are ints: recurrent_layers is a bool array
            raise ValidationError(model.path, model.metadata.kv(key).offset, f"{key} must hold integers")
        return [int(x) for x in items[:n]] + [0] * (n - len(items)) if items else None
    if isinstance(v, (int, bool)):
        return [int(v)] * n
    return None


def swa_layers(model: GGUFModel, n: int) -> list[bool]:
    """Which layers use the sliding window, as ``llama_hparams::set_swa_pattern`` decides."""
    arch = model.architecture or ""
    md = model.metadata
    if not sliding_window(model, n):
        return [False] * n
    a = arch_of(arch)
    rule = a.swa if a else None
    n_main = max(n - n_nextn(model), 0)  # set_swa_pattern marks the NextN layers dense
    if rule is not None and rule.attention_layers:  # lfm2: every attention layer
        rec = recurrent_layers(model, n, {})
        return [not rec[i] and i < n_main for i in range(n)]
    key = f"{arch}.attention.sliding_window_pattern"
    if key in md and isinstance(md[key], GGUFArray):
        items = [bool(x) for x in md[key].tolist()]
        return (items + [False] * n)[:n]
    n_pattern, dense_first = (rule.pattern, rule.dense_first) if rule is not None else (0, False)
    if key in md and md.get_int(key) is not None:
        n_pattern = md.get_int(key)  # type: ignore[assignment]
    out = []
    for il in range(n):
        if il >= n_main:
            out.append(False)
        elif dense_first:
            out.append(n_pattern == 0 or il % n_pattern != 0)
        else:
            out.append(n_pattern == 0 or il % n_pattern < n_pattern - 1)
    return out


def recurrent_layers(model: GGUFModel, n: int, roles_by_layer: dict[int, set[str]]) -> list[bool]:
    """Which layers keep a recurrent state: the registry's rule (:class:`~ggufx.analysis.memory.archs.Recurrent`)
    for a registered architecture, the model's own keys (or, failing those, its tensors) otherwise."""
    arch = model.architecture or ""
    md = model.metadata
    a = arch_of(arch)
    rule = a.recurrent.rule if a and a.recurrent else ""
    n_main = max(n - n_nextn(model), 0)
    if rule in ("all", "every_layer"):
        return [True] * n
    if a is not None and not rule:
        return [False] * n
    if rule in ("no_kv_heads", "no_kv_heads_no_ffn"):
        kv = _per_layer(model, "attention.head_count_kv", n)
        if kv is None:  # n_head_kv defaults to n_head: no layer without heads
            kv = _per_layer(model, "attention.head_count", n) or [1] * n
        ff = _per_layer(model, "feed_forward_length", n) or [0] * n
        no_ffn = rule == "no_kv_heads_no_ffn"
        return [i < n_main and kv[i] == 0 and (not no_ffn or ff[i] == 0) for i in range(n)]
    explicit = _per_layer(model, "attention.recurrent_layers", n)
    if explicit is not None:
        return [bool(x) for x in explicit]
    interval = md.get_int(f"{arch}.full_attention_interval")
    if interval is None and rule == "array_or_interval":  # the loader's default (minimax-01.cpp:13-14)
        interval = a.recurrent.interval if a and a.recurrent else 0
    if interval:
        return [i < n_main and (i + 1) % interval != 0 for i in range(n)]
    return [bool(roles_by_layer.get(i, set()) & RECURRENT_ROLES) for i in range(n)]


def _attention_filter(model: GGUFModel, n: int, rec: list[bool]) -> list[bool]:
    """The layers with attention: not recurrent, except falcon-h1 (every layer both) and nemotron_h
    (neither for its MLP layers: n_ff > 0, llama-model.cpp:2698-2703)."""
    a = arch_of(model.architecture)
    rule = a.recurrent.rule if a and a.recurrent else ""
    if rule == "every_layer":
        return [True] * n
    if rule == "no_kv_heads_no_ffn":
        ff = _per_layer(model, "feed_forward_length", n) or [0] * n
        return [not rec[i] and ff[i] == 0 for i in range(n)]
    return [not r for r in rec]


# per model, held weakly (a model collected takes its entry along): --fit's searches ask for the kinds
# of the same model's layers once per placement
_KINDS: weakref.WeakKeyDictionary[GGUFModel, tuple[LayerKind, ...]] = weakref.WeakKeyDictionary()


def layer_kinds(model: GGUFModel) -> list[LayerKind]:
    """One :class:`LayerKind` per block of the language model."""
    cached = _KINDS.get(model)
    if cached is None:
        cached = _KINDS[model] = tuple(_layer_kinds(model))
    return list(cached)


def _layer_kinds(model: GGUFModel) -> list[LayerKind]:
    roles_by_layer: dict[int, set[str]] = {}
    for t in model.tensors:
        lr = block_role(t.name)  # parse_name's layer and role, without its regular expression per tensor
        if lr is not None:
            roles_by_layer.setdefault(lr[0], set()).add(lr[1])
    n = model.metadata.get_int(f"{model.architecture}.block_count") or (
        max(roles_by_layer) + 1 if roles_by_layer else 0
    )
    if (loops := n_loops(model)) > 1:  # nanbeige: the later passes reuse the blocks' tensors, with caches of their own
        roles_by_layer |= {il + k * n: roles_by_layer.get(il, set()) for k in range(1, loops) for il in range(n)}
        n *= loops
    if not 0 <= n <= LLAMA_MAX_LAYERS:
        key = f"{model.architecture}.block_count"
        raise ValidationError(
            model.path,
            model.metadata.kv(key).offset if key in model.metadata else None,
            f"{n} layers: llama.cpp supports at most {LLAMA_MAX_LAYERS}",
        )
    a = arch_of(model.architecture)
    rec = recurrent_layers(model, n, roles_by_layer)
    attn = _attention_filter(model, n, rec)
    swa = swa_layers(model, n)
    kv = _per_layer(model, "attention.head_count_kv", n)
    flavour = a.recurrent.flavour if a and a.recurrent else ""
    n_main = max(n - n_nextn(model), 0)
    kv_from = a.kv_from_start if a else -1
    if a is not None and a.name == "gemma4":  # n_layer - attention.shared_kv_layers (gemma4.cpp load_arch_hparams)
        kv_from = n - max(model.metadata.get_int("gemma4.attention.shared_kv_layers") or 0, 0)
    out = []
    for i in range(n):
        roles = roles_by_layer.get(i, set())
        nextn = i >= n_main
        recurrent = f"recurrent ({flavour})" if flavour else "recurrent"
        if rec[i] and attn[i]:
            mixer = f"attention + {recurrent}"
        elif rec[i]:
            mixer = recurrent
        elif a is not None and not attn[i]:
            mixer = "none"
        elif roles & ATTENTION_ROLES or not roles:
            mixer = "attention (SWA)" if swa[i] else "attention"
        else:
            mixer = "none"
        if any(r.endswith("_exps") for r in roles):
            ffn = "MoE"
        elif roles & {"ffn_up", "ffn_down", "ffn_gate", "ffn_gate_up"}:
            ffn = "dense"
        else:
            ffn = "none"
        # deci: every layer has its K and V cache tensors, empty where the layer has no KV heads (no
        # layer filter in its cache, deci.cpp); without flash attention each V is padded to the widest
        attends = mixer.startswith("attention") or (a is not None and a.kv_every_layer)
        has_kv = attends and (not nextn or (a is not None and a.nextn_kv)) and (kv_from < 0 or i < kv_from)
        out.append(LayerKind(i, mixer, ffn, kv[i] if kv else None, has_kv, rec[i], nextn))
    return out


# -- the layer grid: kind and types per layer -----------------------------------------------


@dataclass(frozen=True, slots=True)
class LayerRow:
    """One row of the layer grid: layers first..last, alike in kind and types."""

    first: int
    last: int  # rows with identical kind and types are collapsed into first..last
    kind: str
    types: dict[str, str]  # role -> type ("" when the layer has no such tensor)
    parameters: int
    bytes: int

    @property
    def bpw(self) -> float:
        return bpw(self.bytes, self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "kind": self.kind,
            "types": self.types,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "bpw": round(self.bpw, 4),
        }


@dataclass(slots=True)
class LayerGrid:
    """The layer grid: one row per run of alike layers, and every layer's kind."""

    roles: list[str]
    rows: list[LayerRow]  # collapsed
    kinds: list[LayerKind] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Layers per kind: the model's mixers, or a companion file's row kinds."""
        out: dict[str, int] = {}
        for k in self.kinds:
            out[k.mixer] = out.get(k.mixer, 0) + 1
        if not self.kinds:
            for r in self.rows:
                out[r.kind] = out.get(r.kind, 0) + r.last - r.first + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "roles": self.roles,
            "layers": [r.to_dict() for r in self.rows],
            "layer_kinds": self.counts(),
            "per_layer": [
                {"layer": k.index, "mixer": k.mixer, "ffn": k.ffn, "n_head_kv": k.n_head_kv} for k in self.kinds
            ],
        }


def layer_grid(model: GGUFModel, collapse: bool = True, kind: str = "model") -> LayerGrid:
    """One row per block (identical neighbours collapsed): kind and the type of each weight role.

    ``kind`` is the file's (:func:`ggufx.analysis.filekind.file_kind`): a companion file's grid is
    the one of :func:`companion_grid`."""
    if kind != "model":
        return companion_grid(model, kind, collapse)
    kinds = layer_kinds(model)
    roles: list[str] = []
    per: dict[int, dict[str, str]] = {}
    size: dict[int, list[int]] = {}
    for t in model.tensors:
        r = parse_name(t.name)
        if r.layer is None or r.tower is not None:
            continue
        s = size.setdefault(r.layer, [0, 0])
        s[0] += t.n_elements
        s[1] += t.nbytes
        if r.kind not in ("weight", ""):
            continue
        if r.role not in roles:
            roles.append(r.role)
        per.setdefault(r.layer, {})[r.role] = t.type.name
    rows: list[LayerRow] = []
    for k in kinds:
        types = {role: per.get(k.index, {}).get(role, "") for role in roles}
        p, b = size.get(k.index, [0, 0])
        if collapse and rows and rows[-1].kind == k.label and rows[-1].types == types and rows[-1].last == k.index - 1:
            prev = rows[-1]
            rows[-1] = LayerRow(prev.first, k.index, prev.kind, types, prev.parameters + p, prev.bytes + b)
        else:
            rows.append(LayerRow(k.index, k.index, k.label, types, p, b))
    return LayerGrid(roles, rows, kinds)


# what a row of a companion file's grid is, by the file's kind
_COMPANION_ROW = {"adapter": "LoRA", "imatrix": "imatrix entries", "control-vector": "control vector"}


def companion_grid(model: GGUFModel, kind: str, collapse: bool = True) -> LayerGrid:
    """The layers a companion file holds: a projector's encoder blocks (``v.blk.N`` / ``a.blk.N``,
    one group per tower), or the model layers an adapter, an importance matrix or a control vector
    covers. The cells are the tensors' types, per role; an adapter's two factors are their own
    columns (``attn_q.lora_a``, ``attn_q.lora_b``), an imatrix's sums stand for their pair."""
    cells: dict[tuple[str | None, int], dict[str, str]] = {}
    size: dict[tuple[str | None, int], list[int]] = {}
    roles: list[str] = []
    for t in model.tensors:
        r = parse_name(t.name)
        if r.layer is None or r.kind == "counts":
            continue
        key = (r.tower, r.layer)
        s = size.setdefault(key, [0, 0])
        s[0] += t.n_elements
        s[1] += t.nbytes
        if r.kind not in ("weight", "", "lora_a", "lora_b", "in_sum2"):
            continue
        role = f"{r.role}.{r.kind}" if r.kind in ("lora_a", "lora_b") else r.role
        if role not in roles:
            roles.append(role)
        cells.setdefault(key, {})[role] = t.type.name
    rows: list[LayerRow] = []
    for tower, layer in sorted(size, key=lambda k: (k[0] or "", k[1])):
        label = f"{tower} encoder" if tower else _COMPANION_ROW.get(kind, kind)
        types = {role: cells.get((tower, layer), {}).get(role, "") for role in roles}
        p, b = size[(tower, layer)]
        prev = rows[-1] if rows else None
        if collapse and prev and prev.kind == label and prev.types == types and prev.last == layer - 1:
            rows[-1] = LayerRow(prev.first, layer, label, types, prev.parameters + p, prev.bytes + b)
        else:
            rows.append(LayerRow(layer, layer, label, types, p, b))
    return LayerGrid(roles, rows)
