#!/usr/bin/env python3
"""The header-only models the speed benchmarks load, written once into benchmarks/.data/speed.

    python benchmarks/bench_models.py        # prints the paths

* ``qwen36-27b``: the recorded runs' Qwen3.6 27B hybrid replica (64 layers: 48 Gated DeltaNet,
  16 attention), from the fixtures' make_headers.py;
* ``qwen3-235b-a22b``: a 94-layer MoE with the shape of Qwen3-235B-A22B (make_headers.py's
  ``qwen3moe_235b``), Q4_K_M-like types;
* Gemma 3 270M, the real file the test suite caches;
* ``deepseek4-flash``: DeepSeek-V4-Flash's published shape (43 layers: 40 alternating CSA and HCA layers,
  hyper-connections, 256 experts; 160 GiB of holes) and ``hrm-text-1b``: HRM-Text-1B's (128 cache slots
  over 32 blocks), the CPU fixtures' header-only models (tests/fixtures/llamacpp-logs-cpu: models.py,
  tensors.json, make_arch_headers.py), whose layer shortcut replays the blocks it leaves out (issue #21).

Each header is written with the SmolLM2 tokenizer padded to the vocabulary (as make_headers.py does)
and truncated to the model's full size: a hole, so no disk is used.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import CACHE  # noqa: E402

OUT = HERE / ".data" / "speed"
MAKE_HEADERS = HERE.parent / "tests" / "fixtures" / "llamacpp-logs" / "make_headers.py"
CPU_FIXTURES = HERE.parent / "tests" / "fixtures" / "llamacpp-logs-cpu"
# bench name -> the CPU fixtures' model (models.py) it is written from
CPU_MODELS = {"deepseek4-flash": "deepseek4-flash", "hrm-text-1b": "hrm_text-1b"}


def _make_headers():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_headers", MAKE_HEADERS)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def models() -> dict[str, Path]:
    """name -> path of each benchmark model, written on first use."""
    out = {
        "qwen36-27b": OUT / "qwen36-27b.gguf",
        "qwen3-235b-a22b": OUT / "qwen3-235b-a22b.gguf",
        "gemma3-270m": CACHE / "gemma-3-270m-q4_k_m.gguf",
    } | {name: OUT / f"{name}.gguf" for name in CPU_MODELS}
    todo = [n for n in ("qwen36-27b", "qwen3-235b-a22b") if not out[n].exists()]
    if todo:
        mh = _make_headers()
        OUT.mkdir(parents=True, exist_ok=True)
        tok = mh.tokenizer_fields(CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")
        makers = {
            "qwen36-27b": (mh.qwen35_27b, "Qwen3.6 27B"),
            "qwen3-235b-a22b": (mh.qwen3moe_235b, "Qwen3 235B A22B"),
        }
        for name in todo:
            make, title = makers[name]
            a, kv, t, nv = make()
            path = out[name]
            _, size = mh.write_model(path, a, f"{title} (header only)", kv, t, tok, nv)
            with open(path, "r+b") as f:
                f.truncate(size)
    todo = [n for n in CPU_MODELS if not out[n].exists()]
    if todo:
        _write_cpu_models(todo, out)
    return out


def _write_cpu_models(names: list[str], out: dict[str, Path]) -> None:
    """The header-only models of the CPU fixtures (make_arch_headers.header: the header, then a hole)."""
    import json

    sys.path.insert(0, str(CPU_FIXTURES))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_FIXTURES))
    tensors = json.loads((CPU_FIXTURES / "tensors.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = CPU_MODELS[name]
        header(out[name], MODELS[model], tensors[model], CACHE / "SmolLM2-135M-Instruct.Q4_1.gguf")


if __name__ == "__main__":
    for name, path in models().items():
        print(f"{name}\t{path}")
