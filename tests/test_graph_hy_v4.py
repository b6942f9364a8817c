"""``hy_v4`` (HY V4; src/models/hy-v4.cpp, graph/models/hy_v4.py) against llama.cpp's CPU build: absorbed MLA with
q_lora, attention sinks and the sigmoid gate of the heads' output; four hyper-connection streams around every
attention and FFN (the F32 casts: CPY nodes that are their own second source), collapsed by ``hc_head``; a
dense first layer then sigmoid-routed experts plus the shared expert (and the routed experts' fused
SWIGLU_CLAMP); with DSA (``attention.indexer.top_k`` > 0) the lightning indexer of the "full" layers of
``attention.indexer.types`` whose top-k the "shared" layers reuse, the sparse mask; without DSA (no indexer
keys, or top_k 0) the plain K-only attention.

Per run (flash attention on and off, -np 3, -ub 1024, q8_0 caches, 1K to the 131,072-token training context,
--no-repack, --cpu-moe and --n-cpu-moe 2): the compute buffer to the 0.0001 MiB of ``~llama_context``'s line;
the graph against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the whole
replay; a file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import breakdown
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

MODELS = ("hy_v4", "hy_v4-full", "hy_v4-clamp")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
# recorded, their matrix lines commented out (test_arch_logs would fail on their KV buffer): see below
TOPK0 = {"hy_v4-topk0-c8192": "-c 8192", "hy_v4-topk0-c4096-faoff-np3": "-c 4096 -fa off -np 3"}
_REFUSED = (  # (model, tensor left out or "", keys added, unbuildable's reason)
    ("hy_v4", "blk.2.attn_sinks.weight", (), "the graph needs tensor blk.2.attn_sinks.weight, which the file lacks"),
    ("hy_v4", "blk.1.hc_ffn_fn.weight", (), "the graph needs tensor blk.1.hc_ffn_fn.weight, which the file lacks"),
    ("hy_v4", "output_hc_fn.weight", (), "the graph needs tensor output_hc_fn.weight, which the file lacks"),
    (
        "hy_v4",
        "blk.2.indexer.proj.weight",
        (),
        "the graph needs tensor blk.2.indexer.proj.weight, which the file lacks",
    ),
    (
        "hy_v4-full",
        "",
        (("expert_gating_func", 0),),
        "the graph needs hy_v4.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
    ),
    (
        "hy_v4",
        "",
        (("attention.indexer.types", [False, True, True, False]),),
        "the first layer has no indexer (hy-v4.cpp refuses: a shared layer needs an earlier full one)",
    ),
)
REFUSED = tuple(Refused(model, drop, reason, add_kv=kv) for model, drop, kv, reason in _REFUSED)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hy_v4")
    return {n: cpu_model(n, out, smollm2_path) for n in (*MODELS, "hy_v4-topk0")}


def test_the_runs_cover_the_options_and_contexts_up_to_training() -> None:
    assert builder_of("hy_v4") == "hy_v4"
    rows = [line.split("\t") for line in (CPU_LOGS / "matrix").read_text().splitlines() if line[:1] not in ("", "#")]
    args = [a for _, m, a in rows if m in MODELS]
    assert len(args) == len(CPU_RUNS) >= 20  # every run recorded
    for option in ("-fa off", "-np 3", "-ub 1024", "-ctk q8_0 -ctv q8_0", "--no-repack", "--cpu-moe",
                   "--n-cpu-moe 2", "-c 1024", "-c 32768", "-c 131072"):  # fmt: skip
        assert any(option in a for a in args), option
    assert _spec("hy_v4")["kv"]["context_length"] == 131072
    assert {m for m, _ in NODE_RUNS} == set(MODELS)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The hyper-connections' casts, gates, reductions and concatenations in llama.cpp's order (the residual's
    F32 copy of an FFN is visited before the FFN's pre-reduction), the indexer's keys and cache write before
    Q, the fill of the zeros before the indexer's scores, the rows picked before ``hc_head``; the routed
    experts' SWIGLU_CLAMP is a GLU op, as SWIGLU is."""
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


def _replay_topk0(rid: str, path: Path) -> tuple[str, object]:
    text = (CPU_LOGS / f"{rid}.log").read_text()
    assert "# exit status: 0" in text and f"-m @hy_v4-topk0 {TOPK0[rid]} " in text
    parsed = parse_args("-m x " + TOPK0[rid])
    return text, breakdown(ggufx.open(path), [], replace(parsed.offload, repack=True), parsed.context)


@pytest.mark.parametrize("rid", sorted(TOPK0))
def test_top_k_0_builds_the_plain_attention(rid: str, models: dict[str, Path]) -> None:
    """attention.indexer.top_k 0 with the indexer keys and types present: hy-v4.cpp turns DSA off (no
    indexer tensors, ``build_attn_inp_k``); the compute buffer is that of the model without the keys."""
    text, bd = _replay_topk0(rid, models["hy_v4-topk0"])
    assert_compute_equal(text, bd)  # type: ignore[arg-type]


@pytest.mark.parametrize("rid", sorted(TOPK0))
def test_top_k_0_has_no_indexer_cache(rid: str, models: dict[str, Path]) -> None:
    text, bd = _replay_topk0(rid, models["hy_v4-topk0"])
    kv = sum(b.bytes for b in bd.buffers if b.kind == "kv")  # type: ignore[attr-defined]
    assert round(kv / 2**20, 2) == parse_log(text).buffers["kv"]["CPU"]


def test_the_top_k_0_graph_is_llama_cpps_node_for_node(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    rid = "hy_v4-topk0-c4096-faoff-np3"
    monkeypatch.setattr(graph_arch_logs, "cpu_args", lambda r: ("hy_v4-topk0", TOPK0[r]))
    assert_nodes_equal(rid, models["hy_v4-topk0"])


@pytest.mark.parametrize(("name", "period"), [("hy_v4", 2), ("hy_v4-full", 3)])
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
