"""What a tensor is, from its name.

``is_quantizable_weight`` mirrors ``tensor_allows_quantization`` in llama.cpp's
``src/llama-quant.cpp``: the tensors that ``llama-quantize`` would quantize (2-D and 3-D weight
matrices, minus norms, expert gates, positional embeddings, conv1d kernels and a few small ones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from ggufx.format.ggmltypes import bpw
from ggufx.model import GGUFModel

# substrings that llama-quant.cpp excludes for every architecture
_EXCLUDED_SUBSTRINGS = (
    "_norm.weight",
    "ffn_gate_inp.weight",
    "ffn_gate_tid2eid.weight",
    "altup",
    "laurel",
    "per_layer_model_proj",
    "ssm_conv1d",
    "shortconv.conv.weight",
    "indexer.k_proj.weight",
    "indexer.q_proj.weight",
    "time_mix_first.weight",
    "time_mix_w0.weight",
    "time_mix_w1.weight",
    "time_mix_w2.weight",
    "time_mix_v0.weight",
    "time_mix_v1.weight",
    "time_mix_v2.weight",
    "time_mix_a0.weight",
    "time_mix_a1.weight",
    "time_mix_a2.weight",
    "time_mix_g1.weight",
    "time_mix_g2.weight",
    "time_mix_decay_w1.weight",
    "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight",
    "attn_rel_b.weight",
    ".position_embd",
    "sam.pos_embd",
    "sam.neck.",
    "sam.net_",
    ".rel_pos",
    ".patch_embd",
    ".patch_merger",
    "a.rvq.codebook",
    "mm.a.code_embd",
)
_EXCLUDED_NAMES = frozenset({"position_embd.weight", "token_types.weight"})


def is_quantizable_weight(name: str, n_dims: int) -> bool:
    """Would ``llama-quantize`` (default options) quantize a tensor of this name and rank?"""
    if n_dims < 2 or not name.endswith("weight"):
        return False
    if name in _EXCLUDED_NAMES:
        return False
    return not any(s in name for s in _EXCLUDED_SUBSTRINGS)


# -- names -> (layer, role) ---------------------------------------------------------------------

_BLOCK = (
    r"^(?:(?P<tower>v|a|mm|enc|dec)\.)?blk\.(?P<layer>\d+)\.(?P<role>.+?)(?:\.(?P<kind>weight|bias|scale|scales))?$"
)
_GLOBAL = r"^(?:(?P<tower>v|a|mm|enc|dec)\.)?(?P<role>.+?)(?:\.(?P<kind>weight|bias|scale|scales))?$"
TOWERS = {"v": "vision", "a": "audio", "mm": "projector", "enc": "encoder", "dec": "decoder"}
TOWER_PREFIX = {tower: prefix for prefix, tower in TOWERS.items()}

# roles that belong to recurrent (SSM / linear attention) layers
RECURRENT_ROLES = frozenset(
    {
        "ssm_in",
        "ssm_out",
        "ssm_conv1d",
        "ssm_a",
        "ssm_d",
        "ssm_dt",
        "ssm_norm",
        "ssm_x",
        "ssm_alpha",
        "ssm_beta",
        "ssm_beta_alpha",
        "ssm_ba",
        "time_mix_key",
        "time_mix_value",
        "time_mix_receptance",
        "time_mix_output",
        "time_mix_gate",
        "shortconv.conv",
        "shortconv.in_proj",
        "shortconv.out_proj",
    }
)
ATTENTION_ROLES = frozenset(
    {
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_qkv",
        "attn_output",
        "attn_q_a",
        "attn_q_b",
        "attn_kv_a_mqa",
        "attn_kv_b",
        "attn_k_b",
        "attn_v_b",
    }
)


@dataclass(frozen=True, slots=True)
class TensorRole:
    """Where a tensor sits: ``layer`` (None outside the blocks), ``role`` (``ffn_down``,
    ``attn_v``, ``ssm_out``, ``token_embd``...), ``kind`` (weight, bias...) and ``tower`` for
    multimodal parts (vision, audio, projector) whose layers are not the language model's."""

    layer: int | None
    role: str
    kind: str
    tower: str | None = None

    @property
    def label(self) -> str:
        """The role as tables show it: ``ffn_down``, ``attn_q.bias``, ``v.attn_q`` (vision tower)."""
        prefix = f"{TOWER_PREFIX[self.tower]}." if self.tower else ""
        return f"{prefix}{self.role}{'.' + self.kind if self.kind not in ('', 'weight') else ''}"

    @property
    def is_expert(self) -> bool:
        return self.role.endswith(("_exps", "_shexp", "_chexps"))


# what companion files append to a model tensor's name: a LoRA adapter's two factors
# (src/llama-adapter.cpp) and an importance matrix's sums and counts (tools/imatrix/imatrix.cpp)
COMPANION_SUFFIXES = ("lora_a", "lora_b", "in_sum2", "counts")
_DIRECTION = r"^direction\.(\d+)$"  # a control vector's direction for layer N


