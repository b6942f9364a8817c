"""The ``gemma3n`` graph builder (graph/models/gemma3n.py, llama.cpp's src/models/gemma3n.cpp): AltUp's four
streams (predict, correct, unembed), LAuReL, per-layer embeddings, activation sparsity in the first 10
layers, the layers from 20 on attending over layers 18's and 19's cache without K or V of their own, final
logit soft-capping. Its compute buffer against llama.cpp's CPU build on a 22-layer model (flash attention
on and off at 16384 and 65536 cells, -np 3 with its 513-token micro-batch, a q8_0 cache, --swa-full, -ub 1024
and 256, --no-repack), its graph node for node, and
the replay that leaves layers out against the whole one at Gemma 3n E2B's and E4B's layer counts."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import ARCHS
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.model import GGUFModel

from .graph_arch_logs import CPU_LOGS, assert_compute_equal, assert_nodes_equal, cpu_model, cpu_runs, replay_cpu

ARCH = "gemma3n"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


def _variant(
    smollm2: Path, out: Path, n_layer: int = 22, drop: str = "", shape: tuple[str, list[int]] | None = None
) -> GGUFModel:
    """The CPU model with ``n_layer`` layers (each like layer 0, the per-layer embeddings 256 x n_layer
    wide), without tensor ``drop``, with one tensor of another ``shape``."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = []
    for name, ne, t in json.loads((CPU_LOGS / "tensors.json").read_text())[ARCH]:
        if name.startswith("blk.0."):
            tensors += [[name.replace("blk.0.", f"blk.{il}.", 1), ne, t] for il in range(n_layer)]
        elif not name.startswith("blk."):
            if name == "per_layer_token_embd.weight":
                ne = [256 * n_layer, ne[1]]
            elif name == "per_layer_model_proj.weight":
                ne = [ne[0], 256 * n_layer]
            tensors.append([name, ne, t])
    tensors = [[n, shape[1] if shape and n == shape[0] else ne, t] for n, ne, t in tensors if n != drop]
    header(out, {**MODELS[ARCH], "kv": {**MODELS[ARCH]["kv"], "block_count": n_layer}}, tensors, smollm2)
    return ggufx.open(out)


def test_the_builder_is_registered_and_the_runs_cover_the_options() -> None:
    assert ARCHS[ARCH].builder == ARCH
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 7
    for option in ("-fa off -np 3", "-ctk q8_0", "--swa-full", "-ub 1024", "--no-repack", "-c 16384 -fa off"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0", f"{ARCH}-c8192"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Every node of the 22 layers and of the AltUp streams around them, op and size, in order, as
    llama.cpp's scheduler printed them (ggml_op_desc prints TANH, RELU, GELU: UNARY ops here)."""
    assert_nodes_equal(rid, model_path)


def test_the_shared_kv_layers_write_no_cache(smollm2_path: Path, tmp_path: Path) -> None:
    """Of 25 layers, 0-19 write K and V into their cache (two SET_ROWS each); the sliding-window layers
    20-23 read layer 18's cache, the full-attention layer 24 reads 19's; the sparsity nodes (MEAN) are
    in layers 0-9 only."""
    a = parse_args("-m x -c 8192")
    model = _variant(smollm2_path, tmp_path / "g25.gguf", 25)
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(25))
    g = _Graph()
    g.expand(builder(ARCH)(c, g))
    writes = [n.name for n in g.nodes if n.op == "SET_ROWS" and n.name.startswith("cache_")]
    assert writes == [f"cache_{kv}_l{il}" for il in range(20) for kv in "kv"]
    for il, src in [(20, 18), (23, 18), (24, 19)]:
        reads = {s.name for n in g.nodes if n.pos == il for s in n.src if s.name.startswith("cache_")}
        assert reads == {f"cache_k_l{src}", f"cache_v_l{src}"}, il
    assert sorted({n.pos for n in g.nodes if n.op == "MEAN"}) == list(range(10))


@pytest.mark.parametrize("n_layer", [22, 30, 35])
def test_the_layer_shortcut_equals_the_whole_replay(n_layer: int, smollm2_path: Path, tmp_path: Path) -> None:
    """Sparse, plain and shared-KV layers share their layer signature: a plan that would leave out a
    layer of another kind than those it keeps is built whole, so both replays agree (22 layers, and
    E2B's 30 and E4B's 35)."""
    model = _variant(smollm2_path, tmp_path / f"g{n_layer}.gguf", n_layer)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -fa off -np 3", "-c 32768 --swa-full -ub 2048"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


