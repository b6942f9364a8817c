"""``roles``, ``layers``, ``recipe`` and ``diff``: how a file was quantized, as the JSON their
``--json`` prints."""

from __future__ import annotations

from typing import Any, TypedDict, cast

from ggufx.errors import InputError, ValidationError
from ggufx.model import GGUFModel


class RolesResult(TypedDict):
    path: str
    kind: str
    roles: list[dict[str, Any]]  # ggufx.analysis.roles.RoleRow.to_dict()


class LayerGridDict(TypedDict):
    """:meth:`ggufx.analysis.layers.LayerGrid.to_dict`."""

    roles: list[str]
    layers: list[dict[str, Any]]
    layer_kinds: dict[str, Any]
    per_layer: list[dict[str, Any]]


class LayersResult(LayerGridDict):
    path: str
    kind: str


class _RecipeKeys(TypedDict):
    """:meth:`ggufx.analysis.recipe.Recipe.to_dict`."""

    base: str
    base_type: str
    rules: list[dict[str, Any]]
    output_tensor_type: str | None
    token_embedding_type: str | None
    pure: bool
    allow_requantize: bool
    imatrix: str | None
    args: list[str]
    command: str
    tensor_type_file: str
    unreproducible: list[str]


class RecipeResult(_RecipeKeys):
    """``recipe --json``: the recipe, and whether it reproduces every tensor's type."""

    path: str
    verified: bool


class PromotionResult(RecipeResult):
    """``recipe --imatrix --budget --json``: the promotions, then the recipe that makes them."""

    budget_bpw: float
    rule: str
    parameters: int
    bpw: dict[str, float]
    tensor_bytes: dict[str, int]
    promotions: list[dict[str, Any]]
    promotion_rules: list[dict[str, Any]]


class DiffResult(TypedDict):
    """:meth:`ggufx.analysis.diff.ModelDiff.to_dict`."""

    a: str
    b: str
    type_changes: list[dict[str, Any]]
    tensors_added: list[str]
    tensors_removed: list[str]
    shape_changes: list[str]
    metadata: dict[str, Any]
    bpw: dict[str, Any]
    tensor_bytes: dict[str, Any]
    file_bytes: dict[str, Any]
    identical_tensors: bool


def roles(model: GGUFModel) -> RolesResult:
    """Where the bits go, per role; a companion file's roles are those of the model tensors it
    adapts or measures (``attn_q.lora_a``, ``attn_q.in_sum2``) or its towers' (``v.attn_q``)."""
    from ggufx.analysis.filekind import file_kind
    from ggufx.analysis.roles import role_table

    return {"path": model.path, "kind": file_kind(model), "roles": [r.to_dict() for r in role_table(model)]}


def layer_grid(model: GGUFModel, kind: str, collapse: bool = True) -> LayerGridDict:
    from ggufx.analysis.layers import layer_grid as grid

    return cast(LayerGridDict, grid(model, collapse=collapse, kind=kind).to_dict())


def layers(model: GGUFModel, collapse: bool = True) -> LayersResult:
    """The layer grid; for a companion file the layers it holds or covers
    (:func:`ggufx.analysis.layers.companion_grid`)."""
    from ggufx.analysis.filekind import file_kind

    kind = file_kind(model)
    return cast(LayersResult, {"path": model.path, "kind": kind, **layer_grid(model, kind, collapse)})


def recipe(model: GGUFModel) -> RecipeResult:
    """``ggufx recipe``: the llama-quantize recipe that reproduces ``model``'s types."""
    from ggufx.analysis.recipe import check_recipe
    from ggufx.analysis.recipe import recipe as make_recipe

    rec = make_recipe(model)
    d = cast(RecipeResult, rec.to_dict())
    d["path"] = model.path
    d["verified"] = not check_recipe(model, rec)
    return d


def promotions(model: GGUFModel, imatrix_file: GGUFModel, budget_bpw: float) -> PromotionResult:
    """``ggufx recipe --imatrix --budget``: the ``--tensor-type`` promotions of the most important
    tensors that fit a budget (BPW as llama.cpp prints it; ``analysis.promotion``)."""
    from ggufx.analysis.companions import imatrix_coverage
    from ggufx.analysis.importance import importance_map, tensor_importance
    from ggufx.analysis.promotion import plan

    rows = tensor_importance(imatrix_file)  # a file that is not an imatrix fails here, naming it
    if (why := imatrix_coverage(model, imatrix_file)) is not None:
        raise ValidationError(imatrix_file.path, None, f"not an imatrix for {model.path}: {why}")
    try:
        p = plan(model, importance_map(rows), budget_bpw, imatrix_file.path)
    except ValueError as e:
        raise InputError(f"{model.path}: {e}", "--budget") from None
    return cast(PromotionResult, {"path": model.path, **p.to_dict()})


def recipe_or_promotions(
    model: GGUFModel, imatrix_file: GGUFModel | None, budget_bpw: float | None
) -> RecipeResult | PromotionResult:
    """:func:`recipe`, or with an importance matrix and a budget :func:`promotions`."""
    if (imatrix_file is None) != (budget_bpw is None):
        raise InputError("--imatrix and --budget go together", "--budget")
    if imatrix_file is not None and budget_bpw is not None:
        return promotions(model, imatrix_file, budget_bpw)
    return recipe(model)


def diff(a: GGUFModel, b: GGUFModel) -> DiffResult:
    from ggufx.analysis.diff import diff as model_diff

    return cast(DiffResult, model_diff(a, b).to_dict())
