"""What ``ggufx mem`` does once its options are read, without click: click's command (:mod:`ggufx.cli.memory`)
and the fast start (:mod:`ggufx.cli._fast`) both call :func:`run`, so the answer has one path."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ggufx.cli._process import EXIT_CHECK_FAILED

if TYPE_CHECKING:
    from ggufx.model import GGUFModel

# the llama.cpp options that --llama-args replaces (results.MemoryRequest.setup takes its command line's context,
# offload, projector and draft settings whole); the companion files and --spec-type are merged instead
REPLACED_BY_LLAMA_ARGS = frozenset(
    {
        "ctx", "cache_type_k", "cache_type_v", "fa", "no_flash_attn", "parallel", "ubatch", "batch", "n_gpu_layers",
        "tensor_split", "split_mode", "main_gpu", "overrides", "cpu_moe", "n_cpu_moe", "no_kv_offload", "swa_full",
        "kv_unified", "no_mmap", "no_repack", "embedding", "pooling", "image_min_tokens", "image_max_tokens",
        "no_mmproj_offload", "n_gpu_layers_draft", "cache_type_k_draft", "cache_type_v_draft",
    }
)  # fmt: skip


def run(
    file: str | None,
    as_json: bool,
    tablefmt: str,
    options: dict[str, Any],
    open_model: Callable[[str], GGUFModel],
    echo: Callable[..., None],
) -> int:
    """Answer the memory question ``options`` asks (``mem``'s option names) about ``file``: the table or the JSON
    through ``echo`` (click's signature: ``echo(text, err=False)``), and the exit status (0, or 1 where a
    ``--check`` failed or the model does not fit the ``--gpus`` given). Raises ``results.InputError`` for options
    that cannot be answered and ``GGUFError`` for a bad file, before anything is written."""
    from ggufx import results
    from ggufx.render.text import fit_text, memory_check_text, memory_devices_text

    options = dict(options)
    request = results.MemoryRequest(flash_attn=not options.pop("no_flash_attn"), **options)
    model = open_model(request.model_file(file))
    if request.fit_budget is not None:
        fitted = results.fit(model, request, open_model)
        echo(_json(fitted) if as_json else fit_text(fitted, tablefmt))
        return 0
    if request.check_log is not None:
        with open(request.check_log, encoding="utf-8", errors="replace") as f:
            checked = results.check(model, request, f.read(), open_model)
        echo(_json(checked) if as_json else memory_check_text(checked, tablefmt))
        return 0 if checked["ok"] else EXIT_CHECK_FAILED
    res = results.memory(model, request, open_model)
    echo(_json(res) if as_json else memory_devices_text(res, tablefmt))
    for line in [] if as_json else res["warnings"]:
        echo(f"warning: llama.cpp will log: {line}", err=True)
    return EXIT_CHECK_FAILED if results.short_devices(res) else 0  # --gpus sizes it does not fit: a failed check


def _json(result: Any) -> str:
    from ggufx.render.jsontext import dumps  # a text answer does not import it (issue 21)

    return dumps(result)
