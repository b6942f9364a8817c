"""The ``gemma4`` graph builder (graph/models/gemma4.py, llama.cpp's src/models/gemma4.cpp) and Gemma 4's
memory: two attention geometries (sliding-window layers of head 256 beside full-attention layers of head
512 with fewer KV heads and RoPE frequency factors), the last ``shared_kv_layers`` layers attending over
earlier layers' KV without writing any, per-layer embeddings, K = V full-attention layers, the 26B-A4B's
routed experts beside a dense FFN, the layer scalar, final logit soft-capping. Its compute buffer against
llama.cpp's CPU build on an E2B-like and a 26B-A4B-like model (flash attention on and off, -np 3 with its
513-token micro-batch, q8_0 caches with their Hadamard rotations, --swa-full, -ub 1024, --no-repack) and on
Gemma 4 31B's published dimensions; its graph node for node; the replay that leaves layers out against
the whole one at E2B's, E4B's and 26B-A4B's layer counts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import ARCHS
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.model import GGUFModel

from .graph_arch_logs import (
    _OP,
    _VIEWS,
    CPU_LOGS,
    NODES,
    _fmt_size,
    assert_compute_equal,
    cpu_args,
    cpu_model,
    cpu_runs,
    replay_cpu,
)

ARCH = "gemma4"
MODELS = ("gemma4", "gemma4-moe", "gemma4-31b", "gemma4-lazy")
CPU_RUNS = cpu_runs(*MODELS)
NODE_RUNS = sorted(p.stem for p in NODES.glob("gemma4*.tsv"))


@pytest.fixture(scope="module")
def paths(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp(ARCH)
    return {name: cpu_model(name, out, smollm2_path) for name in MODELS}


def _spec() -> tuple[dict, dict]:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS as SPECS
    finally:
        sys.path.remove(str(CPU_LOGS))
    return SPECS, {"header": header}


def _variant(smollm2: Path, out: Path, name: str, pattern: list[bool], shared: int, same: bool = False) -> GGUFModel:
    """The CPU model ``name`` with len(pattern) layers (True: sliding window), the last ``shared`` of them
    reusing KV: each layer a copy of the model's first layer of its kind (sliding window or not, own KV
    or not; ``same``: the shared-KV layers copies of the layers with their own, same weights and FFN),
    the per-layer embeddings 256 x n_layer wide."""
    specs, h = _spec()
    spec = specs[name]
    src = json.loads((CPU_LOGS / "tensors.json").read_text())[name]
    n0 = spec["kv"]["block_count"]
    swa0 = spec["kv"]["attention.sliding_window_pattern"]
    kv0 = n0 - spec["kv"].get("attention.shared_kv_layers", 0)
    template = {}
    for il in range(n0):
        template.setdefault((swa0[il], il < kv0), il)
    n = len(pattern)

    def like(il: int) -> int:
        return template[(pattern[il], same or il < n - shared)]

    tensors = []
    for il in range(n):
        t = like(il)
        tensors += [
            [nm.replace(f"blk.{t}.", f"blk.{il}.", 1), ne, ty] for nm, ne, ty in src if nm.startswith(f"blk.{t}.")
        ]
    for nm, ne, ty in src:
        if not nm.startswith("blk."):
            if nm == "per_layer_token_embd.weight":
                ne = [256 * n, ne[1]]
            elif nm == "per_layer_model_proj.weight":
                ne = [ne[0], 256 * n]
            tensors.append([nm, ne, ty])
    heads = spec["kv"]["attention.head_count_kv"]
    kv_heads = [heads[like(il)] for il in range(n)]
    kv = {
        **spec["kv"],
        "block_count": n,
        "attention.sliding_window_pattern": pattern,
        "attention.head_count_kv": kv_heads,
    }
    if "attention.shared_kv_layers" in kv:
        kv["attention.shared_kv_layers"] = shared
    if isinstance(kv["feed_forward_length"], list):  # E2B's double-wide FFN in the shared-KV layers
        kv["feed_forward_length"] = [kv["feed_forward_length"][like(il)] for il in range(n)]
    path = out / f"{name}-{n}{'-same' if same else ''}.gguf"
    h["header"](path, {**spec, "kv": kv}, tensors, smollm2)
    return ggufx.open(path)


def _graph(model: GGUFModel, args: str) -> _Graph:
    a = parse_args("-m x " + args)
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ARCH)(c, g))
    return g


def test_the_builder_is_registered_and_the_runs_cover_the_options() -> None:
    assert ARCHS[ARCH].builder == ARCH
    for model in ("gemma4", "gemma4-moe"):
        runs = [r for r in CPU_RUNS if cpu_args(r)[0] == model]
        args = " ".join(cpu_args(r)[1] for r in runs)
        assert len(runs) >= 6, model
        for option in ("-fa off -np 3", "-ctk q8_0", "--swa-full", "-ub 1024", "--no-repack", "-c 16384 -fa off"):
            assert option in args, (model, option)
    assert len([r for r in CPU_RUNS if r.startswith("gemma4-31b")]) >= 1
    assert len(NODE_RUNS) >= 6


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, paths: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, paths[cpu_args(rid)[0]])
    assert graphsim.simulated(ggufx.open(paths[cpu_args(rid)[0]])) is None
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(rid: str, paths: dict[str, Path]) -> None:
    """Every node, op and size, in order, as llama.cpp's scheduler printed them (views aside; ggml_op_desc
    prints GEGLU for the GLU node and GELU, TANH for the unary ones)."""
    ops = {**_OP, "GEGLU": "GLU"}
    theirs = []
    for line in (NODES / f"{rid}.tsv").read_text().splitlines():
        if not line.startswith("#"):
            _, op, _, size = line.split("\t")
            if op not in _VIEWS:
                theirs.append((ops.get(op, op), size))
    model, args = cpu_args(rid)
    g = _graph(ggufx.open(paths[model]), args)
    mine = [(n.op, _fmt_size(n.nbytes)) for n in g.nodes if n.op not in _VIEWS]
    assert len(mine) == len(theirs)
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a[0].startswith(b[0][:10]) and a[1] == b[1], (i, a, b)


def test_the_shared_kv_layers_write_no_cache_and_k_eq_v_reuses_k(paths: dict[str, Path]) -> None:
    """E2B-like: layers 0-3 write K and V (two SET_ROWS each), the sliding-window layers 4-6 read layer 2's
    cache, the full-attention layer 7 reads 3's (llama.cpp's log: 'reuse layer 2, is_swa = 1', 'reuse
    layer 3, is_swa = 0'); layer kinds say which layers have a cache. 26B-A4B-like: the full-attention
    layer 5 has no attn_v, its V is K's projection (one K/V MUL_MAT, two norms of it)."""
    model = ggufx.open(paths["gemma4"])
    assert [k.kv for k in layer_kinds(model)] == [True] * 4 + [False] * 4
    assert [k.is_swa for k in layer_kinds(model)] == [True, True, True, False] * 2
    g = _graph(model, "-c 8192")
    writes = [n.name for n in g.nodes if n.op == "SET_ROWS" and n.name.startswith("cache_")]
    assert writes == [f"cache_{kv}_l{il}" for il in range(4) for kv in "kv"]
    reads = {
        il: {s.name for n in g.nodes if n.pos == il for s in n.src if s.name.startswith("cache_")} for il in range(8)
    }
    assert reads == {il: {f"cache_k_l{s}", f"cache_v_l{s}"} for il, s in enumerate([0, 1, 2, 3, 2, 2, 2, 3])}
    log = (CPU_LOGS / "gemma4-c8192.log").read_text()
    assert "layer   4: reuse layer 2, is_swa = 1" in log and "layer   7: reuse layer 3, is_swa = 0" in log
    g = _graph(ggufx.open(paths["gemma4-moe"]), "-c 8192")
    kv_proj = [n.name for n in g.nodes if n.pos == 5 and n.op == "MUL_MAT" and n.name.startswith(("Kcur", "Vcur"))]
    v_norm = [n.src[0].src[0].name for n in g.nodes if n.pos == 5 and n.op == "RMS_NORM" and n.name == "Vcur_normed-5"]
    assert kv_proj == ["Kcur-5"] and v_norm == ["Kcur-5"]