@cache
def _name_patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """``_DIRECTION``, ``_BLOCK`` and ``_GLOBAL`` compiled at the first name parsed with them, not at
    import: `mem` reads names with block_role only (their compilation was 2 M instructions of its start)."""
    return re.compile(_DIRECTION), re.compile(_BLOCK), re.compile(_GLOBAL)


def parse_name(name: str) -> TensorRole:
    """``blk.12.ffn_up.weight`` -> (12, ffn_up, weight); unknown roles are kept as written.

    Companion files name their tensors after the model's: ``blk.3.attn_q.weight.lora_a`` ->
    (3, attn_q, lora_a), ``blk.3.attn_q.weight.in_sum2`` -> (3, attn_q, in_sum2), a control
    vector's ``direction.3`` -> (3, direction, "")."""
    base, dot, suffix = name.rpartition(".")
    if dot and suffix in COMPANION_SUFFIXES and base:
        r = parse_name(base.removesuffix(".weight"))
        return TensorRole(r.layer, r.role, suffix, r.tower)
    direction, block, global_ = _name_patterns()
    if m := direction.match(name):
        return TensorRole(int(m[1]), "direction", "")
    m = block.match(name)
    if m:
        tower = TOWERS.get(m["tower"]) if m["tower"] else None
        return TensorRole(int(m["layer"]), m["role"], m["kind"] or "", tower)
    m = global_.match(name)
    tower = TOWERS.get(m["tower"]) if m and m["tower"] else None
    if m is None:  # pragma: no cover - the pattern matches any string
        return TensorRole(None, name, "")
    return TensorRole(None, m["role"], m["kind"] or "", tower)


_KINDS = frozenset({"weight", "bias", "scale", "scales"})  # _BLOCK's kind group
_COMPANION_ENDS = tuple(f".{s}" for s in COMPANION_SUFFIXES)


def block_role(name: str) -> tuple[int, str] | None:
    """``(layer, role)`` of a language-model block tensor, as :func:`parse_name` gives them; None where
    it gives no layer or a tower's (vision, audio...). Without a regular expression for the plain
    ``blk.N.role[.kind]`` names (what the layer kinds read for every tensor at start-up); any other name
    that could hold a layer (a companion's, a control vector's direction, a newline) goes to parse_name."""
    # blk.N.role.kind (nearly every tensor): one split, the same answer as the partitions below for these names
    # (a kind of _KINDS is no companion's suffix; 8.3 K instructions a name there, 5.8 K here; issue 21)
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[3] in _KINDS and parts[2] and "\n" not in name:
        layer = parts[1]
        if layer.isascii() and layer.isdigit():
            return int(layer), parts[2]
    if name.startswith("blk.") and "\n" not in name and not name.endswith(_COMPANION_ENDS):
        layer, dot, rest = name[4:].partition(".")
        if dot and rest and layer.isascii() and layer.isdigit():
            # _BLOCK's lazy role: the rest less the one kind suffix it ends with, where a role is left
            role, dot, kind = rest.rpartition(".")
            return int(layer), (role if dot and role and kind in _KINDS else rest)
        if not layer.isdecimal():  # _BLOCK needs \d+ then a dot: the name is a global one
            return None
    elif not (name.startswith("direction.") or name.endswith(_COMPANION_ENDS) or "\n" in name):
        return None  # no "blk." first: a tower's block or a global tensor
    r = parse_name(name)
    return (r.layer, r.role) if r.layer is not None and r.tower is None else None


# -- where the bits go, per role ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleStat:
    """One tensor role's tensors, types, parameters and bytes."""

    role: str
    tensors: int
    types: dict[str, int]  # type -> tensors, most first
    parameters: int
    bytes: int
    share: float
    layers: int  # distinct layers the role appears in (0 for global tensors)

    @property
    def bpw(self) -> float:
        return bpw(self.bytes, self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "tensors": self.tensors,
            "types": self.types,
            "parameters": self.parameters,
            "bytes": self.bytes,
            "share": round(self.share, 6),
            "bpw": round(self.bpw, 4),
            "layers": self.layers,
        }


def role_table(model: GGUFModel) -> list[RoleStat]:
    """Per role (``ffn_down``, ``attn_v``, ``ssm_out``, ``token_embd``...): tensors, types with
    counts, parameters, bytes, share of all tensor bytes, BPW; largest first."""
    acc: dict[str, dict[str, Any]] = {}
    total = sum(t.nbytes for t in model.tensors)
    for t in model.tensors:
        r = parse_name(t.name)
        a = acc.setdefault(r.label, {"n": 0, "types": {}, "p": 0, "b": 0, "layers": set()})
        a["n"] += 1
        a["types"][t.type.name] = a["types"].get(t.type.name, 0) + 1
        a["p"] += t.n_elements
        a["b"] += t.nbytes
        if r.layer is not None:
            a["layers"].add(r.layer)
    rows = [
        RoleStat(
            role,
            a["n"],
            dict(sorted(a["types"].items(), key=lambda kv: (-kv[1], kv[0]))),
            a["p"],
            a["b"],
            a["b"] / total if total else 0.0,
            len(a["layers"]),
        )
        for role, a in acc.items()
    ]
    return sorted(rows, key=lambda r: (-r.bytes, r.role))
