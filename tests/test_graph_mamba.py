"""The ``mamba`` graph builder (graph/models/mamba.py, llama.cpp's src/models/mamba.cpp with
``build_mamba_layer``): Mamba-1 layers only (a decay per state, dt of its own rank, and Falcon-Mamba's RMS
norms of dt, B and C). Its compute buffer against llama.cpp's CPU build (-np 2, 3 and 4, -ub 256 and 1024)."""

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

ARCH = "mamba"
DTBC = "mamba-dtbc"  # Falcon-Mamba: ssm.dt_b_c_rms
CPU_RUNS = cpu_runs(ARCH, DTBC)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp(ARCH)
    return {name: cpu_model(name, out, smollm2_path) for name in (ARCH, DTBC)}


def _model_of(rid: str) -> str:
    return DTBC if rid.startswith(DTBC) else ARCH


def test_the_cpu_runs_cover_parallel_sequences_micro_batches_and_normed_dt_b_c() -> None:
    lines = (CPU_LOGS / "matrix").read_text().splitlines()
    args = " ".join(line for line in lines if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 7 and any(r.startswith(DTBC) for r in CPU_RUNS)
    for option in ("-np 3", "-np 2", "-np 4", "-ub 1024", "-ub 256"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[_model_of(rid)])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c4096-np4-ub256", f"{DTBC}-c4096-np3"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, models: dict[str, Path]) -> None:
    """The logits dominate these buffers: the graph itself equals the one llama.cpp's scheduler printed
    (GGML_SCHED_DEBUG=2), op and size of every node, in order (the next layer's convolution state read
    before this layer's output, the norms of dt, B and C)."""
    assert_nodes_equal(rid, models[_model_of(rid)])


def test_the_layer_shortcut_equals_the_whole_replay(smollm2_path: Path, tmp_path: Path) -> None:
    """With 12 identical layers the replay leaves blocks of layers out; it allocates as the one of
    every layer."""
    model = variant(ARCH, repeated(tensors_of(ARCH), 4, 3), smollm2_path, tmp_path / "mamba-12.gguf", block_count=12)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0
    plans = graphsim._loaded(model, [], parse_args("-m x").offload).plans
    assert any(len(p.layers) < 12 for p in plans.values())


def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    tensor = "blk.2.ssm_x.weight"
    assert_refused(
        Refused(ARCH, tensor, f"the graph needs tensor {tensor}, which the file lacks"), smollm2_path, tmp_path
    )


def test_an_inner_size_llama_cpp_refuses_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """Only an expansion factor of 2 is supported (mamba.cpp:42-44)."""
    model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / "inner.gguf", **{"ssm.inner_size": 3072})
    why = "the graph needs mamba.ssm.conv_kernel >= 2 and ssm.inner_size = 2 x embedding_length"
    assert graphsim.unbuildable(model) == why
