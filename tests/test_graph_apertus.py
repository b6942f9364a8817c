"""The ``apertus`` graph builder (graph/models/apertus.py, llama.cpp's src/models/apertus.cpp): Q/K head
norms, a non-gated FFN with the xIELU activation, its own output projection. Its compute buffer against
llama.cpp's CPU build on a 4-layer model (flash attention on and off, -np 3 with its 513-token
micro-batch, a q8_0 cache, -ub 1024), and its graph node for node."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufx.analysis.memory.archs import ARCHS
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import (
    CPU_LOGS,
    assert_compute_equal,
    assert_nodes_equal,
    assert_shortcut_is_whole,
    cpu_model,
    cpu_model_without,
    cpu_runs,
    replay_cpu,
)

ARCH = "apertus"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


def test_the_builder_is_registered_and_the_runs_cover_the_options() -> None:
    assert ARCHS[ARCH].builder == ARCH
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 5
    for option in ("-fa off -np 3", "-ctk q8_0", "-ub 1024", "--no-repack", "-c 16384 -fa off"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Up projection, xIELU (ggml_op_desc prints the unary kind, XIELU; the graph records UNARY), down
    projection: op and size of every node, in order, as llama.cpp's scheduler printed them."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(model_path: Path) -> None:
    assert_shortcut_is_whole(model_path, "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("tensor", ["output.weight", "blk.3.attn_k_norm.weight", "blk.1.ffn_up.weight"])
def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(
    tensor: str, smollm2_path: Path, tmp_path: Path
) -> None:
    """apertus.cpp creates the output projection required (no tied embeddings), and the Q/K norms."""
    model = cpu_model_without(ARCH, tmp_path / "odd.gguf", smollm2_path, tensor)
    assert graphsim.unbuildable(model) == f"the graph needs tensor {tensor}, which the file lacks"
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate and tensor in bd.compute_estimate


def test_a_file_without_the_xielu_parameters_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """apertus.cpp reads xielu.alpha_n/alpha_p/beta/eps required (keys without the architecture prefix)."""
    model = cpu_model_without(ARCH, tmp_path / "no-beta.gguf", smollm2_path, key="xielu.beta")
    assert graphsim.unbuildable(model) == "the graph needs the metadata key xielu.beta, which the file lacks"
