"""The ``qwen2moe`` graph builder (graph/models/qwen2moe.py, llama.cpp's src/models/qwen2moe.cpp): the
llama-style attention with Q/K/V biases, experts with unnormalized softmax weights and a shared expert
gated by ``silu(x) / x``. Its compute buffer against llama.cpp's CPU build (flash attention on and off,
-np 3 with its 513-token micro-batch, q8_0 caches, -ub 1024, --no-repack), and its graph against the one
llama.cpp's scheduler printed, node for node."""

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
    cpu_model,
    cpu_runs,
    replay_cpu,
)

ARCH = "qwen2moe"
CPU_RUNS = cpu_runs(ARCH)
PUBLISHED = "qwen2moe-57b-a14b"
PUBLISHED_RUNS = cpu_runs(PUBLISHED)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


@pytest.fixture(scope="module")
def published_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(PUBLISHED, tmp_path_factory.mktemp(PUBLISHED), smollm2_path)


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache() -> None:
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 3
    for option in ("-fa off", "-np 3", "-ctk q8_0"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", PUBLISHED_RUNS)
def test_published_dimensions_equal_llama_cpp(rid: str, published_path: Path) -> None:
    """Qwen2-57B-A14B's published dimensions (28 layers, 64 experts of 2560 with 8 used, a shared expert of 20480, 151,936 tokens; --no-repack): llama.cpp's CPU buffer to the 0.0001 MiB."""
    assert len(PUBLISHED_RUNS) >= 3
    text, bd = replay_cpu(rid, published_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(model_path: Path) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    model = ggufx.open(model_path)
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = [
        t
        for t in json.loads((CPU_LOGS / "tensors.json").read_text())[ARCH]
        if t[0] != "blk.1.ffn_gate_inp_shexp.weight"
    ]
    path = tmp_path / "lacking.gguf"
    header(path, MODELS[ARCH], tensors, smollm2_path)
    model = ggufx.open(path)
    assert graphsim.unbuildable(model) == "the graph needs tensor blk.1.ffn_gate_inp_shexp.weight, which the file lacks"
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    assert bd.compute_estimate and "blk.1.ffn_gate_inp_shexp.weight" in bd.compute_estimate
