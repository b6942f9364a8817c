"""The OCR decoders of llama.cpp 11434 (issue 25) whose graph ggufx rebuilds, against llama.cpp's CPU build:

* ``paddleocr`` (PaddleOCR-VL: ERNIE-4.5-0.3B's loader, src/models/paddleocr.cpp): qwen2vl.cpp's graph, line
  for line (graph/models/qwen2vl.py): M-RoPE, four positions per token;
* ``hunyuan_vl`` (HunyuanOCR, src/models/hunyuan-vl.cpp, the graph hunyuan-dense reuses:
  graph/models/hunyuan_dense.py): K and Q heads normed after RoPE, XD-RoPE read as M-RoPE (four positions
  per token where the first two sections are positive);
* ``deepseek2-ocr`` (DeepSeek-OCR: deepseek2.cpp with ``is_ocr``, graph/models/deepseek2_ocr.py): multi-head
  attention over an ordinary K/V cache instead of MLA, DeepSeek V2's leading dense layer, routed and shared
  experts.

Per model: its compute buffer on its runs (flash attention on and off, -np 3, q8_0 caches at 16384 cells,
--no-repack) to the 0.0001 MiB of ``~llama_context``'s line; its graph against the one llama.cpp's
scheduler printed, node for node; the layer shortcut against the whole replay; a file that lacks a tensor
the graph needs gets the generic estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.graph.models.hunyuan_dense import uses_mrope

from .graph_arch_logs import (
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_models,
    cpu_runs,
    replay_cpu,
)

MODELS = ("paddleocr", "hunyuan_vl", "deepseek2-ocr")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
REFUSED = tuple(
    Refused(model, tensor, f"the graph needs tensor {tensor}, which the file lacks")
    for model, tensor in (
        ("paddleocr", "blk.2.ffn_up.weight"),
        ("hunyuan_vl", "blk.1.attn_k_norm.weight"),
        ("deepseek2-ocr", "blk.0.ffn_gate.weight"),  # the leading dense layer's FFN
        ("deepseek2-ocr", "blk.3.ffn_down_shexp.weight"),
    )
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS, smollm2_path, tmp_path_factory, "ocr")


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_no_repack(name: str) -> None:
    assert_runs_cover(name, ("-fa off", "-np 3", "-ctk q8_0 -ctv q8_0", "--no-repack"))


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("run", ["c4096-faoff-np3", "c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(name: str, run: str, models: dict[str, Path]) -> None:
    assert_nodes_equal(f"{name}-{run}", models[name])


def test_xd_rope_reads_four_positions_per_token(models: dict[str, Path]) -> None:
    """HunyuanOCR's sections make llama.cpp's positions input four per token: 3 x 4 bytes more per token
    of the micro-batch than the same graph without them (the 0.0059 MiB a one-position input missed)."""
    assert uses_mrope(ggufx.open(models["hunyuan_vl"]))
    assert not uses_mrope(ggufx.open(models["deepseek2-ocr"]))


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor}")
def test_a_file_without_a_tensor_the_graph_needs_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
