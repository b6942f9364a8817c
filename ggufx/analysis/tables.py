"""Where the bits go: per-role and per-layer tables, the recipe that reproduces a quant with
``llama-quantize``, and the difference between two quants. Pure functions of parsed headers.

BPW everywhere is the whole-model definition applied to the subset: 8 x bytes / elements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ggufx.format.ggmltypes import file_type_label, ggml_type_by_name
from ggufx.analysis.layers import LayerKind, layer_kinds
from ggufx.model import GGUFModel
from ggufx.format.reader import TensorInfo
from ggufx.analysis.roles import TOWER_PREFIX, is_quantizable_weight, parse_name
from ggufx.analysis.summary import summarize, ggml_n_dims


def _bpw(nbytes: int, n: int) -> float:
    return 8.0 * nbytes / n if n else 0.0


# -- roles ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RoleStat:
    role: str
    tensors: int
    types: dict[str, int]  # type -> tensors, most first
    parameters: int
    bytes: int
    share: float
    layers: int  # distinct layers the role appears in (0 for global tensors)

    @property
    def bpw(self) -> float:
        return _bpw(self.bytes, self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "tensors": self.tensors, "types": self.types, "parameters": self.parameters,
                "bytes": self.bytes, "share": round(self.share, 6), "bpw": round(self.bpw, 4), "layers": self.layers}


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
    rows = [RoleStat(role, a["n"], dict(sorted(a["types"].items(), key=lambda kv: (-kv[1], kv[0]))), a["p"], a["b"],
                     a["b"] / total if total else 0.0, len(a["layers"])) for role, a in acc.items()]
    return sorted(rows, key=lambda r: (-r.bytes, r.role))


# -- layers --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LayerRow:
    first: int
    last: int  # rows with identical kind and types are collapsed into first..last
    kind: str
    types: dict[str, str]  # role -> type ("" when the layer has no such tensor)
    parameters: int
    bytes: int

    @property
    def bpw(self) -> float:
        return _bpw(self.bytes, self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "last": self.last, "kind": self.kind, "types": self.types,
                "parameters": self.parameters, "bytes": self.bytes, "bpw": round(self.bpw, 4)}


@dataclass(slots=True)
class LayerGrid:
    roles: list[str]
    rows: list[LayerRow]  # collapsed
    kinds: list[LayerKind] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for k in self.kinds:
            out[k.mixer] = out.get(k.mixer, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"roles": self.roles, "layers": [r.to_dict() for r in self.rows], "layer_kinds": self.counts(),
                "per_layer": [{"layer": k.index, "mixer": k.mixer, "ffn": k.ffn, "n_head_kv": k.n_head_kv} for k in self.kinds]}


def layer_grid(model: GGUFModel, collapse: bool = True) -> LayerGrid:
    """One row per block (identical neighbours collapsed): kind and the type of each weight role."""
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


# -- recipe --------------------------------------------------------------------------------------

# llama.cpp's llama_ftype_get_default_type (llama-quant.cpp), inverted: the FTYPE argument that
# quantizes to a type by default. Not the loader's guess in ggmltypes.file_type_for_ggml_type:
# e.g. IQ2_S is the default type of FTYPE IQ2_M, while the loader labels an IQ2_S file IQ2_S.
FTYPE_FOR_TYPE = {
    "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "F16": "F16", "BF16": "BF16",
    "Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K", "TQ1_0": "TQ1_0",
    "TQ2_0": "TQ2_0", "IQ2_XXS": "IQ2_XXS", "IQ2_XS": "IQ2_XS", "IQ2_S": "IQ2_M", "IQ3_XXS": "IQ3_XXS",
    "IQ3_S": "IQ3_S", "IQ1_S": "IQ1_S", "IQ1_M": "IQ1_M", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "MXFP4": "MXFP4_MOE",
}
DEFAULT_TYPE_OF_FTYPE = {
    "Q2_K_S": "Q2_K", "IQ3_XS": "IQ3_S", "Q3_K_S": "Q3_K", "Q3_K_L": "Q3_K", "Q4_K_S": "Q4_K", "Q5_K_S": "Q5_K",
    "IQ2_S": "IQ2_XS", "IQ3_M": "IQ3_S", **{v: k for k, v in FTYPE_FOR_TYPE.items()},
}
_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q2_0": "Q4_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0",
    "TQ1_0": "Q4_0", "TQ2_0": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}


def fallback(type_name: str, ne0: int) -> str:
    """``tensor_type_fallback`` of llama-quant.cpp: the type a tensor of ``ne0`` columns really gets."""
    t = ggml_type_by_name(type_name)
    if ne0 % t.block_size == 0:
        return type_name
    ret = _FALLBACK.get(type_name, type_name)
    if ne0 % ggml_type_by_name(ret).block_size:
        ret = "F16"
    return ret


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str
    type: str
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "type": self.type, "tensors": self.tensors}


@dataclass(slots=True)
class Recipe:
    """A ``llama-quantize --pure`` command that reproduces a file's per-tensor types."""

    ftype: str  # the FTYPE argument, e.g. Q4_K_M
    base: str  # the type it quantizes to by default, e.g. Q4_K
    rules: list[Rule]
    output_tensor_type: str | None
    token_embedding_type: str | None
    requantize: bool
    unreproducible: list[str]  # tensors llama-quantize would not give these types

    def args(self) -> list[str]:
        out = ["--pure"]
        if self.requantize:
            out.append("--allow-requantize")
        if self.output_tensor_type:
            out += ["--output-tensor-type", self.output_tensor_type.lower()]
        if self.token_embedding_type:
            out += ["--token-embedding-type", self.token_embedding_type.lower()]
        for r in self.rules:
            out += ["--tensor-type", f"{r.pattern}={r.type.lower()}"]
        return out

    def command(self, src: str = "SOURCE.gguf", dst: str = "OUT.gguf") -> str:
        import shlex

        return shlex.join(["llama-quantize", *self.args(), src, dst, self.ftype])

    def tensor_type_file(self) -> str:
        """The file ``llama-quantize --tensor-type-file`` reads: one PATTERN=TYPE per line."""
        return "".join(f"{r.pattern}={r.type.lower()}\n" for r in self.rules)

    def to_dict(self) -> dict[str, Any]:
        return {"base": self.ftype, "base_type": self.base, "rules": [r.to_dict() for r in self.rules],
                "output_tensor_type": self.output_tensor_type, "token_embedding_type": self.token_embedding_type,
                "pure": True, "allow_requantize": self.requantize, "args": self.args(), "command": self.command(),
                "unreproducible": self.unreproducible}


