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

import json
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.models.hunyuan_dense import uses_mrope
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device

from .graph_arch_logs import CPU_LOGS, assert_compute_equal, assert_nodes_equal, cpu_model, cpu_runs, replay_cpu
from .graph_arch_logs import cpu_spec as _spec

MODELS = ("paddleocr", "hunyuan_vl", "deepseek2-ocr")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
REFUSED = (
    ("paddleocr", "blk.2.ffn_up.weight"),
    ("hunyuan_vl", "blk.1.attn_k_norm.weight"),
    ("deepseek2-ocr", "blk.0.ffn_gate.weight"),  # the leading dense layer's FFN
    ("deepseek2-ocr", "blk.3.ffn_down_shexp.weight"),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("ocr")
    return {n: cpu_model(n, out, smollm2_path) for n in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_no_repack(name: str) -> None:
    assert builder_of(_spec(name)["arch"]) is not None
    args = [line.split("\t")[2] for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{name}\t" in line]
    assert len(cpu_runs(name)) == len(args) >= 5
    for option in ("-fa off", "-np 3", "-ctk q8_0 -ctv q8_0", "--no-repack"):
        assert any(option in a for a in args), option


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
    model = ggufx.open(models[name])
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


@pytest.mark.parametrize(("name", "drop"), REFUSED)
def test_a_file_without_a_tensor_the_graph_needs_gets_the_generic_estimate(
    name: str, drop: str, smollm2_path: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = json.loads((CPU_LOGS / "tensors.json").read_text())[name]
    kept = [t for t in tensors if t[0] != drop]
    assert len(kept) == len(tensors) - 1
    path = tmp_path / "refused.gguf"
    header(path, _spec(name), kept, smollm2_path)
    model = ggufx.open(path)
    reason = f"the graph needs tensor {drop}, which the file lacks"
    assert graphsim.unbuildable(model) == reason
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    assert bd.compute_estimate and reason in bd.compute_estimate