@pytest.mark.parametrize(
    ("name", "pattern", "shared", "same"),
    [
        ("gemma4", ([True] * 4 + [False]) * 7, 20, False),  # E2B: 35 layers, 4:1, the last 20 sharing KV
        ("gemma4", ([True] * 5 + [False]) * 7, 18, False),  # E4B: 42 layers, 5:1, the last 18 sharing KV
        ("gemma4", ([True] * 4 + [False]) * 7, 20, True),  # E2B with the shared-KV layers' weights alike
        ("gemma4-moe", ([True] * 5 + [False]) * 5, 0, False),  # 26B-A4B: 30 layers
    ],
    ids=["e2b", "e4b", "e2b-same-weights", "26b-a4b"],
)
def test_the_layer_shortcut_equals_the_whole_replay(
    name: str, pattern: list[bool], shared: int, same: bool, smollm2_path: Path, tmp_path: Path
) -> None:
    """The replay that leaves out repeated blocks of layers equals the whole one, also where the shared-KV
    layers have the weights of layers with their own KV (one layer signature): the allocator's
    periodicity checks refuse a plan that would leave such a layer out for another kind."""
    model = _variant(smollm2_path, tmp_path, name, pattern, shared, same)
    assert graphsim.unbuildable(model) is None
    assert [k.kv for k in layer_kinds(model)] == [il < len(pattern) - shared for il in range(len(pattern))]
    for args in ("-c 8192", "-c 4096 -fa off -np 3", "-c 32768 --swa-full -ub 2048", "-c 8192 -ctk q8_0 -ctv q8_0"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


def test_files_the_graph_cannot_be_built_from(smollm2_path: Path, tmp_path: Path) -> None:
    """A tensor the graph reads missing or of another shape, a fused attn_qkv, shared-KV layers without a
    sliding-window and a full-attention layer before them: named, and the generic estimate used."""
    specs, h = _spec()
    src = json.loads((CPU_LOGS / "tensors.json").read_text())["gemma4"]

    def made(tensors: list, **kv: object) -> GGUFModel:
        path = tmp_path / f"odd{len(list(tmp_path.iterdir()))}.gguf"
        h["header"](path, {**specs["gemma4"], "kv": {**specs["gemma4"]["kv"], **kv}}, tensors, smollm2_path)
        return ggufx.open(path)

    assert graphsim.unbuildable(made(src)) is None
    why = graphsim.unbuildable(made([t for t in src if t[0] != "blk.5.inp_gate.weight"]))
    assert why == "the graph needs tensor blk.5.inp_gate.weight, which the file lacks"
    why = graphsim.unbuildable(made([[n, [256] if n == "blk.3.attn_q_norm.weight" else ne, ty] for n, ne, ty in src]))
    assert why == "the graph needs tensor blk.3.attn_q_norm.weight of shape [512], not [256]"
    why = graphsim.unbuildable(made([*src, ["blk.0.attn_qkv.weight", [512, 2048], "Q4_K"]]))
    assert why is not None and "attn_qkv" in why
    why = graphsim.unbuildable(made(src, **{"attention.shared_kv_layers": 5}))
    assert why is not None and "shared-KV" in why
    model = made([t for t in src if t[0] != "blk.5.inp_gate.weight"])
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate is not None


def test_per_layer_embeddings_over_4_gib_have_their_own_mapped_buffer(paths: dict[str, Path]) -> None:
    """gemma4.cpp creates per_layer_token_embd TENSOR_READ_LAZY: over 4 GiB (a BF16 E4B's 10,752 x 262,144)
    llama.cpp's --lazy-mode auto maps it in a buffer of its own, a second CPU_Mapped line of exactly its
    size beside the one of the other tensors; under 4 GiB it is one of those."""
    a = parse_args("-m x -c 4096")
    mapped = {
        name: [
            b.bytes
            for b in breakdown(ggufx.open(paths[name]), [], a.offload, a.context).buffers
            if b.kind == "model" and b.buft == "CPU_Mapped"
        ]
        for name in ("gemma4", "gemma4-lazy")
    }
    assert len(mapped["gemma4"]) == 1
    assert len(mapped["gemma4-lazy"]) == 2 and mapped["gemma4-lazy"][1] == 5120 << 20
    log = (CPU_LOGS / "gemma4-lazy-c4096.log").read_text()
    assert log.count("CPU_Mapped model buffer size") == 2 and "CPU_Mapped model buffer size =  5120.00 MiB" in log