def _ranges(layers: list[int]) -> str:
    """A regex alternation for layer numbers: (3|4|5|12)."""
    return "(" + "|".join(str(n) for n in sorted(layers)) + ")"


def recipe(model: GGUFModel) -> Recipe:
    """The fewest ``--tensor-type`` rules (first match wins, as llama-quantize applies them) that,
    with ``--pure`` and a base FTYPE, give every quantizable tensor the type it has in this file.

    Every base the file suggests is tried (its ``general.file_type`` and each quantized type it
    uses); the one needing the fewest rules wins, the file's own label on ties."""
    quantizable = [t for t in model.tensors if is_quantizable_weight(t.name, ggml_n_dims(t.shape))]
    label = file_type_label(model.metadata.get_int("general.file_type"))
    candidates: list[tuple[str, str]] = []
    if label in DEFAULT_TYPE_OF_FTYPE:
        candidates.append((label, DEFAULT_TYPE_OF_FTYPE[label]))  # type: ignore[arg-type]
    for name in sorted({t.type.name for t in quantizable if t.type.is_quantized}):
        if name in FTYPE_FOR_TYPE and all(name != c[1] for c in candidates):
            candidates.append((FTYPE_FOR_TYPE[name], name))
    if not candidates:
        candidates.append(("Q8_0", "Q8_0"))
    best = None
    for ftype, base in candidates:
        rec = _recipe_for(model, quantizable, ftype, base)
        cost = len(rec.rules) + (rec.output_tensor_type is not None) + (rec.token_embedding_type is not None)
        if best is None or cost < best[0]:
            best = (cost, rec)
    return best[1]  # type: ignore[index]


