"""The generic estimate's reason names why there is no graph: gptj, which llama-arch.cpp names but llama.cpp 11434
does not load (llama_model_mapping has no case for it: tests/test_graph_misc_decoders.py runs llama.cpp on such a
file and reads the refusal)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import breakdown, estimate_reason
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import CPU_LOGS, cpu_spec

GPTJ = "llama.cpp 11434 does not load gptj (unsupported model architecture: llama_model_mapping has no case for it)"


@pytest.fixture(scope="module")
def gptj(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ggufx.GGUFModel:
    """The header-only GPT-J of models.py (GPT-J's keys at small dimensions), with the tensors of its layers."""
    path = tmp_path_factory.mktemp("gptj") / "gptj.gguf"
    spec = cpu_spec("gptj")
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    E, n_layer = spec["kv"]["embedding_length"], spec["kv"]["block_count"]
    tensors = [["token_embd.weight", [E, 8192], "Q8_0"], ["output_norm.weight", [E], "F32"]]
    tensors += [["output.weight", [E, 8192], "Q8_0"]]
    for il in range(n_layer):
        tensors += [[f"blk.{il}.attn_norm.weight", [E], "F32"]]
        tensors += [[f"blk.{il}.attn_{r}.weight", [E, E], "Q8_0"] for r in ("q", "k", "v", "output")]
        tensors += [[f"blk.{il}.ffn_up.weight", [E, 4 * E], "Q8_0"], [f"blk.{il}.ffn_down.weight", [4 * E, E], "Q8_0"]]
    header(path, spec, tensors, smollm2_path)
    return ggufx.open(path)


def test_gptj_estimate_says_llama_cpp_does_not_load_it(gptj: ggufx.GGUFModel) -> None:
    assert gptj.architecture == "gptj"
    assert estimate_reason(gptj, None) == f"generic decoder estimate: {GPTJ}"
    a = parse_args("-m x -c 4096 -dev none")
    bd = breakdown(gptj, [], a.offload, a.context)
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert compute and all(b.reason == f"generic decoder estimate: {GPTJ}" for b in compute)
    assert bd.compute_estimate is not None and GPTJ in bd.compute_estimate


def test_the_llama_cpp_source_has_no_loader_for_gptj() -> None:
    from .test_graph_diffusion import SRC

    text = (SRC / "src" / "llama-model.cpp").read_text() if (SRC / "src" / "llama-model.cpp").is_file() else ""
    if not text:
        pytest.skip(f"llama.cpp's source is not at {SRC}")
    mapping = text[text.index("llama_model_mapping(") :]
    mapping = mapping[: mapping.index("unsupported model architecture: '")]
    assert "case LLM_ARCH_LLAMA:" in mapping and "LLM_ARCH_GPTJ" not in mapping
