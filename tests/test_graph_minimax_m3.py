"""``minimax-m3`` (MiniMax-M3; src/models/minimax-m3.cpp, graph/models/minimax_m3.py) against llama.cpp's CPU build:
MiniMax-M2's attention with per-head Q/K norms, leading dense layers, sigmoid experts with a shared expert
(swigluoai), and MiniMax Sparse Attention on the later layers: the indexer's keys in ``llama_kv_cache_msa``'s second
cache, the per-stream block selection and grouped flash attention of a micro-batch, the gathered blocks of one token
per stream; dense attention without flash attention.

Per run (flash attention on and off, -np 2 and 3, -ub 1, 2, 1024 and 2048, q8_0 and q4_0 caches, 4K to 128K,
--no-repack, --n-cpu-moe 2) of three models (1 dense layer, 2 KV heads, 128-value indexer keys, blocks of 64 and the
top 16; 2 dense layers, 4 KV heads, 64-value keys, blocks of 128 and the top 1; MiniMax-M3's published dimensions
at 8 of its 60 layers, 4K to 256K): every compute buffer to the 0.0001 MiB of ``~llama_context``'s line; the two
caches of ``llama_kv_cache_msa`` as llama.cpp prints them; the graph against the one llama.cpp's scheduler printed,
node for node; the layer shortcut against the whole replay; a file llama.cpp would refuse gets the generic
estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import parse_args

from . import graph_arch_logs
from .graph_arch_logs import (
    NODES,
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

MODELS = ("minimax-m3", "minimax-m3-var")
PUBLISHED = "minimax-m3-428b"  # the published dimensions at 8 of the 60 layers (models.py)
CPU_RUNS = [(m, rid) for m in (*MODELS, PUBLISHED) for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
REFUSED = (
    Refused(
        "minimax-m3",
        "blk.2.indexer.k_proj.weight",
        "the graph needs tensor blk.2.indexer.k_proj.weight, which the file lacks",
    ),
    Refused(
        "minimax-m3",
        "blk.1.ffn_up_shexp.weight",
        "the graph needs tensor blk.1.ffn_up_shexp.weight, which the file lacks",
    ),
    Refused(
        "minimax-m3", "blk.0.ffn_gate.weight", "the graph needs tensor blk.0.ffn_gate.weight, which the file lacks"
    ),
    Refused(
        "minimax-m3",
        "",
        "the graph needs one indexer head per KV head (minimax-m3.cpp asserts it)",
        add_kv=(("attention.indexer.head_count", 4),),
    ),
    Refused(
        "minimax-m3",
        "",
        "the graph needs minimax-m3.attention.indexer.block_size > 0, which the file lacks",
        drop_key="attention.indexer.block_size",
    ),
    Refused(
        "minimax-m3",
        "",
        "the graph needs minimax-m3.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
        drop_key="expert_gating_func",
    ),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models((*MODELS, PUBLISHED), smollm2_path, tmp_path_factory, "minimax_m3")


def test_the_runs_cover_the_options() -> None:
    args = assert_runs_cover(
        "minimax-m3",
        ("-fa off", "-np 3", "-np 2", "-ub 2", "-ub 1024", "-ub 2048", "-ctk q8_0", "-ctk q4_0", "--no-repack"),
        at_least=13,
    )
    assert any("-c 65536" in a for a in args) and any("--n-cpu-moe 2" in a for a in args)
    assert any(a == "-c 131072" for a in args)  # the training context (context_length)
    assert any(a.endswith("-ub 1") for a in args)  # the decode graph alone (one token per stream)
    assert len(cpu_runs("minimax-m3-var")) >= 6
    assert any("-c 262144" in a for a in assert_runs_cover(PUBLISHED, ("-fa off -np 3", "-ctk q8_0"), at_least=4))
    assert {m for m, _ in NODE_RUNS} == set(MODELS)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(
    name: str, rid: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indexer key and its cache write before Q, K and V; the block scores, top-k, block mask and its cast
    (CPY) per stream, the causal mask's F32 copy where the first sparse layer reads it, the streams concatenated;
    swigluoai is a GLU op, as SwiGLU is."""
    monkeypatch.setitem(graph_arch_logs._OP, "SWIGLU_OAI", "GLU")
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize(
    ("rid", "main", "indexer", "layers"),
    [
        # 4 layers x 8192 cells x (256 K + 256 V) f16; the indexer cache: 3 sparse layers x (128 K + 128 V)
        ("minimax-m3-c8192", 32.0, 12.0, 3),
        ("minimax-m3-c4096-faoff-np3", 18.0, 6.75, 3),  # 3 streams of 1536 cells
        # 5 layers x (512 + 512); 3 sparse layers x (64 K + 128 V), q8_0: 34 bytes per 32 values
        ("minimax-m3-var-c16384-q8_0", 85.0, 3 * 16384 * (68 + 136) / MiB, 3),
    ],
)
def test_the_indexer_cache_is_llama_cpps(
    rid: str, main: float, indexer: float, layers: int, models: dict[str, Path]
) -> None:
    """llama_kv_cache_msa's two ``llama_kv_cache``s: the main one of every layer, then the indexer's of the layers
    from ``leading_dense_block_count`` on, one head of ``indexer.key_length`` K and ``value_length`` V values (the
    hparams copy is not MLA), each its own buffer line."""
    name = "minimax-m3-var" if rid.startswith("minimax-m3-var") else "minimax-m3"
    text, bd = replay_cpu(rid, models[name])
    printed = [float(x.split("=")[1].split()[0]) for x in text.splitlines() if "CPU KV buffer size" in x]
    assert printed == [main, round(indexer, 2)]
    assert [round(b.bytes / MiB, 2) for b in bd.buffers if b.kind == "kv"] == printed
    assert (bd.kv_indexer_layers, round(bd.kv_indexer_bytes / MiB, 2)) == (layers, round(indexer, 2))


def _ops(path: Path, args: str) -> set[str]:
    model = ggufx.open(path)
    a = parse_args("-m x " + args)
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ld.hp.arch)(c, g))
    return {n.op for n in g.nodes}


def test_sparse_attention_needs_flash_attention_and_a_stream_per_sequence(models: dict[str, Path]) -> None:
    """minimax-m3.cpp:236-242: MSA with flash attention and one sequence or one stream per sequence; -fa off and a
    unified cache of several sequences attend densely (llama-server's -np 3 unifies its cache by default)."""
    path = models["minimax-m3"]
    assert {"POOL_2D", "TOP_K"} <= _ops(path, "-c 8192")
    assert {"POOL_2D", "TOP_K", "CONCAT"} <= _ops(path, "-c 4096 -np 3")
    assert not {"POOL_2D", "TOP_K"} & _ops(path, "-c 8192 -fa off")
    assert not {"POOL_2D", "TOP_K"} & _ops(path, "-c 4096 -np 3 -kvu")


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3", "-c 4096 -np 3")


def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(smollm2_path: Path, tmp_path: Path) -> None:
    """The model grown to 33 layers (its two last, sparse layers repeated): the shortened replay, where it is taken,
    allocates as the whole one, on the CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model("minimax-m3", 33, 2, tmp_path, smollm2_path))


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or r.drop_key or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