def _recipe_for(model: GGUFModel, quantizable: list[TensorInfo], ftype: str, base: str) -> Recipe:
    specials: dict[str, str | None] = {"output.weight": None, "token_embd.weight": None}
    groups: dict[tuple, list[TensorInfo]] = {}
    unreproducible = []
    for t in quantizable:
        if t.name in specials:
            if t.type.name != fallback(base, t.shape[0]):
                specials[t.name] = t.type.name
            continue
        if not (t.type.is_quantized or t.type.name in ("F16", "BF16", "F32")):
            unreproducible.append(t.name)
            continue
        r = parse_name(t.name)
        # block tensors group by role (one rule may cover all layers); others stand alone
        key = ("block", r.tower or "", r.role, r.kind) if r.layer is not None else ("global", t.name)
        groups.setdefault(key, []).append(t)
    rules: list[Rule] = []
    for key in sorted(groups):
        members = groups[key]
        # the role-wide type that explains most members (None: the base, no rule at all)
        options: list[str | None] = [None, *sorted({t.type.name for t in members})]

        def explained(opt: str | None) -> int:
            return sum(1 for t in members if fallback(opt or base, t.shape[0]) == t.type.name)

        role_type = max(options, key=explained)  # max keeps the first (None) on ties
        exceptions: dict[str, list[TensorInfo]] = {}
        for t in members:
            if fallback(role_type or base, t.shape[0]) != t.type.name:
                exceptions.setdefault(t.type.name, []).append(t)
        for tname in sorted(exceptions):
            rules.append(Rule(_pattern(exceptions[tname]), tname, len(exceptions[tname])))
        if role_type is not None:
            rules.append(Rule(_pattern(members, all_layers=True), role_type,
                              sum(1 for t in members if t.type.name not in exceptions)))
    return Recipe(ftype, base, rules, specials["output.weight"], specials["token_embd.weight"],
                  any(t.type.is_quantized for t in model.tensors), sorted(unreproducible))


def _pattern(ts: list[TensorInfo], all_layers: bool = False) -> str:
    """A regex (searched, as llama-quantize does) matching exactly these tensors' names
    (``all_layers``: every layer of their role, written ``\\d+``)."""
    parsed = [parse_name(t.name) for t in ts]
    r0 = parsed[0]
    if r0.layer is None:
        return "^(?:" + "|".join(re.escape(t.name) for t in ts) + ")$"
    prefix = re.escape(TOWER_PREFIX[r0.tower] + ".") if r0.tower else ""
    kind = rf"\.{r0.kind}" if r0.kind else ""
    layers = sorted({p.layer for p in parsed if p.layer is not None})
    numbers = r"\d+" if all_layers else _ranges(layers)
    return f"^{prefix}blk\\.{numbers}\\.{re.escape(r0.role)}{kind}$"


def _expected(rec: Recipe, t: TensorInfo) -> str:
    """The type llama-quantize gives ``t`` under ``rec`` (to check a recipe against a file)."""
    if t.name == "output.weight" and rec.output_tensor_type:
        return rec.output_tensor_type
    if t.name == "token_embd.weight" and rec.token_embedding_type:
        return rec.token_embedding_type
    for r in rec.rules:
        if re.search(r.pattern, t.name):
            return fallback(r.type, t.shape[0])
    return fallback(rec.base, t.shape[0])


