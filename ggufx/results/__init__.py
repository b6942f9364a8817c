"""The result of every read-only command: the object its ``--json`` prints, typed.

One function per command, used by the CLI and by the MCP tools alike, so that the two cannot
disagree; each returns a small typed result (a ``TypedDict`` the JSON text is made from, so mypy
checks every key the faces and ``ggufx.render`` read). Functions take a parsed model (or template
set) and plain options, or a request object the faces fill (:class:`MemoryRequest`); a bad option
(a regular expression that does not compile, an unknown type name) raises :class:`InputError`,
which the CLI shows as a usage error and the MCP server as a tool error.

One module per area: :mod:`.inspection` (info, tensors, meta), :mod:`.quantization` (roles,
layers, recipe, diff), :mod:`.memory` (mem, --fit, --check), :mod:`.report`, :mod:`.templates`
(template ...), :mod:`.companions` (imatrix) and :mod:`.integrity` (hash, manifest, verify, check,
scan). The faces import this package only; the memory model and the chat layer are imported by the
functions that need them (``info`` imports no memory module).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from ggufx.errors import InputError

# llama.cpp's -ctk/-ctv types (ggufx.format.ggmltypes.CACHE_TYPES, which a test holds this to), named here
# so that the options of mem, pick and report are made without the type table and dataclasses (3 to 10 ms)
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

if TYPE_CHECKING:
    from ggufx.results.companions import ImatrixResult, imatrix
    from ggufx.results.editing import present_keys, value_type
    from ggufx.results.inspection import (
        SORT_ORDERS,
        InfoResult,
        KeyRecord,
        KeyResult,
        MetaResult,
        ServerModelResult,
        TensorRecord,
        TensorsResult,
        TypeHistogram,
        distinct_models,
        ggml_type_names,
        info,
        meta,
        meta_key,
        parse_layer_range,
        server_model,
        tensors,
        type_histogram,
    )
    from ggufx.results.integrity import (
        ALGOS,
        CheckResult,
        HashResult,
        ManifestResult,
        PolicyCheck,
        ScanModel,
        ScanResult,
        VerifyResult,
        check_files,
        hash_,
        hash_result,
        model_hashes,
        needs_remote,
        scan,
        scan_roots,
        verify,
        verify_model,
        write_manifest,
    )
    from ggufx.results.memory import (
        FitResult,
        MemoryCheckResult,
        MemoryRequest,
        MemoryResult,
        Opener,
        check,
        fit,
        fit_budget,
        memory,
        memory_breakdown,
        memory_check,
        parse_size,
        short_devices,
    )
    from ggufx.results.pick import pick
    from ggufx.results.quantization import (
        DiffResult,
        LayersResult,
        PromotionResult,
        RecipeResult,
        RolesResult,
        diff,
        layers,
        promotions,
        recipe,
        recipe_or_promotions,
        roles,
    )
    from ggufx.results.report import ReportResult, report
    from ggufx.results.templates import (
        ENGINES,
        SAMPLES,
        TemplateDiffResult,
        TemplateInfoResult,
        TemplateLintResult,
        TemplateRenderResult,
        TemplateShowResult,
        conversations,
        is_gguf_path,
        load_templates,
        model_templates,
        set_template_op,
        template_diff,
        template_info,
        template_lint,
        template_render,
        template_set_diff,
        template_set_ops,
        template_show,
        template_variables,
    )

# Every name above comes from its module on first use (PEP 562), so that a command imports only the
# result modules it calls: ``info`` neither the memory results nor the chat templates'.
_LAZY: dict[str, str] = {
    "ALGOS": "integrity",
    "CheckResult": "integrity",
    "DiffResult": "quantization",
    "ENGINES": "templates",
    "FitResult": "memory",
    "HashResult": "integrity",
    "ImatrixResult": "companions",
    "InfoResult": "inspection",
    "KeyRecord": "inspection",
    "KeyResult": "inspection",
    "LayersResult": "quantization",
    "ManifestResult": "integrity",
    "MemoryCheckResult": "memory",
    "MemoryRequest": "memory",
    "MemoryResult": "memory",
    "MetaResult": "inspection",
    "Opener": "memory",
    "PolicyCheck": "integrity",
    "PromotionResult": "quantization",
    "RecipeResult": "quantization",
    "ReportResult": "report",
    "RolesResult": "quantization",
    "SAMPLES": "templates",
    "SORT_ORDERS": "inspection",
    "ScanModel": "integrity",
    "ScanResult": "integrity",
    "ServerModelResult": "inspection",
    "TemplateDiffResult": "templates",
    "TemplateInfoResult": "templates",
    "TemplateLintResult": "templates",
    "TemplateRenderResult": "templates",
    "TemplateShowResult": "templates",
    "TensorRecord": "inspection",
    "TensorsResult": "inspection",
    "TypeHistogram": "inspection",
    "VerifyResult": "integrity",
    "check": "memory",
    "check_files": "integrity",
    "conversations": "templates",
    "diff": "quantization",
    "distinct_models": "inspection",
    "fit": "memory",
    "fit_budget": "memory",
    "ggml_type_names": "inspection",
    "hash_": "integrity",
    "hash_result": "integrity",
    "imatrix": "companions",
    "info": "inspection",
    "is_gguf_path": "templates",
    "layers": "quantization",
    "load_templates": "templates",
    "memory": "memory",
    "memory_breakdown": "memory",
    "memory_check": "memory",
    "meta": "inspection",
    "meta_key": "inspection",
    "model_hashes": "integrity",
    "model_templates": "templates",
    "needs_remote": "integrity",
    "parse_layer_range": "inspection",
    "parse_size": "memory",
    "pick": "pick",
    "present_keys": "editing",
    "promotions": "quantization",
    "recipe": "quantization",
    "recipe_or_promotions": "quantization",
    "report": "report",
    "roles": "quantization",
    "scan": "integrity",
    "scan_roots": "integrity",
    "server_model": "inspection",
    "set_template_op": "templates",
    "short_devices": "memory",
    "template_diff": "templates",
    "template_info": "templates",
    "template_lint": "templates",
    "template_render": "templates",
    "template_set_diff": "templates",
    "template_set_ops": "templates",
    "template_show": "templates",
    "template_variables": "templates",
    "tensors": "inspection",
    "type_histogram": "inspection",
    "value_type": "editing",
    "verify": "integrity",
    "verify_model": "integrity",
    "write_manifest": "integrity",
}


class _Results(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{self.__name__}.{module}"), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        # importing a submodule binds it on its package: for ``memory``, ``report`` and ``pick`` (a
        # module and its function of the same name) the function is what ``results.memory`` is, as
        # when this package imported every name at once
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_LAZY))


sys.modules[__name__].__class__ = _Results

__all__ = [
    "pick",
    "ServerModelResult",
    "distinct_models",
    "ggml_type_names",
    "is_gguf_path",
    "load_templates",
    "model_templates",
    "server_model",
    "value_type",
    "present_keys",
    "ALGOS",
    "ENGINES",
    "SAMPLES",
    "conversations",
    "CACHE_TYPES",
    "SORT_ORDERS",
    "CheckResult",
    "DiffResult",
    "FitResult",
    "HashResult",
    "ImatrixResult",
    "InfoResult",
    "InputError",
    "KeyRecord",
    "KeyResult",
    "LayersResult",
    "ManifestResult",
    "MemoryCheckResult",
    "MemoryRequest",
    "MemoryResult",
    "MetaResult",
    "Opener",
    "PolicyCheck",
    "PromotionResult",
    "RecipeResult",
    "ReportResult",
    "RolesResult",
    "ScanModel",
    "ScanResult",
    "TemplateDiffResult",
    "TemplateInfoResult",
    "TemplateLintResult",
    "TemplateRenderResult",
    "TemplateShowResult",
    "TensorRecord",
    "TensorsResult",
    "TypeHistogram",
    "VerifyResult",
    "check",
    "check_files",
    "diff",
    "fit",
    "fit_budget",
    "hash_",
    "hash_result",
    "imatrix",
    "info",
    "layers",
    "memory",
    "memory_breakdown",
    "memory_check",
    "meta",
    "meta_key",
    "model_hashes",
    "needs_remote",
    "parse_layer_range",
    "parse_size",
    "short_devices",
    "promotions",
    "recipe",
    "recipe_or_promotions",
    "report",
    "roles",
    "scan",
    "scan_roots",
    "set_template_op",
    "template_diff",
    "template_info",
    "template_lint",
    "template_render",
    "template_set_diff",
    "template_set_ops",
    "template_show",
    "template_variables",
    "tensors",
    "type_histogram",
    "verify",
    "verify_model",
    "write_manifest",
]
