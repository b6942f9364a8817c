"""What a GGUF file is: a model, or one of the companion files that run beside one, with a short
summary of the companion, from the header alone. Key names follow the pinned llama.cpp:

* projector (``--mmproj``): ``general.architecture = clip`` with ``clip.has_vision_encoder`` /
  ``clip.has_audio_encoder``, ``clip.projector_type`` (or per modality ``clip.vision.projector_type``)
  and ``clip.{vision,audio}.*`` hyper-parameters (``tools/mtmd/clip-impl.h``);
* LoRA adapter (``--lora``): ``general.type = adapter``, ``adapter.type``, ``adapter.lora.alpha``, tensor
  pairs ``X.lora_a`` (ne = [n_in, r]) and ``X.lora_b`` (ne = [r, n_out]) for base tensor ``X``
  (``src/llama-adapter.cpp``);
* importance matrix: ``general.type = imatrix``, ``imatrix.datasets``, ``imatrix.chunk_count``,
  ``imatrix.chunk_size``, one ``X.in_sum2``/``X.counts`` pair per weight ``X``
  (``tools/imatrix/imatrix.cpp``);
* control vector (``--control-vector``): ``general.architecture = controlvector``,
  ``controlvector.model_hint``, ``controlvector.layer_count``, tensors ``direction.N``
  (``tools/cvector-generator``, ``common/common.cpp``);
* vocabulary only (``--vocab-only`` files such as llama.cpp's ``models/ggml-vocab-*.gguf``):
  tokenizer keys and no tensors.
"""

from __future__ import annotations

import math
import re
from typing import Any

from ggufx.format.values import GGUFArray, f32_short
from ggufx.model import GGUFModel

KINDS = ("model", "projector", "adapter", "imatrix", "vocab", "control-vector")

_LAYER = re.compile(r"^blk\.(\d+)\.")
_DIRECTION = re.compile(r"^direction\.(\d+)$")


def file_kind(model: GGUFModel) -> str:
    """One of :data:`KINDS`."""
    md = model.metadata
    gtype = md.get_str("general.type")
    arch = model.architecture
    names = [t.name for t in model.tensors]
    if gtype == "imatrix" or (names and any(n.endswith(".in_sum2") for n in names) and arch is None):
        return "imatrix"
    if gtype == "adapter" or any(n.endswith((".lora_a", ".lora_b")) for n in names):
        return "adapter"
    if arch == "clip" or gtype == "mmproj":
        return "projector"
    if arch == "controlvector" or (names and all(_DIRECTION.match(n) for n in names)):
        return "control-vector"
    if not names and "tokenizer.ggml.tokens" in md:
        return "vocab"
    return "model"


def _value(model: GGUFModel, key: str) -> Any:
    """A scalar value as JSON can carry it (None when absent or an array)."""
    md = model.metadata
    if key not in md:
        return None
    v = md[key]
    if isinstance(v, GGUFArray):
        return None
    if isinstance(v, float):
        return f32_short(v) if math.isfinite(v) else None
    return v


def _strings(model: GGUFModel, key: str) -> list[str]:
    v = model.metadata.get(key)
    if not isinstance(v, GGUFArray):
        return []
    return [x for x in v if isinstance(x, str)]


def _tower(model: GGUFModel, modality: str) -> dict[str, Any]:
    p = f"clip.{modality}."
    out = {
        "projector_type": _value(model, f"{p}projector_type"),
        "block_count": _value(model, f"{p}block_count"),
        "embedding_length": _value(model, f"{p}embedding_length"),
        "feed_forward_length": _value(model, f"{p}feed_forward_length"),
        "head_count": _value(model, f"{p}attention.head_count"),
        "projection_dim": _value(model, f"{p}projection_dim"),
    }
    if modality == "vision":
        out["image_size"] = _value(model, f"{p}image_size")
        out["patch_size"] = _value(model, f"{p}patch_size")
    else:
        out["num_mel_bins"] = _value(model, f"{p}num_mel_bins")
    return out


def projector_summary(model: GGUFModel) -> dict[str, Any]:
    vision = _value(model, "clip.has_vision_encoder") is True
    audio = _value(model, "clip.has_audio_encoder") is True
    return {
        "projector_type": _value(model, "clip.projector_type"),
        "has_vision_encoder": vision,
        "has_audio_encoder": audio,
        "vision": _tower(model, "vision") if vision else None,
        "audio": _tower(model, "audio") if audio else None,
        "memory": projector_memory(model),
    }


