"""The newest decoder families of llama.cpp 11434 (issue 25, h-newarch) whose graph ggufx rebuilds, against
llama.cpp's CPU build:

* ``hy_v3`` (src/models/hy-v3.cpp, graph/models/hy_v3.py): Q/K head norms before RoPE, a dense first
  layer (no router), then sigmoid-routed experts with the selection bias ``blk.N.exp_probs_b``, normalized
  and scaled weights, an ungated shared expert; the rows picked after the output norm (the MTP hidden
  state ``t_h_nextn`` an output);
* ``spark2_5`` (spark2-5.cpp, graph/models/spark2_5.py): sliding-window layers from the pattern array on
  their own cache and mask (also with --swa-full), the head-wise sigmoid gate of the attention output, a
  GELU FFN.

Per model: its compute buffer on its runs (flash attention on and off, -np 3 with its 513-token
micro-batch, q8_0 caches at 16384 cells, --no-repack), to the 0.0001 MiB of ``~llama_context``'s line;
its graph against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the whole replay; and a file llama.cpp would refuse gets the generic
estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import graph_arch_logs
from .graph_arch_logs import (
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_models,
    cpu_runs,
    replay_cpu,
)

MODELS = ("hy_v3", "spark2_5")
REFUSED = (
    Refused(  # a router without its shared expert (the loader takes both as not required; the graph uses both)
        "hy_v3",
        "blk.2.ffn_down_shexp.weight",
        "the graph needs tensor blk.2.ffn_down_shexp.weight, which the file lacks",
    ),
    Refused(  # the gating set to 4 (sqrt-softplus, not built here)
        "hy_v3",
        "",
        "the graph needs hy_v3.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 4",
        add_kv=(("expert_gating_func", 4),),
    ),
    Refused(
        "spark2_5", "blk.1.attn_gate.weight", "the graph needs tensor blk.1.attn_gate.weight, which the file lacks"
    ),
)
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS, smollm2_path, tmp_path_factory, "new-families")


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_no_repack(name: str) -> None:
    args = assert_runs_cover(name, ("-fa off", "-np 3", "-ctk q8_0 -ctv q8_0", "--no-repack"), at_least=4)
    assert any("-fa off" not in a for a in args)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("run", ["c4096-faoff-np3", "c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(
    name: str, run: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2, nodes/<id>.tsv), op and size of every node, in order
    (hy_v3: the selection bias's ADD, the rows picked after the output norm; spark2_5's GEGLU is a GLU op, as
    SwiGLU is)."""
    monkeypatch.setitem(graph_arch_logs._OP, "GEGLU", "GLU")
    assert_nodes_equal(f"{name}-{run}", models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
