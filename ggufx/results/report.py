"""``report``: everything the one-page report shows, as the JSON ``report --json`` prints."""

from __future__ import annotations

from typing import Any, TypedDict, cast

from ggufx.model import GGUFModel
from ggufx.results.inspection import InfoResult
from ggufx.results.quantization import LayerGridDict, layer_grid
from ggufx.results.templates import TemplateFacts


class ReportResult(TypedDict):
    kind: str
    summary: InfoResult
    companion: dict[str, Any] | None
    roles: list[dict[str, Any]]
    layers: LayerGridDict
    memory: list[dict[str, Any]]  # ggufx.analysis.memory.estimate.Estimate.to_dict() per context and cache type
    chat_template: TemplateFacts | None
    layer_map: LayerGridDict
    memory_curve: dict[str, Any] | None  # memory per GPU against context (analysis.memory.curve), for the chart


def report(model: GGUFModel, gpus: str | None = None) -> ReportResult:
    """Everything ``ggufx report`` shows: summary, roles, the layer grid (collapsed, and one row per
    layer for the heat map in ``layer_map``), memory at a few contexts for f16/q8_0/q4_0 caches,
    and the chat template's facts, and memory per GPU against context for the chart (``gpus``: their
    free memory as ``--gpus`` takes it, which adds the budget and llama.cpp's ``--fit`` point). A
    companion file (projector, adapter, imatrix...) gets its
    ``companion`` summary and grid instead of a language model's memory and template."""
    from ggufx.analysis.filekind import companion_summary, file_kind
    from ggufx.analysis.roles import role_table
    from ggufx.results.inspection import info
    from ggufx.results.memory import report_memory

    s = info(model)
    kind = file_kind(model)
    is_model = kind == "model"
    return {
        "kind": kind,
        "summary": s,
        "companion": companion_summary(model, kind),
        "roles": [r.to_dict() for r in role_table(model)],
        "layers": layer_grid(model, kind),
        "memory": report_memory(model, s["context_length"]) if is_model else [],
        "chat_template": _report_template(model) if is_model else None,
        "layer_map": layer_grid(model, kind, collapse=False),
        "memory_curve": _memory_curve(model, gpus) if is_model else None,
    }


def _memory_curve(model: GGUFModel, gpus: str | None) -> dict[str, Any] | None:
    """Two points per doubling of the context from 4K to the training context, per cache type; None
    for a file the memory model cannot size (the page says so beside the memory table)."""
    from ggufx.analysis.memory.curve import chart_contexts, memory_curve
    from ggufx.analysis.memory.hparams import hparams
    from ggufx.errors import GGUFError
    from ggufx.results.memory import _gpus

    devices = _gpus(gpus) if gpus is not None else None
    try:
        contexts = chart_contexts(hparams(model).n_ctx_train, per_doubling=2)
        return memory_curve(model, devices or None, contexts=contexts).to_json()
    except GGUFError:
        return None


def _report_template(model: GGUFModel) -> TemplateFacts | None:
    from ggufx.chat.dialect import analyze
    from ggufx.chat.sources import special_tokens

    tmpl = model.metadata.get_str("tokenizer.chat_template")
    if tmpl is None:
        return None
    bos, eos = special_tokens(model)
    return cast(TemplateFacts, analyze(tmpl, {"bos_token": bos or "", "eos_token": eos or ""}).to_dict())
