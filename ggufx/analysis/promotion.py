"""Spend a bit budget on the most important tensors: the ``--tensor-type`` promotions, chosen from an
importance matrix, that raise a quant to a target BPW, as a ``llama-quantize`` command.

The rule (a greedy knapsack over each tensor's ladder of types):

* A tensor's ladder is :data:`LADDER` as llama-quantize really applies it to that tensor: a type whose
  block does not divide ``ne[0]`` falls back (``tensor_type_fallback``, src/llama-quant.cpp:390), so
  a 576-column matrix asked for Q4_K gets Q5_0. Only the types above the tensor's current size are
  steps; equal sizes keep the first type of the ladder.
* A step from ``a`` to ``b`` bits per weight is worth ``importance x (4^-a - 4^-b)``: the mean
  squared input of the matrix (llama-imatrix's statistic) times the fall in its weights' squared
  quantization error, taken as 4^-bpw (the error halves with every added bit). Divided by the bits
  the step adds per weight, that is its value per extra bit; it shrinks along a ladder, so steps are
  taken best first, one at a time, and a step that would exceed the budget ends its tensor's climb.
* BPW is llama.cpp's: 8 x the ``ggml_nbytes`` of all tensors / all their elements
  (src/llama-model-loader.cpp:1806). The budget is never exceeded.

The command reproduces every other tensor's type exactly (:func:`ggufx.analysis.recipe.recipe`,
``--pure``), with the promotions as the first ``--tensor-type`` rules: llama-quantize takes the first
pattern that matches (``llama_tensor_get_type``, src/llama-quant.cpp:724-740), and a matched pattern
is applied as given, then the same fallback."""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from ggufx.analysis.memory.buffers import MiB
from ggufx.analysis.recipe import Recipe, Rule, check_types, fallback, pattern_for, recipe
from ggufx.analysis.roles import is_quantizable_weight, parse_name
from ggufx.analysis.summary import ggml_n_dims
from ggufx.format.ggmltypes import ggml_type_by_name
from ggufx.format.reader import TensorInfo
from ggufx.model import GGUFModel

# llama-quantize's k-quant and i-quant types by size (bits per weight); at equal size the i-quant,
# the better of the two, comes first (IQ3_S before Q3_K, both 3.4375)
LADDER = (
    "IQ1_S",
    "IQ1_M",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "Q2_K",
    "IQ3_XXS",
    "IQ3_S",
    "Q3_K",
    "IQ4_XS",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "Q8_0",
)
RULE = (
    "greedy: each step up a tensor's ladder (IQ1_S ... Q8_0, after llama-quantize's block-size "
    "fallback) is worth importance x (4^-bpw_from - 4^-bpw_to) per added bit per weight; best "
    "steps first, never past the budget"
)


@dataclass(frozen=True, slots=True)
class Importance:
    """A tensor's importance (mean of in_sum2 / counts) and its rank within its role (1 = most)."""

    value: float
    rank: int
    role_count: int


@dataclass(frozen=True, slots=True)
class Promotion:
    name: str
    importance: Importance
    from_type: str
    to_type: str
    added_bytes: int

    def to_dict(self) -> dict[str, Any]:
        r = parse_name(self.name)
        return {
            "name": self.name,
            "role": r.label,
            "layer": r.layer,
            "importance": self.importance.value,
            "rank": self.importance.rank,
            "role_count": self.importance.role_count,
            "from": self.from_type,
            "to": self.to_type,
            "added_bytes": self.added_bytes,
            "added_mib": round(self.added_bytes / MiB, 4),
        }


@dataclass(slots=True)
class PromotionPlan:
    """The promotions that fit ``budget_bpw`` and the command that makes them."""

    budget_bpw: float
    parameters: int  # elements of all tensors
    bytes_before: int  # ggml_nbytes of all tensors
    promotions: list[Promotion]
    recipe: Recipe  # the base recipe with the promotions as its first rules
    promotion_rules: int  # how many of recipe.rules are promotions
    mismatches: list[str] = field(default_factory=list)  # tensors the command would not type as planned

    @property
    def bytes_after(self) -> int:
        return self.bytes_before + sum(p.added_bytes for p in self.promotions)

    def to_dict(self) -> dict[str, Any]:
        before, after = self.bytes_before, self.bytes_after
        return {
            "budget_bpw": self.budget_bpw,
            "rule": RULE,
            "parameters": self.parameters,
            "bpw": {"before": 8 * before / self.parameters, "after": 8 * after / self.parameters},
            "tensor_bytes": {"before": before, "after": after, "added": after - before},
            "promotions": [p.to_dict() for p in self.promotions],
            "promotion_rules": [r.to_dict() for r in self.recipe.rules[: self.promotion_rules]],
            **self.recipe.to_dict(),
            "verified": not self.mismatches,
        }


def ladder_of(t: TensorInfo) -> list[str]:
    """The types a tensor can be promoted to, smallest first: :data:`LADDER` after llama-quantize's
    fallback for its ``ne[0]``, only those larger than its current type."""
    steps: list[str] = []
    size = t.nbytes
    for name in LADDER:
        real = fallback(name, t.shape[0])
        if not ggml_type_by_name(real).is_quantized:
            continue  # a shape no block fits: llama-quantize would write F16
        nbytes = ggml_type_by_name(real).nbytes(t.n_elements)
        if nbytes > size:
            steps.append(real)
            size = nbytes
    return steps


