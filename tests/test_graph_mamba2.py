"""The ``mamba2`` graph builder (graph/models/mamba.py, llama.cpp's src/models/mamba.cpp with
``LLM_ARCH_MAMBA2``): Mamba-2 layers only, the recurrent state its one memory. Its compute buffer against
llama.cpp's CPU build (-np 3 with its 513-token micro-batch, -np 2 and -np 4, -ub 256 and 1024)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import (
    CPU_LOGS,
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    cpu_model,
    cpu_runs,
    replay_cpu,
)
from .ssm_models import repeated, tensors_of, variant

ARCH = "mamba2"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


def test_the_cpu_runs_cover_parallel_sequences_and_micro_batches() -> None:
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 6
    for option in ("-np 3", "-np 2", "-np 4", "-ub 1024", "-ub 256"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c4096-np4-ub256"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Equal buffers could hide another order of the same nodes (the logits dominate this model's
    buffer): the graph itself equals the one llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op
    and size of every node, in order."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(smollm2_path: Path, tmp_path: Path) -> None:
    """With 12 identical layers the replay leaves blocks of layers out; it allocates as the one of
    every layer."""
    tensors = repeated(tensors_of(ARCH), 4, 3)
    model = variant(ARCH, tensors, smollm2_path, tmp_path / "mamba2-12.gguf", block_count=12)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0
    plans = graphsim._loaded(model, [], parse_args("-m x").offload).plans
    assert any(len(p.layers) < 12 for p in plans.values())


@pytest.mark.parametrize("tensor", ["blk.2.ssm_norm.weight", "blk.3.ssm_conv1d.bias"])
def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(
    tensor: str, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(
        Refused(ARCH, tensor, f"the graph needs tensor {tensor}, which the file lacks"), smollm2_path, tmp_path
    )


def test_a_missing_mamba2_dimension_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / "no-groups.gguf", **{"ssm.group_count": 0})
    assert graphsim.unbuildable(model) == "the graph needs a positive mamba2.ssm.group_count"
