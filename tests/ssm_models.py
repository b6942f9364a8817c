"""Variants of the small header-only models of tests/fixtures/llamacpp-logs-cpu (models.py, tensors.json)
for the Mamba-2 family's builder tests: a tensor left out, metadata changed, the layers repeated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ggufx
from ggufx.model import GGUFModel

from .graph_arch_logs import CPU_LOGS


def tensors_of(name: str) -> list[list]:
    """The tensors (name, shape, type) that llama.cpp's loader wants for the model ``name``."""
    out: list[list] = json.loads((CPU_LOGS / "tensors.json").read_text())[name]
    return out


def variant(name: str, tensors: list[list], smollm2: Path, out: Path, **kv: object) -> GGUFModel:
    """The model ``name`` of models.py with these tensors and its ``{arch}.`` metadata changed by ``kv``."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = {**MODELS[name], "kv": {**MODELS[name]["kv"], **kv}}
    header(out, spec, tensors, smollm2)
    return ggufx.open(out)


def repeated(tensors: list[list], n_layer: int, times: int) -> list[list]:
    """The tensors of a model of ``n_layer`` layers with its layers repeated ``times`` times (layer
    ``il`` of copy ``k`` is layer ``il + k n_layer``)."""
    layers = [(t[0].split(".", 2), t[1], t[2]) for t in tensors if t[0].startswith("blk.")]
    more = [[f"blk.{int(il) + k * n_layer}.{rest}", s, ty] for k in range(1, times) for (_, il, rest), s, ty in layers]
    return tensors + more
