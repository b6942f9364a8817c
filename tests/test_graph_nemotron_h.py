"""The ``nemotron_h`` graph builder (graph/models/nemotron_h.py, llama.cpp's src/models/nemotron-h.cpp):
Mamba-2, attention (no RoPE) and squared-ReLU MLP layers, the final norm over every token kept as the
NextN seed, then the output rows. Its compute buffer against llama.cpp's CPU build (flash attention on and
off, -np 3 with its 513-token micro-batch, -np 2 and -ub 1024, a q8_0 cache, a q8_0 K cache without flash
attention) (Nemotron-H-8B's recorded runs: tests/test_graph_logs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
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

ARCH = "nemotron_h"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


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
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(smollm2_path: Path, tmp_path: Path) -> None:
    """With the pattern Mamba-2, MLP, attention repeated six times the replay leaves blocks of layers
    out (where the allocator comes back periodic); it allocates as the one of every layer."""
    kv = {"attention.head_count_kv": [0, 0, 2] * 6, "feed_forward_length": [0, 2048, 0] * 6, "block_count": 18}
    tensors = repeated(tensors_of(ARCH), 6, 3)
    model = variant(ARCH, tensors, smollm2_path, tmp_path / "nemotron_h-18.gguf", **kv)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0
    plans = graphsim._loaded(model, [], parse_args("-m x").offload).plans
    assert any(len(p.layers) < 18 for p in plans.values())  # (a one-token graph may not be periodic: all layers)


def test_a_file_without_the_convolution_bias_the_graph_adds_gets_the_generic_estimate(
    smollm2_path: Path, tmp_path: Path
) -> None:
    tensor = "blk.3.ssm_conv1d.bias"
    assert_refused(
        Refused(ARCH, tensor, f"the graph needs tensor {tensor}, which the file lacks"), smollm2_path, tmp_path
    )


def test_the_layer_kinds_are_llama_cpps(smollm2_path: Path, tmp_path: Path) -> None:
    """A layer is Mamba-2 where head_count_kv and feed_forward_length are both 0 (nemotron-h.cpp:13-15):
    with layer 1's feed_forward_length 0 it is a Mamba-2 layer, which its MLP tensors are not; with
    layer 2's head_count_kv 0 and feed_forward_length 2048 an MLP layer, which its attention is not."""
    kv = {"feed_forward_length": [0, 0, 0, 0, 2048, 0]}
    model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / "kinds.gguf", **kv)
    why = "layer 1 is a Mamba-2 layer (llama.cpp's kind), which has no tensor blk.1.ffn_down.weight"
    assert graphsim.unbuildable(model) == why
    kv = {"feed_forward_length": [0, 2048, 2048, 0, 2048, 0], "attention.head_count_kv": [0, 0, 0, 0, 0, 2]}
    model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / "kinds2.gguf", **kv)
    why = "layer 2 is an MLP layer (llama.cpp's kind), which has no tensor blk.2.attn_output.weight"
    assert graphsim.unbuildable(model) == why


def test_nextn_blocks_are_not_built_and_experts_need_their_counts(smollm2_path: Path, tmp_path: Path) -> None:
    """A NextN/MTP block is left to the generic estimate; experts (nemotron_h loads them too: the MLP layers
    become expert layers) need expert_used_count (tests/test_graph_nemotron_h_moe.py builds them)."""
    cases = (
        ("nextn_predict_layers", "nemotron_h graphs with a multi-token-prediction block are not built"),
        ("expert_count", "the graph needs 0 < expert_used_count <= expert_count <= 1024 (one count for every layer)"),
    )
    for key, why in cases:
        model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / f"{key}.gguf", **{key: 1})
        assert graphsim.unbuildable(model) == why


def test_the_published_shape_gets_the_graph(hole_models: dict[str, Path]) -> None:
    """Nemotron-H-8B's 52 layers (24 Mamba-2, 4 attention, 24 MLP) are built, not estimated."""
    model = ggufx.open(hole_models["nemotron-h-8b"])
    assert graphsim.unbuildable(model) is None and graphsim.simulated(model) is None
