"""``bailingmoe3`` (Ling 2.5; src/models/bailingmoe3.cpp, graph/models/bailingmoe3.py) against llama.cpp's CPU
build: kimi-linear's hybrid of Kimi-delta-attention layers (``head_count_kv`` 0) and MLA layers on the K-only
cache, with Ling's full-rank KDA gates, RoPE'd MLA with q_lora and the head-wise sigmoid gate of its output,
M-RoPE where the file has ``rope.dimension_sections`` (``bailingmoe3-mrope``: four positions per token),
a dense first layer then sigmoid-routed experts plus the shared expert (with and without the SwiGLU clamps),
the rows picked after the output norm (the MTP hidden state an output); with its MTP block
(``bailingmoe3-mtp``) the block left out of the graph, and its KV cache kept, as llama.cpp keeps it (a
hybrid memory without a layer filter: ``Arch.nextn_kv``).

Per run (flash attention on and off, -np 2 and 3, -ub 1024, q8_0 caches, 8K to the 131,072-token training
context, --no-repack, --cpu-moe and --n-cpu-moe 2): the compute buffer to the 0.0001 MiB of
``~llama_context``'s line; the graph against the one llama.cpp's scheduler printed, node for node; the layer
shortcut against the whole replay; a file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import Breakdown, breakdown
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log

from . import graph_arch_logs
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

MODELS = ("bailingmoe3", "bailingmoe3-clamp", "bailingmoe3-mrope")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
# recorded, their matrix lines commented out (test_arch_logs would fail on their KV buffer): see below
MTP = {
    "bailingmoe3-mtp-c8192": "-c 8192",
    "bailingmoe3-mtp-c4096-faoff-np3": "-c 4096 -fa off -np 3",
    "bailingmoe3-mtp-c16384-q8_0": "-c 16384 -ctk q8_0 -ctv q8_0",
}
_REFUSED = (  # (tensor left out or "", keys added, unbuildable's reason)
    ("blk.3.attn_gate.weight", (), "the graph needs tensor blk.3.attn_gate.weight, which the file lacks"),
    ("blk.1.ssm_g_a.weight", (), "the graph needs tensor blk.1.ssm_g_a.weight of shape [1024, 1024]"),
    ("blk.2.exp_probs_b.bias", (), "the graph needs tensor blk.2.exp_probs_b.bias, which the file lacks"),
    (
        "",
        (("expert_gating_func", 0),),
        "the graph needs bailingmoe3.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
    ),
)
REFUSED = tuple(Refused("bailingmoe3", drop, reason, add_kv=kv) for drop, kv, reason in _REFUSED)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bailingmoe3")
    return {n: cpu_model(n, out, smollm2_path) for n in (*MODELS, "bailingmoe3-mtp")}


def test_the_runs_cover_the_options_and_contexts_up_to_training() -> None:
    assert builder_of("bailingmoe3") == "bailingmoe3"
    rows = [line.split("\t") for line in (CPU_LOGS / "matrix").read_text().splitlines() if line[:1] not in ("", "#")]
    args = [a for _, m, a in rows if m in MODELS]
    assert len(args) == len(CPU_RUNS) >= 13  # every run recorded
    for option in ("-fa off", "-np 3", "-np 2", "-ub 1024", "-ctk q8_0 -ctv q8_0", "--no-repack", "--cpu-moe",
                   "--n-cpu-moe 2", "-c 32768", "-c 131072"):  # fmt: skip
        assert any(option in a for a in args), option
    assert _spec("bailingmoe3")["kv"]["context_length"] == 131072
    assert {m for m, _ in NODE_RUNS} == set(MODELS)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The KDA layers' gate (MUL_MAT, ADD, MUL, SIGMOID, SCALE), the state written back before the output's
    CONT, the next layer's state gathers where llama.cpp's expansion puts them (the attention norm is not
    expanded early), the MLA's ROPEs, gate and CONT, the clamped SwiGLUs, the rows after the output norm."""
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize(("name", "period"), [("bailingmoe3", 3), ("bailingmoe3-clamp", 3)])
def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(
    name: str, period: int, smollm2_path: Path, tmp_path: Path
) -> None:
    """The model grown to 33 layers (its last {period} repeated): the shortened replay, where it is taken,
    allocates as the whole one, on the CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model(name, 33, period, tmp_path, smollm2_path))


def _replay_mtp(rid: str, path: Path) -> tuple[str, Breakdown]:
    text = (CPU_LOGS / f"{rid}.log").read_text()
    assert "# exit status: 0" in text and f"-m @bailingmoe3-mtp {MTP[rid]} " in text
    parsed = parse_args("-m x " + MTP[rid])
    return text, breakdown(ggufx.open(path), [], parsed.offload, parsed.context)


@pytest.mark.parametrize("rid", sorted(MTP))
def test_the_mtp_block_is_left_out_of_the_graph(rid: str, models: dict[str, Path]) -> None:
    """With its MTP block (a fifth layer, nextn tensors) the compute buffer is the one of the four trunk layers."""
    text, bd = _replay_mtp(rid, models["bailingmoe3-mtp"])
    assert_compute_equal(text, bd)


def test_the_mtp_graph_is_llama_cpps_node_for_node(models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    rid = "bailingmoe3-mtp-c4096-faoff-np3"
    monkeypatch.setattr(graph_arch_logs, "cpu_args", lambda r: ("bailingmoe3-mtp", MTP[r]))
    assert_nodes_equal(rid, models["bailingmoe3-mtp"])


@pytest.mark.parametrize("rid", sorted(MTP))
def test_the_mtp_layer_has_its_cache(rid: str, models: dict[str, Path]) -> None:
    text, bd = _replay_mtp(rid, models["bailingmoe3-mtp"])
    kv = sum(b.bytes for b in bd.buffers if b.kind == "kv")
    assert round(kv / 2**20, 2) == parse_log(text).buffers["kv"]["CPU"]


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: r.drop_tensor or "kv")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
