"""The ``nemotron_h_moe`` graph (graph/models/nemotron_h.py, llama.cpp's src/models/nemotron-h.cpp, which
nemotron-h-moe.cpp reuses): Mamba-2, attention and mixture-of-experts layers (sigmoid routing with a
selection bias, up-only squared-ReLU experts, normalized and scaled weights, a squared-ReLU shared expert),
Nemotron 3 Nano's shape and Super's latent experts. Its compute buffer against llama.cpp's CPU build (flash
attention on and off, -np 3 with its 513-token micro-batch, -np 2 and -ub 1024, q8_0 caches)."""

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

ARCH = "nemotron_h_moe"
LATENT = "nemotron_h_moe-latent"
CPU_RUNS = cpu_runs(ARCH, LATENT)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp(ARCH)
    return {name: cpu_model(name, out, smollm2_path) for name in (ARCH, LATENT)}


def _model_of(rid: str) -> str:
    return LATENT if rid.startswith(LATENT) else ARCH


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_big_batches_and_quantized_caches() -> None:
    lines = (CPU_LOGS / "matrix").read_text().splitlines()
    args = " ".join(line for line in lines if f"\t{ARCH}\t" in line or f"\t{LATENT}\t" in line)
    assert len(CPU_RUNS) >= 9 and any(r.startswith(LATENT) for r in CPU_RUNS)
    for option in ("-fa off", "-np 3", "-np 2", "-ub 1024", "-ctk q8_0 -ctv q8_0", "-fa off -ctk q8_0"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[_model_of(rid)])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0", f"{LATENT}-c4096-faoff-np3"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, models: dict[str, Path]) -> None:
    """The logits dominate these buffers: the graph itself equals the one llama.cpp's scheduler printed
    (GGML_SCHED_DEBUG=2), op and size of every node, in order: the routing (sigmoid, biased selection,
    normalized, scaled weights), the experts and the latent projections."""
    assert_nodes_equal(rid, models[_model_of(rid)])


def test_the_layer_shortcut_equals_the_whole_replay(smollm2_path: Path, tmp_path: Path) -> None:
    """With the pattern Mamba-2, experts, attention repeated six times the replay leaves blocks of
    layers out (where the allocator comes back periodic); it allocates as the one of every layer."""
    kv = {"attention.head_count_kv": [0, 0, 2] * 6, "feed_forward_length": [0, 2048, 0] * 6, "block_count": 18}
    model = variant(ARCH, repeated(tensors_of(ARCH), 6, 3), smollm2_path, tmp_path / "moe-18.gguf", **kv)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0
    plans = graphsim._loaded(model, [], parse_args("-m x").offload).plans
    assert any(len(p.layers) < 18 for p in plans.values())


def test_a_file_without_the_selection_bias_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    tensor = "blk.4.exp_probs_b.bias"
    assert_refused(
        Refused(ARCH, tensor, f"the graph needs tensor {tensor}, which the file lacks"), smollm2_path, tmp_path
    )


def test_expert_counts_the_graph_cannot_route_get_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    model = variant(ARCH, tensors_of(ARCH), smollm2_path, tmp_path / "used.gguf", expert_used_count=9)
    reason = graphsim.unbuildable(model)
    assert reason is not None and "expert_used_count <= expert_count" in reason


def test_latent_projections_of_another_width_get_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """The experts (and the latent projections, optional, where they are) work in moe_latent_size's width."""
    model = variant(LATENT, tensors_of(LATENT), smollm2_path, tmp_path / "latent.gguf", moe_latent_size=256)
    why = "the graph needs tensor blk.1.ffn_up_exps.weight of shape [256, 256, 8], not [512, 256, 8]"
    assert graphsim.unbuildable(model) == why
    # without a latent size (and its projections) the experts are as wide as the embeddings
    tensors = [t for t in tensors_of(LATENT) if "latent_up" not in t[0] and "latent_down" not in t[0]]
    model = variant(LATENT, tensors, smollm2_path, tmp_path / "no-latent.gguf", moe_latent_size=0)
    why = "the graph needs tensor blk.1.ffn_up_exps.weight of shape [1024, 256, 8], not [512, 256, 8]"
    assert graphsim.unbuildable(model) == why