def projector_memory(model: GGUFModel) -> dict[str, Any]:
    """What libmtmd allocates for the projector with llama.cpp's defaults (``-fa auto``, the
    projector's own image-token limits): its weights (``weights_bytes``, the tensors' bytes, as
    ``mtmd_get_memory_usage`` counts them) and its warmup compute buffers on one CUDA GPU (``gpu``
    plus the ``host`` inputs) or on a build without GPUs (``cpu``); the compute figures are null with
    ``compute_not_modelled`` saying why for projector types ggufx does not model."""
    from ggufx.analysis.memory.graph.projector import projector_buffers, projector_unsupported
    from ggufx.errors import GGUFError

    out: dict[str, Any] = {
        "weights_bytes": sum(t.nbytes for t in model.tensors),
        "gpu_compute_bytes": None,
        "host_compute_bytes": None,
        "cpu_compute_bytes": None,
        "compute_not_modelled": projector_unsupported(model),
    }
    if out["compute_not_modelled"]:
        return out
    try:
        gpu = {b.buft: b.bytes for b in projector_buffers(model, "CUDA0")}
        cpu = {b.buft: b.bytes for b in projector_buffers(model, None)}
    except GGUFError as e:  # hyper-parameters a graph cannot be built from: say so, the rest stands
        out["compute_not_modelled"] = e.one_line()
        return out
    out.update(gpu_compute_bytes=gpu.get("CUDA0"), host_compute_bytes=gpu.get("CPU"), cpu_compute_bytes=cpu.get("CPU"))
    return out


def lora_pairs(model: GGUFModel) -> dict[str, dict[str, tuple[int, ...]]]:
    """Base tensor name -> ``{"a": shape, "b": shape}`` (either may be missing)."""
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in model.tensors:
        for part in ("a", "b"):
            suffix = f".lora_{part}"
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], {})[part] = tuple(t.shape)
    return pairs


def adapter_summary(model: GGUFModel) -> dict[str, Any]:
    pairs = lora_pairs(model)
    ranks = sorted({p["a"][1] for p in pairs.values() if "a" in p and len(p["a"]) >= 2})
    layers = sorted({int(m.group(1)) for name in pairs if (m := _LAYER.match(name))})
    alora = model.metadata.get("adapter.alora.invocation_tokens")
    return {
        "adapter_type": _value(model, "adapter.type"),
        "alpha": _value(model, "adapter.lora.alpha"),
        "rank": ranks[0] if len(ranks) == 1 else None,
        "ranks": ranks,
        "tensors": len(pairs),
        "layers": layers,
        "base_tensors": sorted(pairs),
        "task_name": _value(model, "adapter.lora.task_name"),
        "alora_invocation_tokens": len(alora) if isinstance(alora, GGUFArray) else None,
    }


def imatrix_pairs(model: GGUFModel) -> list[str]:
    """Weights with both an ``.in_sum2`` and a ``.counts`` tensor, in file order."""
    names = {t.name for t in model.tensors}
    return [
        t.name[: -len(".in_sum2")]
        for t in model.tensors
        if t.name.endswith(".in_sum2") and t.name[: -len(".in_sum2")] + ".counts" in names
    ]


def imatrix_summary(model: GGUFModel) -> dict[str, Any]:
    return {
        "datasets": _strings(model, "imatrix.datasets"),
        "chunk_count": _value(model, "imatrix.chunk_count"),
        "chunk_size": _value(model, "imatrix.chunk_size"),
        "tensors": len(imatrix_pairs(model)),
    }


def control_vector_summary(model: GGUFModel) -> dict[str, Any]:
    layers = sorted({int(m.group(1)) for t in model.tensors if (m := _DIRECTION.match(t.name))})
    return {
        "model_hint": _value(model, "controlvector.model_hint"),
        "layer_count": _value(model, "controlvector.layer_count"),
        "layers": layers,
    }


def vocab_summary(model: GGUFModel) -> dict[str, Any]:
    tokens = model.metadata.get("tokenizer.ggml.tokens")
    return {
        "tokenizer_model": _value(model, "tokenizer.ggml.model"),
        "tokenizer_pre": _value(model, "tokenizer.ggml.pre"),
        "tokens": len(tokens) if isinstance(tokens, GGUFArray) else None,
    }


_SUMMARIES = {
    "projector": projector_summary,
    "adapter": adapter_summary,
    "imatrix": imatrix_summary,
    "control-vector": control_vector_summary,
    "vocab": vocab_summary,
}


def companion_summary(model: GGUFModel, kind: str | None = None) -> dict[str, Any] | None:
    """The summary that fits the file's kind (None for a model)."""
    fn = _SUMMARIES.get(kind or file_kind(model))
    return fn(model) if fn else None
