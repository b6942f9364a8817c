"""``kimi-k3`` (Kimi-K3; src/models/kimi-k3.cpp, graph/models/kimi_k3.py) against llama.cpp's CPU build: kimi-linear's
hybrid of Kimi-delta-attention layers (``head_count_kv`` 0) and MLA layers without RoPE on the K-only cache,
with the cross-layer residual attention (checkpoints every ``attn_res.block_size`` layers mixed back by a
softmax and ``DSV4_HC_PRE``), the latent MoE (experts between ``ffn_routed_down`` and ``ffn_routed_up``, the
router over the full width), the situ activation in every FFN, the full-rank KDA output gate. ``kimi-k3``
has the softplus decay gate, MLA without q_lora or output gate, blocks of 2; ``kimi-k3-var`` the
``kda.gate_lower_bound`` gate, q_lora, ``attn_gate``, ``ffn_routed_norm``, normalized weights, situ without
its linear branch, blocks of 3.

Per run (flash attention on and off, -np 2 and 3, -ub 1024, q8_0 caches, 8K to the 131,072-token training
context, --no-repack, --cpu-moe and --n-cpu-moe 2): the compute buffer to the 0.0001 MiB of
``~llama_context``'s line; the graph against the one llama.cpp's scheduler printed, node for node; the layer
shortcut against the whole replay; a file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufx.analysis.memory.archs import builder_of

from .graph_arch_logs import (
    CPU_LOGS,
    NODES,
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_shortcut_is_whole,
    cpu_model,
    cpu_runs,
    replay_cpu,
)
from .graph_arch_logs import cpu_spec as _spec
from .graph_grow import assert_grown_shortcut_is_whole, grown_model

MODELS = ("kimi-k3", "kimi-k3-var")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
_REFUSED = (  # (model, tensor left out or "", keys added, unbuildable's reason)
    ("kimi-k3", "blk.2.ssm_g.weight", (), "the graph needs tensor blk.2.ssm_g.weight of shape [1024, 1024]"),
    (
        "kimi-k3",
        "blk.1.ffn_res_score.weight",
        (),
        "the graph needs tensor blk.1.ffn_res_score.weight, which the file lacks",
    ),
    ("kimi-k3", "output_res_score.weight", (), "the graph needs tensor output_res_score.weight, which the file lacks"),
    ("kimi-k3-var", "blk.3.attn_q_b.weight", (), "the graph needs tensor blk.3.attn_q_b.weight, which the file lacks"),
    (
        "kimi-k3",
        "",
        (("expert_gating_func", 0),),
        "the graph needs kimi-k3.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
    ),
)
REFUSED = tuple(Refused(model, drop, reason, add_kv=kv) for model, drop, kv, reason in _REFUSED)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("kimi-k3")
    return {n: cpu_model(n, out, smollm2_path) for n in MODELS}


def test_the_runs_cover_the_options_and_contexts_up_to_training() -> None:
    assert builder_of("kimi-k3") == "kimi_k3"
    rows = [line.split("\t") for line in (CPU_LOGS / "matrix").read_text().splitlines() if line[:1] not in ("", "#")]
    args = [a for _, m, a in rows if m in MODELS]
    assert len(args) == len(CPU_RUNS) >= 15  # every run recorded
    for option in ("-fa off", "-np 3", "-np 2", "-ub 1024", "-ctk q8_0 -ctv q8_0", "--no-repack", "--cpu-moe",
                   "--n-cpu-moe 2", "-c 32768", "-c 131072"):  # fmt: skip
        assert any(option in a for a in args), option
    assert _spec("kimi-k3")["kv"]["context_length"] == 131072
    assert {m for m, _ in NODE_RUNS} == set(MODELS)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The residual mixes where llama.cpp's expansion reaches them (the next layer's checkpoint scores
    before this layer's KDA output CONT), the latent projection after the routing weights, situ's SCALE,
    TANH, SCALE, SIGMOID, MUL around each gate and up projection, the rows after the last mix."""
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize(("name", "period"), [("kimi-k3", 3), ("kimi-k3-var", 3)])
def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(
    name: str, period: int, smollm2_path: Path, tmp_path: Path
) -> None:
    """The model grown to 33 layers (its last {period} repeated): the shortened replay, where it is taken,
    allocates as the whole one, on the CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model(name, 33, period, tmp_path, smollm2_path))


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
