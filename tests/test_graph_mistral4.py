"""Mistral 4 (``mistral4``: deepseek2's loader and graph) on CUDA: ``build_moe_ffn`` asks for the routed
experts' down projection to read its input in F32 (llama-graph.cpp: ``ggml_prec_set_src(experts,
GGML_PREC_F32, 1)`` for LLM_ARCH_MISTRAL4), and CUDA's ``supports_op`` refuses a MUL_MAT_ID so marked
(ggml-cuda.cu:5329). The scheduler then finds no backend for the product next to its CUDA weight
(ggml-backend.cpp:1034-1047), runs it on the CPU with the weight copied there, and the MoE layers split
three ways (llama.cpp prints ``splits = 8`` for 4 layers where deepseek2 prints 2). Back on CUDA, the
weighted sum CUDA fuses keeps the product alive until its last add: the split's graph reads the product's
copy (``node->src[j]`` replaced before ``graph_optimize``, ggml-backend.cpp:1535, 1618), so the copy is
what stays alive. Together: every recorded CUDA run of Mistral 4 exact to ``~llama_context``'s 4 decimals
(they were 2 KB above; at 32K without flash attention, keeping the CPU product instead of its copy is
3 MiB above)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ggufx.analysis.memory.buffers import MiB

from .graph_arch_logs import backend_splits, scheduled


@pytest.mark.parametrize(
    ("rid", "cpu_down"), [("g-mistral4-ngl99-c32768", True), ("g-deepseek2-k2-ngl99-c32768", False)]
)
def test_mistral4_runs_the_f32_down_experts_on_the_cpu(rid: str, cpu_down: bool, hole_models: dict[str, Path]) -> None:
    g, sched, text, _, _ = scheduled(rid, hole_models)
    downs = {n.name: sched.names[n.backend] for n in g.nodes if n.name.startswith("ffn_moe_down-")}
    assert downs and set(downs.values()) == {"CPU" if cpu_down else "CUDA0"}
    # the rest of the experts' work stays next to its weights
    assert {sched.names[n.backend] for n in g.nodes if n.name.startswith(("ffn_moe_up-", "ffn_moe_weighted-"))} == {
        "CUDA0"
    }
    m = re.search(r"graph: nodes = \d+, splits = (\d+)", text)
    assert m is not None
    assert backend_splits(g) == int(m.group(1))


def test_the_fused_weighted_sum_keeps_the_copy_of_the_cpu_product(hole_models: dict[str, Path]) -> None:
    g, sched, _, _, _ = scheduled("g-mistral4-ngl99-c32768-faoff", hole_models)
    nodes, _, _ = sched.split(g)
    kept = {s.name for n in nodes if isinstance(n.seq, tuple) and n.seq[0] == "keep" for s in n.src}
    layers = [il for il in range(8) if any(n.name == f"ffn_moe_down-{il}" for n in g.nodes)]
    assert layers
    for il in layers:
        assert f"CUDA0#ffn_moe_down-{il}" in kept
        assert f"ffn_moe_down-{il}" not in kept


@pytest.mark.parametrize(
    "rid",
    [
        "g-mistral4-ngl99-c32768",
        "g-mistral4-ngl99-c32768-faoff",
    ],
)
def test_mistral4_cuda0_compute_to_four_decimals(rid: str, hole_models: dict[str, Path]) -> None:
    _, _, text, _, ours = scheduled(rid, hole_models)
    m = re.search(r"CUDA0 compute buffer size is +([\d.]+) MiB", text)
    assert m is not None
    assert f"{ours['CUDA0'] / MiB:.4f}" == m.group(1)
