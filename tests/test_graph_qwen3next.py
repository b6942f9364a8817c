"""The ``qwen3next`` graph builder (graph/models/qwen3next.py, llama.cpp's src/models/qwen3next.cpp):
Gated DeltaNet layers with the query/key heads repeated up to the value heads, a gated full-attention
layer every fourth, a mixture of experts with a sigmoid-gated shared expert in every layer. Its compute
buffer against llama.cpp's CPU build (flash attention on and off, -np 3 with its 513-token micro-batch,
a q8_0 cache) (Qwen3-Next-80B-A3B's recorded runs: tests/test_graph_logs.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device

from .graph_arch_logs import (
    CPU_LOGS,
    assert_compute_equal,
    assert_nodes_equal,
    assert_shortcut_is_whole,
    cpu_model,
    cpu_runs,
    replay_cpu,
)

ARCH = "qwen3next"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache() -> None:
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 3
    for option in ("-fa off", "-np 3", "-ctk q8_0"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(model_path: Path) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(model_path, "-c 8192", "-c 4096 -fa off -np 3")


def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = [t for t in json.loads((CPU_LOGS / "tensors.json").read_text())[ARCH] if t[0] != "blk.1.ssm_ba.weight"]
    path = tmp_path / "no-ba.gguf"
    header(path, MODELS[ARCH], tensors, smollm2_path)
    model = ggufx.open(path)
    assert graphsim.unbuildable(model) == "the graph needs tensor blk.1.ssm_ba.weight, which the file lacks"
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    assert bd.compute_estimate and "blk.1.ssm_ba.weight" in bd.compute_estimate