def _value_per_bit(importance: float, a: float, b: float) -> float:
    return importance * (4.0**-a - 4.0**-b) / (b - a)


def choose(
    candidates: list[TensorInfo], importance: Mapping[str, Importance], allowance: int
) -> dict[str, tuple[str, int]]:
    """Greedy knapsack: tensor name -> (type, added bytes) within ``allowance`` bytes (see module)."""
    ladders = {t.name: ladder_of(t) for t in candidates}
    by_name = {t.name: t for t in candidates}
    chosen: dict[str, tuple[str, int]] = {}
    heap: list[tuple[float, str, int]] = []

    def push(name: str, step: int) -> None:
        if step < len(ladders[name]):
            t = by_name[name]
            a = ggml_type_by_name(ladders[name][step - 1]).bits_per_weight if step else t.type.bits_per_weight
            b = ggml_type_by_name(ladders[name][step]).bits_per_weight
            value = _value_per_bit(importance[name].value, a, b)
            if value > 0:  # a matrix whose inputs were all zero gains nothing from more bits
                heapq.heappush(heap, (-value, name, step))

    for t in candidates:
        push(t.name, 0)
    spent = 0
    while heap:
        _, name, step = heapq.heappop(heap)
        t = by_name[name]
        new = ladders[name][step]
        old_bytes = t.nbytes + (chosen[name][1] if name in chosen else 0)
        cost = ggml_type_by_name(new).nbytes(t.n_elements) - old_bytes
        if spent + cost > allowance:
            continue  # this step does not fit: the tensor climbs no further
        spent += cost
        chosen[name] = (new, ggml_type_by_name(new).nbytes(t.n_elements) - t.nbytes)
        push(name, step + 1)
    return chosen


def _rules(model: GGUFModel, promoted: dict[str, str]) -> list[Rule]:
    """One exact rule per role and type: every layer of the role as ``\\d+`` where all of them get
    the type, else the layers named."""
    groups: dict[tuple[tuple[str, str, str], str], list[TensorInfo]] = {}
    role_sizes: dict[tuple[str, str, str], int] = {}
    for t in model.tensors:
        r = parse_name(t.name)
        if r.layer is None:
            continue
        role = (r.tower or "", r.role, r.kind)
        role_sizes[role] = role_sizes.get(role, 0) + 1
        if t.name in promoted:
            groups.setdefault((role, promoted[t.name]), []).append(t)
    rules = []
    for (role, to_type), members in sorted(groups.items()):
        whole = len(members) == role_sizes[role]
        pattern = _exact(members[0].name) if len(members) == 1 and not whole else pattern_for(members, whole)
        rules.append(Rule(pattern, to_type, len(members)))
    for name in sorted(promoted):
        if parse_name(name).layer is None:
            rules.append(Rule(_exact(name), promoted[name], 1))
    return rules


def _exact(name: str) -> str:
    """A pattern that llama-quantize's ``std::regex_search`` matches to this one name only."""
    return "^" + re.escape(name) + "$"


def plan(model: GGUFModel, importance: Mapping[str, Importance], budget_bpw: float, imatrix_path: str) -> PromotionPlan:
    """The promotions of ``model``'s tensors (``importance``: per tensor name, from its imatrix)
    that bring it closest to ``budget_bpw`` without exceeding it, and the llama-quantize command.

    Raises ``ValueError`` when the budget is below the model's BPW (the caller names the option)."""
    parameters = sum(t.n_elements for t in model.tensors)
    before = sum(t.nbytes for t in model.tensors)
    if parameters == 0:
        raise ValueError("the model has no tensors")
    if not math.isfinite(budget_bpw):
        raise ValueError(f"the budget {budget_bpw} is not a number of bits per weight")
    budget = Fraction(str(budget_bpw))
    if budget * parameters < 8 * before:
        raise ValueError(f"the budget {budget_bpw} BPW is below the model's {8 * before / parameters:.4f} BPW")
    allowance = int(budget * parameters / 8) - before
    base = recipe(model)
    base_type = ggml_type_by_name(base.base)
    candidates = [
        t
        for t in model.tensors
        if t.name in importance
        and is_quantizable_weight(t.name, ggml_n_dims(t.shape))
        and t.name not in base.unreproducible
        and base_type.is_quantized  # llama-quantize applies --tensor-type only below a quantized FTYPE
    ]
    chosen = choose(candidates, importance, allowance)
    promotions = [
        Promotion(t.name, importance[t.name], t.type.name, chosen[t.name][0], chosen[t.name][1])
        for t in candidates
        if t.name in chosen
    ]
    promotions.sort(key=lambda p: (-p.importance.value, p.name))
    specials = {p.name: p.to_type for p in promotions if p.name in ("output.weight", "token_embd.weight")}
    rules = _rules(model, {p.name: p.to_type for p in promotions if p.name not in specials})
    # output.weight / token_embd.weight ignore --tensor-type once their own option is set
    # (llama_tensor_get_type, src/llama-quant.cpp:718-736): promote them through that option
    rec = replace(
        base,
        rules=rules + base.rules,
        output_tensor_type=specials.get("output.weight", base.output_tensor_type),
        token_embedding_type=specials.get("token_embd.weight", base.token_embedding_type),
        imatrix=imatrix_path,
    )
    planned = {t.name: t.type.name for t in model.tensors}
    planned.update({p.name: p.to_type for p in promotions})
    result = PromotionPlan(budget_bpw, parameters, before, promotions, rec, len(rules))
    result.mismatches = check_types(model, rec, planned)
    return result
