"""The mixture-of-experts builders that share one test plan, against llama.cpp's CPU build:

* ``qwen2moe`` (src/models/qwen2moe.cpp): llama-style attention with Q/K/V biases, experts with
  unnormalized softmax weights and a shared expert gated by ``silu(x) / x``;
* ``hunyuan-moe`` (hunyuan-moe.cpp): Q and K heads RMS-normed after RoPE, the routed experts plus a
  shared MLP;
* ``ernie4_5-moe`` (ernie4-5-moe.cpp): a leading dense layer, then experts with the selection bias and
  normalized softmax weights plus shared experts;
* ``minimax-m2`` (minimax-m2.cpp): RMS norms of the whole Q and K projections, partial rotary, experts
  routed by sigmoid gating with the selection bias;
* ``qwen3vlmoe`` (qwen3vlmoe.cpp): qwen3vl's decoder (Q/K head norms, M-RoPE, deepstack input rows whose
  slices the first 3 layers add) with experts for the FFN.

Per family: its compute buffer on the small model's runs (flash attention on and off, -np 3 with its
513-token micro-batch, q8_0 caches, -ub 1024, --no-repack) and on a published model's dimensions, to the
0.0001 MiB of ``~llama_context``'s line; its graph against the one llama.cpp's scheduler printed, node for
node; the layer shortcut against the whole replay; a file llama.cpp would refuse gets the generic
estimate, with the reason."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Family:
    arch: str
    published: str  # the model of published dimensions (models.py), run with --no-repack
    drop_tensor: str = ""  # what the refused file lacks: a tensor the graph reads...
    drop_key: str = ""  # ...or a metadata key (without the architecture's prefix)
    reason: str = ""  # graphsim.unbuildable's words for it
    named: str = ""  # what the compute estimate's note names


FAMILIES = {
    f.arch: f
    for f in (
        Family(
            "qwen2moe",
            "qwen2moe-57b-a14b",
            drop_tensor="blk.1.ffn_gate_inp_shexp.weight",
            reason="the graph needs tensor blk.1.ffn_gate_inp_shexp.weight, which the file lacks",
            named="blk.1.ffn_gate_inp_shexp.weight",
        ),
        Family(
            "hunyuan-moe",
            "hunyuan-moe-a13b",
            drop_tensor="blk.1.attn_q_norm.weight",
            reason="the graph needs tensor blk.1.attn_q_norm.weight, which the file lacks",
            named="blk.1.attn_q_norm.weight",
        ),
        Family(
            "ernie4_5-moe",
            "ernie4_5-moe-21b-a3b",
            drop_tensor="blk.2.ffn_gate_exps.weight",
            reason="ernie4_5-moe graphs without gate experts (blk.2.ffn_gate_exps.weight) are not simulated",
            named="blk.2.ffn_gate_exps.weight",
        ),
        Family(  # llama.cpp aborts building the graph of a file without it (build_moe_ffn's switch)
            "minimax-m2",
            "minimax-m2-230b-a10b",
            drop_key="expert_gating_func",
            reason="the graph needs minimax-m2.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
            named="expert_gating_func",
        ),
        Family(  # llama.cpp reads it required
            "qwen3vlmoe",
            "qwen3vlmoe-30b-a3b",
            drop_key="rope.dimension_sections",
            reason="the graph needs the metadata key qwen3vlmoe.rope.dimension_sections, which the file lacks",
            named="rope.dimension_sections",
        ),
    )
}
CPU_RUNS = [(a, rid) for a in FAMILIES for rid in cpu_runs(a)]
PUBLISHED_RUNS = [(a, rid) for a, f in FAMILIES.items() for rid in cpu_runs(f.published)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("moe-families")
    return {n: cpu_model(n, out, smollm2_path) for f in FAMILIES.values() for n in (f.arch, f.published)}


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache(arch: str) -> None:
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{arch}\t" in line)
    assert len(cpu_runs(arch)) >= 3 and len(cpu_runs(FAMILIES[arch].published)) >= 3
    for option in ("-fa off", "-np 3", "-ctk q8_0"):
        assert option in args


@pytest.mark.parametrize(("arch", "rid"), CPU_RUNS + PUBLISHED_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(arch: str, rid: str, models: dict[str, Path]) -> None:
    name = arch if (arch, rid) in CPU_RUNS else FAMILIES[arch].published
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("run", ["c4096-faoff-np3", "c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(arch: str, run: str, models: dict[str, Path]) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order."""
    assert_nodes_equal(f"{arch}-{run}", models[arch])


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_layer_shortcut_equals_the_whole_replay(arch: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(models[arch], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(arch: str, smollm2_path: Path, tmp_path: Path) -> None:
    f = FAMILIES[arch]
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = {**MODELS[arch], "kv": {k: v for k, v in MODELS[arch]["kv"].items() if k != f.drop_key}}
    tensors = [t for t in json.loads((CPU_LOGS / "tensors.json").read_text())[arch] if t[0] != f.drop_tensor]
    path = tmp_path / "refused.gguf"
    header(path, spec, tensors, smollm2_path)
    model = ggufx.open(path)
    assert graphsim.unbuildable(model) == f.reason
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    assert bd.compute_estimate and f.named in bd.compute_estimate
