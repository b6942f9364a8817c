"""``imatrix``: an importance matrix's statistics per tensor, beside the types a quant gave them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, cast

from ggufx.model import GGUFModel

if TYPE_CHECKING:
    from typing_extensions import NotRequired


class ImatrixResult(TypedDict):
    """``imatrix --json``; the last four keys (and each row's ``type``) with a quant (``--model``)."""

    path: str
    datasets: list[str]
    chunk_count: int | None
    chunk_size: int | None
    count: int
    model: str | None
    missing_in_model: NotRequired[list[str]]
    most_common_type: NotRequired[dict[str, str]]
    high_at_common_type: NotRequired[list[str]]
    low_not_at_common_type: NotRequired[list[str]]
    tensors: list[dict[str, Any]]  # ggufx.analysis.importance.TensorImportance.to_dict() (+ "type")


def imatrix(im: GGUFModel, quant: GGUFModel | None = None) -> ImatrixResult:
    """``ggufx imatrix``: per tensor the importance llama-imatrix's statistics report, ranked within
    its role (:func:`ggufx.analysis.importance.tensor_importance`); with ``quant`` the type each
    tensor got and where rank and type disagree."""
    from ggufx.analysis.filekind import imatrix_summary
    from ggufx.analysis.importance import by_role, tensor_importance

    stats = tensor_importance(im)
    rows = [s.to_dict() for s in stats]
    summary = imatrix_summary(im)
    res: dict[str, Any] = {  # the keys in the order earlier versions printed them, "tensors" last
        "path": im.path,
        "datasets": summary["datasets"],
        "chunk_count": summary["chunk_count"],
        "chunk_size": summary["chunk_size"],
        "count": len(rows),
        "model": None,
    }
    if quant is not None:
        types = {t.name: t.type.name for t in quant.tensors}
        common: dict[str, str] = {}
        for role_name, members in by_role(stats).items():
            hist: dict[str, int] = {}
            for r in members:
                ty = types.get(r.name)
                if ty is not None:
                    hist[ty] = hist.get(ty, 0) + 1
            if hist:
                common[role_name] = min(hist, key=lambda k: (-hist[k], k))
        for d in rows:
            d["type"] = types.get(d["name"])
        res["model"] = quant.path
        res["missing_in_model"] = [d["name"] for d in rows if d["type"] is None]
        res["most_common_type"] = dict(sorted(common.items()))
        res["high_at_common_type"] = [
            d["name"]
            for d in rows
            if d["top_quartile"] and d["type"] is not None and d["type"] == common.get(d["role"])
        ]
        res["low_not_at_common_type"] = [
            d["name"]
            for d in rows
            if not d["top_quartile"] and d["type"] is not None and d["type"] != common.get(d["role"])
        ]
    res["tensors"] = rows
    return cast(ImatrixResult, res)
