"""The ``falcon-h1`` graph builder (graph/models/falcon_h1.py, llama.cpp's src/models/falcon-h1.cpp):
attention and a Mamba-2 mixer in every layer over one input norm built twice, the FFN norm named without
``.weight``. Its compute buffer against llama.cpp's CPU build (flash attention on and off, -np 3 with its
513-token micro-batch, -np 2 and -ub 1024, a q8_0 cache, a q8_0 K cache without flash attention)
(Falcon-H1-7B's recorded runs: tests/test_graph_logs.py)."""

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

ARCH = "falcon-h1"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp("falcon_h1"), smollm2_path)


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_big_batches_and_quantized_caches() -> None:
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 6
    for option in ("-fa off", "-np 3", "-np 2", "-ub 1024", "-ctk q8_0 -ctv q8_0", "-fa off -ctk q8_0"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order (the
    attention's output projection after the Mamba-2 state writes, the input norm twice)."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(smollm2_path: Path, tmp_path: Path) -> None:
    """With 12 identical layers the replay leaves blocks of layers out; it allocates as the one of
    every layer."""
    tensors = repeated(tensors_of(ARCH), 4, 3)
    model = variant(ARCH, tensors, smollm2_path, tmp_path / "falcon-h1-12.gguf", block_count=12)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0
    plans = graphsim._loaded(model, [], parse_args("-m x").offload).plans
    assert plans and all(len(p.layers) < 12 for p in plans.values())


@pytest.mark.parametrize("tensor", ["blk.1.ssm_conv1d.bias", "blk.2.ffn_norm"])
def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(
    tensor: str, smollm2_path: Path, tmp_path: Path
) -> None:
    """The convolution bias is optional to falcon-h1's loader but the graph adds it; the FFN norm is
    read as ``blk.N.ffn_norm``."""
    assert_refused(
        Refused(ARCH, tensor, f"the graph needs tensor {tensor}, which the file lacks"), smollm2_path, tmp_path
    )


def test_a_mamba2_dimension_the_graph_cannot_lay_out_gets_the_generic_estimate(
    smollm2_path: Path, tmp_path: Path
) -> None:
    """llama.cpp asserts that the heads divide ssm.inner_size (mamba-base.cpp:174)."""
    model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / "odd.gguf", **{"ssm.time_step_rank": 24})
    why = graphsim.unbuildable(model)
    assert why is not None and "ssm.inner_size a multiple of ssm.time_step_rank" in why
