"""``report``: everything the one-page report shows, as the JSON ``report --json`` prints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypedDict, cast

from ggufx.model import GGUFModel
from ggufx.results.inspection import InfoResult
from ggufx.results.quantization import LayerGridDict, layer_grid
from ggufx.results.templates import TemplateFacts

if TYPE_CHECKING:
    from ggufx.analysis.memory.buffers import ContextParams


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
    # the other llama.cpp options the memory figures are sized with (report --llama-args) and their program
    llama_args: list[str]
    tool: str


def report(
    model: GGUFModel,
    gpus: str | None = None,
    *,
    fit_target_mib: float | None = None,
    llama_args: str | Sequence[str] = (),
    tool: str = "llama-cli",
) -> ReportResult:
    """Everything ``ggufx report`` shows: summary, roles, the layer grid (collapsed, and one row per
    layer for the heat map in ``layer_map``), memory at a few contexts for f16/q8_0/q4_0 caches,
    and the chat template's facts, and memory per GPU against context for the chart (``gpus``: their
    free memory as ``--gpus`` takes it, which adds the budget and llama.cpp's ``--fit`` point). A
    companion file (projector, adapter, imatrix...) gets its
    ``companion`` summary and grid instead of a language model's memory and template.

    ``llama_args``: the other options of ``tool`` the user runs with (``-np 1 -ub 2048 -fa on``), which size the
    memory table and the chart as they size ``pick``'s rows (the options the report varies or sets itself, ``-c``,
    ``-ctk``/``-ctv``, ``-ngl``, ``-ot``..., are refused as pick refuses them); ``fit_target_mib``: llama.cpp's
    ``-fitt`` for the chart's ``--fit`` point (default 1024); ``tool``: the program they are options of, whose
    defaults size the rest (llama-cli's: one sequence, logits for a whole batch; llama-server's: its slots)."""
    from ggufx.analysis.filekind import companion_summary, file_kind
    from ggufx.analysis.roles import role_table
    from ggufx.results.inspection import info
    from ggufx.results.memory import report_memory

    words, context = _sizing(model, llama_args, tool)
    s = info(model)
    kind = file_kind(model)
    is_model = kind == "model"
    return {
        "kind": kind,
        "summary": s,
        "companion": companion_summary(model, kind),
        "roles": [r.to_dict() for r in role_table(model)],
        "layers": layer_grid(model, kind),
        "memory": report_memory(model, s["context_length"], context) if is_model else [],
        "chat_template": _report_template(model) if is_model else None,
        "layer_map": layer_grid(model, kind, collapse=False),
        "memory_curve": _memory_curve(model, gpus, context, fit_target_mib) if is_model else None,
        "llama_args": list(words),
        "tool": tool,
    }


# why a single model's report refuses each option pick writes itself (by pick's reason for it)
_REPORT_DECIDES = {
    "the models are pick's sources": "the model is the report's FILE",
    "the projector is pick's --mmproj, counted on the first GPU": "the report sizes the model alone",
    "the context is pick's -c (or --fit)": "the report shows every context up to the training context",
    "the K cache type is pick's -ctk": "the report shows f16, q8_0 and q4_0 caches",
    "the V cache type is pick's -ctv": "the report shows f16, q8_0 and q4_0 caches",
    "llama.cpp's fit places the model on the GPUs given (--gpus)": "the report offloads every layer to the GPUs "
    "given (ggufx mem sizes other placements)",
    "pick answers as llama.cpp's -fit on": "the chart's --fit point is llama.cpp's -fit on",
    "the margin is pick's -fitt": "the margin is the report's -fitt",
    "pick does not size speculative decoding (ggufx mem -md / --spec-type does)": "the report does not size "
    "speculative decoding (ggufx mem -md / --spec-type does)",
}


def _sizing(
    model: GGUFModel, llama_args: str | Sequence[str], tool: str
) -> tuple[tuple[str, ...], ContextParams | None]:
    """The words of ``llama_args`` (checked as pick checks them) and the context options they give, None for
    llama.cpp's defaults (no words: the figures the report has always shown)."""
    from ggufx.analysis.memory.buffers import flash_attn_default
    from ggufx.analysis.memory.llamaargs import parse_args
    from ggufx.analysis.pick import DECIDED, checked_llama_args

    words, _unmodelled = checked_llama_args(llama_args, tool, {k: _REPORT_DECIDES[why] for k, why in DECIDED.items()})
    if not words and tool == "llama-cli":  # llama.cpp's defaults: what the report has always shown
        return words, None
    context = parse_args(["-m", model.path, *words], tool=tool).context
    if context.flash_attn == "auto":  # -fa auto, given or not: off where llama.cpp aborts with it on (PLM)
        context = replace(context, flash_attn=flash_attn_default(model))
    return words, context


def _memory_curve(
    model: GGUFModel, gpus: str | None, context: ContextParams | None, fit_target_mib: float | None
) -> dict[str, Any] | None:
    """Two points per doubling of the context from 4K to the training context, per cache type; None
    for a file the memory model cannot size (the page says so beside the memory table)."""
    from ggufx.analysis.memory.buffers import MiB
    from ggufx.analysis.memory.curve import chart_contexts, memory_curve
    from ggufx.analysis.memory.fit import MARGIN
    from ggufx.analysis.memory.hparams import hparams
    from ggufx.errors import GGUFError
    from ggufx.results.memory import _gpus

    devices = _gpus(gpus) if gpus is not None else None
    try:
        contexts = chart_contexts(hparams(model).n_ctx_train, per_doubling=2)
        margin = MARGIN if fit_target_mib is None else int(fit_target_mib * MiB)
        return memory_curve(model, devices or None, contexts=contexts, context=context, margin=margin).to_json()
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
