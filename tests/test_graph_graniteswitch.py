"""Granite Switch (``graniteswitch``, src/models/granite-switch.cpp, graph/models/granite_switch.py; issue 25, h-gsw)
against llama.cpp's CPU build.

Granite with per-token switched LoRA adapters: the loader adds a one-head router attention layer at index
block_count (n_layer_all = block_count + 1, ``router_layer`` set, its KV cache layer kept by create_memory's
filter), the stacked Q4_K ``lora_a`` adapters are MUL_MAT_ID weights that go to CPU_REPACK when their rank is a
multiple of 8, and the graph runs the router lane (PAD, attention, CONT, CLAMP, ROUND, CPY to I32) before the
layers, each projection plus its switched delta (two MUL_MAT_ID).

Per model (the small one; without the optional scales and RoPE; with rank-12 adapters; at
granite-switch-4.1-3b-preview's dimensions): every buffer of every recorded run equal to llama.cpp's (the
compute buffer to the 0.0001 MiB of ``~llama_context``'s line); the graph against the one llama.cpp's scheduler
printed, node for node; the layer shortcut against the whole replay (on the small model and grown to 33 layers);
a file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.hparams import hparams
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device, place

from . import graph_arch_logs
from .graph_arch_logs import (
    CPU_LOGS,
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

MODELS = ("graniteswitch", "graniteswitch-plain", "graniteswitch-r12", "graniteswitch-3b")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = (
    "graniteswitch-c8192",
    "graniteswitch-c16384-q8_0",
    "graniteswitch-c4096-faoff-np3",
    "graniteswitch-plain-c4096-faoff-np3",
)
REFUSED = (
    Refused(
        "graniteswitch", "blk.2.ffn_down.lora_b", "the graph needs tensor blk.2.ffn_down.lora_b, which the file lacks"
    ),
    Refused(
        "graniteswitch", "blk.0.attn_qkv.weight", "the graph needs tensor blk.0.attn_qkv.weight, which the file lacks"
    ),
    Refused(  # granite-switch.cpp load_arch_hparams: ml.get_key(LLM_KV_ADAPTER_LORA_RANK, ...) is required
        "graniteswitch",
        "",
        "the graph needs graniteswitch.adapters.count and graniteswitch.adapters.lora_rank",
        drop_key="adapters.lora_rank",
    ),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS, smollm2_path, tmp_path_factory, "graniteswitch")


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_a_larger_ubatch() -> None:
    assert builder_of(graph_arch_logs.cpu_spec("graniteswitch")["arch"]) == "granite_switch"
    assert_runs_cover("graniteswitch", ("-fa off -np 3", "-ctk q8_0 -ctv q8_0", "-c 8192", "--no-repack", "-ub 1024"))
    assert {m for m, _ in CPU_RUNS} == set(MODELS)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_every_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    """The compute buffer to the four decimals of ``~llama_context``; the weights (CPU_Mapped, CPU_REPACK), the KV
    cache (block_count + 1 layers) and the output buffer to the two of their lines."""
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)
    theirs = parse_log(text).buffers
    for kind in ("model", "kv", "output"):
        mine: dict[str, float] = {}
        for b in bd.buffers:
            if b.kind == kind and b.bytes > 1:
                mine[b.buft] = mine.get(b.buft, 0) + b.bytes / 2**20
        assert {k: round(v, 2) for k, v in mine.items()} == {k: v for k, v in theirs[kind].items() if v}, kind


@pytest.mark.parametrize("name", MODELS)
def test_the_kv_cache_has_the_router_layer(name: str, models: dict[str, Path]) -> None:
    """llama_kv_cache's line: block_count + 1 layers (the router layer's one head of the head size included)."""
    hp = hparams(ggufx.open(models[name]))
    assert hp.router_layer == hp.n_layer and hp.n_head[-1] == hp.n_head_kv[-1] == 1
    assert len(hp.n_head) == len(hp.n_head_kv) == hp.n_layer + 1
    for rid in cpu_runs(name):
        text = (CPU_LOGS / f"{rid}.log").read_text()
        assert f"{hp.n_layer + 1} layers" in next(line for line in text.splitlines() if "llama_kv_cache: size" in line)


def test_the_adapters_of_a_rank_multiple_of_8_are_repacked(models: dict[str, Path]) -> None:
    """The 3-D Q4_K lora_a stacks are MUL_MAT_ID weights (llama-model-loader.cpp: router_layer >= 0 and a
    lora_a / lora_b suffix) that CPU_REPACK takes when their rows (the rank) come in groups of 8: rank 32 is
    repacked, rank 12 is not; the F16 lora_b never (not a repack type)."""
    args = parse_args("-m x -c 8192")
    for name, repacked in (("graniteswitch", True), ("graniteswitch-r12", False)):
        pl = place(ggufx.open(models[name]), [], args.offload)
        names = {t.name for t in pl.repack}
        assert ("blk.0.ffn_down.lora_a" in names) is repacked
        assert not any(n.endswith(".lora_b") for n in names)
        assert "blk.0.attn_qkv.weight" in names


@pytest.mark.parametrize("rid", NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(
    rid: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal buffers could hide another order of the same nodes: the graph equals the one llama.cpp's scheduler
    printed (GGML_SCHED_DEBUG=2, nodes/<id>.tsv), op and size of every node, in order: the router lane's PADs
    and attention into cache layer block_count, its CONT, CLAMP, ROUND and CPY before the first layer's deltas,
    each projection's two MUL_MAT_ID and ADD, the SiLU times up."""
    monkeypatch.setitem(graph_arch_logs._OP, "ROUND", "UNARY")
    name = next(m for m in sorted(MODELS, key=len, reverse=True) if rid.startswith(m + "-c"))
    assert_nodes_equal(rid, models[name])


def test_the_layer_shortcut_equals_the_whole_replay(models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(
        models["graniteswitch"], "-c 8192", "-c 4096 -fa off -np 3", "-c 16384 -ctk q8_0 -ctv q8_0"
    )


def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(smollm2_path: Path, tmp_path: Path) -> None:
    """The model grown to 33 layers (its last layer repeated): the shortened replay, where it is taken, allocates
    as the whole one, on the CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model("graniteswitch", 33, 1, tmp_path, smollm2_path))


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or r.drop_key or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)


def test_gpu_layers_count_the_router_layer(models: dict[str, Path]) -> None:
    """load_tensors (llama-model.cpp:1590) offloads the last -ngl of n_layer_all + 1 layers, n_layer_all =
    block_count + 1 with the router layer: -ngl 2 puts the router and the output layer on the GPU and no block,
    -ngl 3 the last block too, block_count + 2 every one."""
    model = ggufx.open(models["graniteswitch"])
    gpu = [Device("CUDA0", 80 << 30)]
    on_gpu = {
        ngl: [d is not None for d in place(model, gpu, parse_args(f"-m x -ngl {ngl}").offload).layer_device]
        for ngl in (1, 2, 3, 6)
    }
    assert on_gpu[1] == on_gpu[2] == [False] * 4 + [True]
    assert on_gpu[3] == [False] * 3 + [True] * 2
    assert on_gpu[6] == [True] * 5