def test_a_plan_that_leaves_out_another_kind_of_layer_is_built_whole(model_path: Path) -> None:
    """The plan the 22-layer model gets with two warm-up blocks keeps layers 0-9 (sparse) and leaves out
    10-19 (not sparse): the builder builds all 22; so it does when sparse layers are kept within 24
    layers before a plain one left out. A plan that leaves out only layers of the kind of every layer
    it keeps in the 24 before them (shared-KV layers 50-55 of a 60-layer model) is followed."""
    from ggufx.analysis.memory.graph.models.gemma3n import _layers

    a = parse_args("-m x -c 8192")
    model = ggufx.open(model_path)
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    plan = graphsim._plan(graphsim._layer_signatures(c, ld), 2)
    c.layers = list(plan.layers)
    assert c.layers == [*range(10), 20, 21] and _layers(c) == list(range(22))
    c.layers = [*range(10), 10, 11, 17, 18, 19, 20, 21]
    assert _layers(c) == list(range(22))
    c.layers = [*range(22)]
    assert _layers(c) is c.layers
    c.hp = replace(c.hp, n_layer=60)
    c.layers = [*range(50), *range(56, 60)]
    assert _layers(c) is c.layers
    c.layers = [*range(40), *range(46, 60)]  # 40-45 left out: 16-19, within 24 layers of 40, are plain
    assert _layers(c) == list(range(60))


@pytest.mark.parametrize(
    ("drop", "shape", "why"),
    [
        ("blk.3.laurel_l.weight", None, "the graph needs tensor blk.3.laurel_l.weight, which the file lacks"),
        ("per_layer_proj_norm.weight", None, "the graph needs tensor per_layer_proj_norm.weight, which the file lacks"),
        (
            "",
            ("blk.0.altup_predict_coef.weight", [4, 4]),
            "the graph needs tensor blk.0.altup_predict_coef.weight of shape [4, 16], not [4, 4]",
        ),
    ],
)
def test_a_file_the_graph_cannot_read_gets_the_generic_estimate(
    drop: str, shape: tuple[str, list[int]] | None, why: str, smollm2_path: Path, tmp_path: Path
) -> None:
    model = _variant(smollm2_path, tmp_path / "odd.gguf", drop=drop, shape=shape)
    assert graphsim.unbuildable(model) == why
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate and why in bd.compute_estimate


def test_a_file_of_20_layers_has_no_shared_kv_layer_and_is_not_built(smollm2_path: Path, tmp_path: Path) -> None:
    model = _variant(smollm2_path, tmp_path / "g20.gguf", 20)
    assert graphsim.unbuildable(model) == "the graph needs more than 20 layers (gemma3n's layers from 20 reuse the KV)"


def test_the_global_altup_and_per_layer_weights_sit_where_llama_cpp_puts_them(model_path: Path) -> None:
    """llama-arch.cpp's table: per_layer_model_proj and per_layer_proj_norm are layer 0's (created with
    block 0), altup_proj and altup_unembd_proj the output layer's, per_layer_token_embd the input's. With
    one GPU and -ngl 1 only the output layer is offloaded."""
    from ggufx.analysis.memory.placement import Device, OffloadParams, place

    model = ggufx.open(model_path)
    n_layer = model.metadata.get_int("gemma3n.block_count")
    assert n_layer
    for ngl, layer0_on_gpu in ((1, False), (n_layer + 1, True)):
        pl = place(model, [Device("CUDA0", 80 << 30)], OffloadParams(n_gpu_layers=ngl))
        where = {t.name: buft for t, buft in pl.tensors}
        assert where["altup_proj.weight"] == where["altup_unembd_proj.weight"] == "CUDA0"
        for name in ("per_layer_model_proj.weight", "per_layer_proj_norm.weight"):
            assert (where[name] == "CUDA0") is layer0_on_gpu, (ngl, name, where[name])
            assert where[name] == where["blk.0.attn_q.weight"]
        assert where["per_layer_token_embd.weight"] != "CUDA0"
