"""Newer decoder families of llama.cpp 11434 (issue 25, h-small6) whose graph ggufx rebuilds, against llama.cpp's
CPU build:

* ``talkie`` (src/models/talkie.cpp, graph/models/talkie.py): weightless RMS norms, Q/K normed after RoPE with
  a per-head Q gain, the per-tensor output scales (and a file without them), the normed embeddings added to
  every layer, scaled logits; also at talkie-1930-13b's published dimensions (40 layers of 5120, 65,540 tokens);
* ``maple`` (maple.cpp, graph/models/maple.py): sliding-window layers from the pattern array (RoPE on them
  only), Q/K head norms, clamped-SwiGLU experts (``SWIGLU_CLAMP``: a GLU node);
* ``muse-glimmer`` (muse-glimmer.cpp, graph/models/muse_glimmer.py): a period-4 window (NoPE on the full
  layers), the sigmoid gate of the attention output, unpinned post norms, scaled logits soft-capped at the
  file's final_logit_softcapping, at llama_hparams' default of 30 without the key, not at all at 0;
* ``hrm_text`` (hrm-text.cpp, graph/models/hrm_text.py): the low and high stacks run h_cycles x (l_cycles + 1)
  passes over cache slots of their own that alias the file's 2 x layers_per_stack blocks (one and two low passes
  per cycle, with and without embedding_scale); also at HRM-Text-1B's dimensions (128 slots over 32 blocks).

Per model: its compute buffer on every recorded run to the 0.0001 MiB of ``~llama_context``'s line; its graph
against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the whole replay (on
the small models and grown to 33 layers); and a file llama.cpp would refuse gets the generic estimate, with
the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.models import hrm_text
from ggufx.analysis.memory.llamaargs import parse_args

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
from .graph_grow import assert_grown_shortcut_is_whole, grown_model

SMALL = ("talkie", "maple", "muse-glimmer", "hrm_text")
VARIANTS = ("talkie-noscale", "muse-glimmer-defcap", "muse-glimmer-nocap", "hrm_text-l2", "hrm_text-noscale")
MODELS = (*SMALL, *VARIANTS, "talkie-13b", "hrm_text-1b")
ARCHS = {"talkie": "talkie", "maple": "maple", "muse-glimmer": "muse_glimmer", "hrm_text": "hrm_text"}
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [
    *(f"{m}-{run}" for m in SMALL for run in ("c4096-faoff-np3", "c16384-q8_0")),
    "maple-c8192-swafull",
    *(f"{m}-c4096-faoff-np3" for m in VARIANTS),
]
REFUSED = (
    Refused(
        "talkie",
        "blk.2.layer_output_scale.weight",
        "the graph needs tensor blk.2.layer_output_scale.weight, which the file lacks",
    ),
    Refused("talkie", "output.weight", "the graph needs tensor output.weight, which the file lacks"),
    Refused(
        "maple", "blk.1.ffn_gate_inp.weight", "the graph needs tensor blk.1.ffn_gate_inp.weight, which the file lacks"
    ),
    Refused(  # maple.cpp throws without experts
        "maple", "", "the graph needs 0 < expert_used_count <= expert_count <= 1024", drop_key="expert_used_count"
    ),
    Refused(
        "muse-glimmer", "blk.3.attn_gate.weight", "the graph needs tensor blk.3.attn_gate.weight, which the file lacks"
    ),
    Refused("hrm_text", "hrm.z_l_init", "the graph needs tensor hrm.z_l_init, which the file lacks"),
    Refused(  # the high stack's block (blk.1 for one layer per stack) that the aliased slots 1 and 3 read
        "hrm_text", "blk.1.attn_gate.weight", "the graph needs tensor blk.1.attn_gate.weight, which the file lacks"
    ),
    Refused(  # hrm-text.cpp asserts block_count = layers_per_stack x h_cycles x (l_cycles + 1)
        "hrm_text",
        "",
        "the graph needs hrm_text.block_count = layers_per_stack x h_cycles x (l_cycles + 1) = 6",
        add_kv=(("hrm.l_cycles", 2),),
    ),
    Refused("hrm_text", "", "the graph needs hrm_text.hrm.h_cycles above 0", drop_key="hrm.h_cycles"),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS, smollm2_path, tmp_path_factory, "small6")


@pytest.mark.parametrize("name", SMALL)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache(name: str) -> None:
    assert builder_of(graph_arch_logs.cpu_spec(name)["arch"]) == ARCHS[name]
    args = assert_runs_cover(name, ("-fa off -np 3", "-ctk q8_0 -ctv q8_0", "-c 8192"), at_least=4)
    if name in ("maple", "muse-glimmer"):  # the sliding window
        assert any("--swa-full" in a for a in args)
    if name == "maple":  # the experts
        assert any("--n-cpu-moe 2" in a for a in args)


def test_every_model_has_runs_and_the_published_ones_two() -> None:
    assert {m for m, _ in CPU_RUNS} == set(MODELS)
    assert sum(m == "talkie-13b" for m, _ in CPU_RUNS) == sum(m == "hrm_text-1b" for m, _ in CPU_RUNS) == 2


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(rid: str, models: dict[str, Path]) -> None:
    """Equal buffers could hide another order of the same nodes: the graph equals the one llama.cpp's scheduler
    printed (GGML_SCHED_DEBUG=2, nodes/<id>.tsv), op and size of every node, in order (talkie: the weightless
    norms, the Q gain after RoPE, the output scales, the embedding skip; maple's clamped SwiGLU is a GLU op;
    muse-glimmer: the gate after the attention, RoPE on the window layers only; hrm_text: the passes' adds and
    stack norms, the aliased blocks' weights)."""
    name = next(m for m in sorted(MODELS, key=len, reverse=True) if rid.startswith(m + "-c"))
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", SMALL)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize(("name", "period"), [("talkie", 1), ("maple", 4), ("muse-glimmer", 4)])
def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(
    name: str, period: int, smollm2_path: Path, tmp_path: Path
) -> None:
    """The model grown to 33 layers (its last {period} repeated): the shortened replay, where it is taken,
    allocates as the whole one, on the CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model(name, 33, period, tmp_path, smollm2_path))


def test_hrm_text_slots_alias_the_stack_blocks_and_the_middle_of_each_pass_is_left_out(
    models: dict[str, Path],
) -> None:
    """HRM-Text-1B's 128 slots: 16 per pass, 8 passes (2 cycles of 3 low and 1 high), the low passes reading
    blocks 0-15 and the high ones 16-31. The slots' kinds (hrm_text.graph_kinds: a pass's first and last slot,
    the block read: six kinds) make the 14 middle slots of each pass one run: graphsim's plan keeps each
    pass's first and last slots and three middle ones (two, eleven left out, one), 40 slots of 128, and its
    shortened replay allocates as the whole one."""
    slots = [hrm_text.slot(16, 3, s) for s in range(128)]
    assert [b for _, _, _, b in slots[:64]] == [*range(16)] * 3 + [*range(16, 32)]
    assert slots[64:] == [(1, lp, il, b) for (_, lp, il, b) in slots[:64]]
    model = ggufx.open(models["hrm_text-1b"])
    a = parse_args("-m x -c 4096")
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    kinds = hrm_text.graph_kinds(c)
    assert len(set(kinds)) == 6 and kinds[1:15] == [kinds[1]] * 14 and kinds[33:47] == [kinds[33]] * 14
    plan = graphsim._plan(graphsim._layer_signatures(c, ld), 2, exact=True)
    assert len(plan.layers) == 40 and len(plan.checks) == 8
    assert plan.layers[:8] == (0, 1, 2, 14, 15, 16, 17, 18)  # slots 3-13 left out, then 19-29...
    graph_arch_logs.assert_shortcut_is_whole(models["hrm_text-1b"], "-c 4096", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or r.drop_key or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
