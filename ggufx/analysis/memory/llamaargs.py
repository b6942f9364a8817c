"""llama.cpp command-line options that decide memory, read into ggufx's parameter objects.

``parse_args(["-ngl", "20", "-c", "32768", "-ctk", "q8_0"])`` gives the :class:`OffloadParams` and
:class:`ContextParams` llama.cpp would use, with its defaults (``common/common.h``) and the
``llama-server`` differences (``-np`` unset means 4 slots with a unified KV cache; logits are reserved
for one token per slot, not for a whole micro-batch).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace

from ggufx.analysis.memory.buffers import ContextParams
from ggufx.analysis.memory.placement import CPU_MOE_PATTERN, OffloadParams, n_cpu_moe_patterns
from ggufx.analysis.memory.graph.projector import ProjectorOptions
from ggufx.errors import InputError

_INT = {
    "-ngl": "n_gpu_layers",
    "--n-gpu-layers": "n_gpu_layers",
    "-c": "n_ctx",
    "--ctx-size": "n_ctx",
    "-b": "n_batch",
    "--batch-size": "n_batch",
    "-ub": "n_ubatch",
    "--ubatch-size": "n_ubatch",
    "-np": "n_parallel",
    "--parallel": "n_parallel",
    "-mg": "main_gpu",
    "--main-gpu": "main_gpu",
    "--image-min-tokens": "image_min",
    "--image-max-tokens": "image_max",
}
_STR = {
    "-fa": "flash_attn",
    "--flash-attn": "flash_attn",
    "-ctk": "cache_type_k",
    "--cache-type-k": "cache_type_k",
    "-ctv": "cache_type_v",
    "--cache-type-v": "cache_type_v",
    "-sm": "split_mode",
    "--split-mode": "split_mode",
}
_FLAGS = {
    "-nkvo": "no_kv_offload",
    "--no-kv-offload": "no_kv_offload",
    "--swa-full": "swa_full",
    "--kv-unified": "kv_unified",
    "-kvu": "kv_unified",
    "--no-mmap": "no_mmap",
    "--cpu-moe": "cpu_moe",
    "-cmoe": "cpu_moe",
}


@dataclass(slots=True)
class LlamaArgs:
    """What a llama.cpp command line says about memory."""

    offload: OffloadParams
    context: ContextParams
    model: str | None = None
    no_devices: bool = False  # -dev none
    mmproj: str | None = None  # --mmproj FILE
    draft: str | None = None  # -md FILE: the draft model of speculative decoding
    draft_offload: OffloadParams | None = None  # -ngld
    draft_context: ContextParams | None = None  # -cd, -ctkd, -ctvd
    projector: ProjectorOptions = field(default_factory=ProjectorOptions)  # --image-*-tokens, --no-mmproj-offload
    others: list[str] = field(default_factory=list)  # options that change no buffer of the main model


def parse_args(argv: list[str] | str, server: bool = False) -> LlamaArgs:
    """Read llama.cpp options (``llama-server`` semantics when ``server``)."""
    args = shlex.split(argv) if isinstance(argv, str) else list(argv)
    v: dict[str, object] = {}
    overrides: list[tuple[str, str]] = []
    ts: tuple[float, ...] = ()
    model = None
    no_devices = False
    others: list[str] = []
    i = 0

    def value() -> str:
        if i + 1 >= len(args):
            raise InputError(f"{args[i]} needs a value", args[i])
        return args[i + 1]

    while i < len(args):
        a = args[i]
        if a in _INT:
            raw = value()
            try:
                v[_INT[a]] = -1 if raw in ("auto", "all") and a in ("-ngl", "--n-gpu-layers") else int(raw)
            except ValueError:
                raise InputError(f"{a} {raw}: not an integer", a) from None
            i += 2
        elif a in _STR:
            v[_STR[a]] = value()
            i += 2
        elif a in _FLAGS:
            v[_FLAGS[a]] = True
            i += 1
        elif a in ("-no-kvu", "--no-kv-unified"):
            v["kv_unified"] = False
            i += 1
        elif a in ("-ts", "--tensor-split"):
            try:
                ts = tuple(float(x) for x in value().replace("/", ",").split(","))
            except ValueError:
                raise InputError(f"-ts {value()}: expected numbers separated by commas", "-ts") from None
            i += 2
        elif a in ("-ot", "--override-tensor"):
            for item in value().split(","):
                pattern, sep, buft = item.rpartition("=")
                if not sep or not pattern:
                    raise InputError(f"-ot {item}: expected REGEX=BUFFER_TYPE", "-ot")
                overrides.append((pattern, buft))
            i += 2
        elif a in ("-ncmoe", "--n-cpu-moe"):
            overrides += [(p, "CPU") for p in n_cpu_moe_patterns(int(value()))]
            i += 2
        elif a in ("-m", "--model"):
            model = value()
            i += 2
        elif a in ("-md", "--model-draft", "--mmproj", "-mm"):
            v["draft" if a in ("-md", "--model-draft") else "mmproj"] = value()
            i += 2
        elif a in ("-ngld", "--n-gpu-layers-draft", "-cd", "--ctx-size-draft"):
            raw = value()
            key = "draft_ngl" if a in ("-ngld", "--n-gpu-layers-draft") else "draft_ctx"
            v[key] = -1 if raw in ("auto", "all") else int(raw)
            i += 2
        elif a in ("-ctkd", "--cache-type-k-draft", "-ctvd", "--cache-type-v-draft"):
            v["draft_ctk" if a in ("-ctkd", "--cache-type-k-draft") else "draft_ctv"] = value()
            i += 2
        elif a in ("-dev", "--device"):
            no_devices = value() == "none"
            i += 2
        elif a in ("--no-mmproj-offload", "--mmproj-offload"):
            v["mmproj_offload"] = a == "--mmproj-offload"
            i += 1
        else:
            others.append(a)
            i += 1
    if v.pop("cpu_moe", False):
        overrides.append((CPU_MOE_PATTERN, "CPU"))
    n_parallel = int(v.get("n_parallel", 4 if server else 1))  # type: ignore[call-overload]
    unified = bool(v["kv_unified"]) if "kv_unified" in v else server and "n_parallel" not in v
    offload = OffloadParams(
        n_gpu_layers=int(v.get("n_gpu_layers", -1)),  # type: ignore[call-overload]
        split_mode=str(v.get("split_mode", "layer")),
        main_gpu=int(v.get("main_gpu", 0)),  # type: ignore[call-overload]
        tensor_split=ts,
        overrides=tuple(overrides),
        mmap=not v.get("no_mmap", False),
    )
    context = ContextParams(
        n_ctx=int(v.get("n_ctx", 0)),  # type: ignore[call-overload]
        n_batch=int(v.get("n_batch", 2048)),  # type: ignore[call-overload]
        n_ubatch=int(v.get("n_ubatch", 512)),  # type: ignore[call-overload]
        n_parallel=n_parallel,
        kv_unified=unified,
        flash_attn=str(v.get("flash_attn", "auto")),
        cache_type_k=str(v.get("cache_type_k", "f16")),
        cache_type_v=str(v.get("cache_type_v", "f16")),
        no_kv_offload=bool(v.get("no_kv_offload", False)),
        swa_full=bool(v.get("swa_full", False)),
        n_outputs_max=n_parallel if server else 0,
    )
    draft = v.get("draft")
    draft_offload = draft_context = None
    if draft is not None:
        draft_offload = OffloadParams(n_gpu_layers=int(v.get("draft_ngl", -1)))  # type: ignore[call-overload]
        draft_context = replace(
            context,
            n_ctx=int(v.get("draft_ctx", 0)) or context.n_ctx,  # type: ignore[call-overload]
            cache_type_k=str(v.get("draft_ctk", "f16")),
            cache_type_v=str(v.get("draft_ctv", "f16")),
        )
    mmproj = v.get("mmproj")
    return LlamaArgs(
        offload,
        context,
        model,
        no_devices,
        None if mmproj is None else str(mmproj),
        None if draft is None else str(draft),
        draft_offload,
        draft_context,
        ProjectorOptions(
            v.get("image_min"),  # type: ignore[arg-type]
            v.get("image_max"),  # type: ignore[arg-type]
            bool(v.get("mmproj_offload", True)),
        ),
        others,
    )