def check_recipe(model: GGUFModel, rec: Recipe) -> list[str]:
    """Tensors whose type the recipe would not reproduce (empty when it is exact)."""
    return [t.name for t in model.tensors if is_quantizable_weight(t.name, ggml_n_dims(t.shape))
            and t.name not in rec.unreproducible and _expected(rec, t) != t.type.name]


# -- diff ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TypeChange:
    role: str
    layers: str  # "12-16" or "" for global tensors
    before: str
    after: str
    tensors: int

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "layers": self.layers, "before": self.before, "after": self.after, "tensors": self.tensors}


def layer_ranges(layers: list[int]) -> str:
    """[12, 13, 14, 16] -> "12-14, 16"."""
    out: list[str] = []
    for n in sorted(set(layers)):
        if out and (parts := out[-1].split("-")) and int(parts[-1]) == n - 1:
            out[-1] = f"{parts[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)


@dataclass(slots=True)
class ModelDiff:
    a: str
    b: str
    type_changes: list[TypeChange]
    added: list[str]
    removed: list[str]
    shape_changes: list[str]
    metadata_added: list[str]
    metadata_removed: list[str]
    metadata_changed: list[str]
    a_bpw: float
    b_bpw: float
    a_bytes: int
    b_bytes: int
    a_file_bytes: int
    b_file_bytes: int

    @property
    def identical_tensors(self) -> bool:
        return not (self.type_changes or self.added or self.removed or self.shape_changes)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "type_changes": [c.to_dict() for c in self.type_changes],
                "tensors_added": self.added, "tensors_removed": self.removed, "shape_changes": self.shape_changes,
                "metadata": {"added": self.metadata_added, "removed": self.metadata_removed, "changed": self.metadata_changed},
                "bpw": {"a": round(self.a_bpw, 4), "b": round(self.b_bpw, 4), "change": round(self.b_bpw - self.a_bpw, 4)},
                "tensor_bytes": {"a": self.a_bytes, "b": self.b_bytes, "change": self.b_bytes - self.a_bytes},
                "file_bytes": {"a": self.a_file_bytes, "b": self.b_file_bytes, "change": self.b_file_bytes - self.a_file_bytes},
                "identical_tensors": self.identical_tensors}


def diff(a: GGUFModel, b: GGUFModel) -> ModelDiff:
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    groups: dict[tuple[str, str, str], list[int | None]] = {}
    shapes = []
    for name in ta.keys() & tb.keys():
        x, y = ta[name], tb[name]
        if x.shape != y.shape:
            shapes.append(name)
        if x.type.name != y.type.name:
            r = parse_name(name)
            groups.setdefault((r.label, x.type.name, y.type.name), []).append(r.layer)
    changes = []
    for (role, before, after), layers in sorted(groups.items()):
        nums = [n for n in layers if n is not None]
        changes.append(TypeChange(role, layer_ranges(nums), before, after, len(layers)))
    ma, mb = a.metadata, b.metadata
    changed = []
    for k in ma.keys() & mb.keys():
        ka, kb = ma.kv(k), mb.kv(k)
        if ka.type != kb.type or bytes(a.header.buf[ka.offset:ka.end]) != bytes(b.header.buf[kb.offset:kb.end]):
            changed.append(k)
    sa, sb = summarize(a), summarize(b)
    return ModelDiff(a.path, b.path, changes, sorted(tb.keys() - ta.keys()), sorted(ta.keys() - tb.keys()), sorted(shapes),
                     sorted(mb.keys() - ma.keys()), sorted(ma.keys() - mb.keys()), sorted(changed),
                     sa.bpw, sb.bpw, sa.tensor_bytes, sb.tensor_bytes, sa.file_bytes, sb.file_bytes)


__all__ = ["RoleStat", "role_table", "LayerGrid", "layer_grid", "Recipe", "recipe", "check_recipe", "fallback",
           "ModelDiff", "diff", "layer_ranges"]
