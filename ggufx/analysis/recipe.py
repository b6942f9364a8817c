"""The ``llama-quantize`` recipe that reproduces a quant's per-tensor types: ``--pure``, a base
FTYPE and the fewest ``--tensor-type`` rules (first match wins, as llama-quantize applies them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ggufx.analysis.roles import TOWER_PREFIX, is_quantizable_weight, parse_name
from ggufx.analysis.summary import ggml_n_dims
from ggufx.format.ggmltypes import file_type_label, ggml_type_by_name
from ggufx.format.reader import TensorInfo
from ggufx.model import GGUFModel

# llama.cpp's llama_ftype_get_default_type (llama-quant.cpp), inverted: the FTYPE argument that
# quantizes to a type by default. Not the loader's guess in ggmltypes.file_type_for_ggml_type:
# e.g. IQ2_S is the default type of FTYPE IQ2_M, while the loader labels an IQ2_S file IQ2_S.
FTYPE_FOR_TYPE = {
    "Q4_0": "Q4_0",
    "Q4_1": "Q4_1",
    "Q5_0": "Q5_0",
    "Q5_1": "Q5_1",
    "Q8_0": "Q8_0",
    "F16": "F16",
    "BF16": "BF16",
    "Q2_K": "Q2_K",
    "Q3_K": "Q3_K_M",
    "Q4_K": "Q4_K_M",
    "Q5_K": "Q5_K_M",
    "Q6_K": "Q6_K",
    "TQ1_0": "TQ1_0",
    "TQ2_0": "TQ2_0",
    "IQ2_XXS": "IQ2_XXS",
    "IQ2_XS": "IQ2_XS",
    "IQ2_S": "IQ2_M",
    "IQ3_XXS": "IQ3_XXS",
    "IQ3_S": "IQ3_S",
    "IQ1_S": "IQ1_S",
    "IQ1_M": "IQ1_M",
    "IQ4_NL": "IQ4_NL",
    "IQ4_XS": "IQ4_XS",
    "MXFP4": "MXFP4_MOE",
}
DEFAULT_TYPE_OF_FTYPE = {
    "Q2_K_S": "Q2_K",
    "IQ3_XS": "IQ3_S",
    "Q3_K_S": "Q3_K",
    "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K",
    "Q5_K_S": "Q5_K",
    "IQ2_S": "IQ2_XS",
    "IQ3_M": "IQ3_S",
    **{v: k for k, v in FTYPE_FOR_TYPE.items()},
}
_FALLBACK = {
    "IQ1_S": "IQ4_NL",
    "IQ1_M": "IQ4_NL",
    "IQ2_XXS": "IQ4_NL",
    "IQ2_XS": "IQ4_NL",
    "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL",
    "IQ3_S": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
    "Q2_0": "Q4_0",
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "TQ1_0": "Q4_0",
    "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
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
    imatrix: str | None = None  # the --imatrix file, where the recipe quantizes with one

    def args(self) -> list[str]:
        out = ["--pure"]
        if self.requantize:
            out.append("--allow-requantize")
        if self.imatrix:
            out += ["--imatrix", self.imatrix]
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
        return {
            "base": self.ftype,
            "base_type": self.base,
            "rules": [r.to_dict() for r in self.rules],
            "output_tensor_type": self.output_tensor_type,
            "token_embedding_type": self.token_embedding_type,
            "pure": True,
            "allow_requantize": self.requantize,
            "imatrix": self.imatrix,
            "args": self.args(),
            "command": self.command(),
            "tensor_type_file": self.tensor_type_file(),
            "unreproducible": self.unreproducible,
        }


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
        candidates.append((label, DEFAULT_TYPE_OF_FTYPE[label]))
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
    groups: dict[tuple[str, ...], list[TensorInfo]] = {}
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
        key: tuple[str, ...] = ("block", r.tower or "", r.role, r.kind) if r.layer is not None else ("global", t.name)
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
            rules.append(Rule(pattern_for(exceptions[tname]), tname, len(exceptions[tname])))
        if role_type is not None:
            rules.append(
                Rule(
                    pattern_for(members, all_layers=True),
                    role_type,
                    sum(1 for t in members if t.type.name not in exceptions),
                )
            )
    return Recipe(
        ftype,
        base,
        rules,
        specials["output.weight"],
        specials["token_embd.weight"],
        any(t.type.is_quantized for t in model.tensors),
        sorted(unreproducible),
    )


def pattern_for(ts: list[TensorInfo], all_layers: bool = False) -> str:
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
    return check_types(model, rec, {t.name: t.type.name for t in model.tensors})


def check_types(model: GGUFModel, rec: Recipe, types: dict[str, str]) -> list[str]:
    """Tensors of ``model`` that the recipe would not give the type ``types`` names for them."""
    return [
        t.name
        for t in model.tensors
        if is_quantizable_weight(t.name, ggml_n_dims(t.shape))
        and t.name not in rec.unreproducible
        and _expected(rec, t) != types[t.name]
    ]
