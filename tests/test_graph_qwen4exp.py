"""``qwen4exp`` (src/models/qwen4exp.cpp, graph/models/qwen4exp.py) against llama.cpp's CPU build: qwen35moe's
Gated DeltaNet hybrid between low-rank hyper-connection mixers (four residual streams, the fused DSV4_HC_PRE and
DSV4_HC_POST ops of the CPU build), over ``llama_memory_hybrid_idx`` (the attention cache, the recurrent state and
the QSA indexer's cache). ``qwen4exp`` pools the indexer keys by 4 (``attention.compress_ratios``): its attention
layers attend over the QSA selection (pooled keys scattered into and gathered from the indexer cache, the
lightning indexer, the top pools and the tail, the mask scatter); ``qwen4exp-dense`` has no k-pool (dense
attention, an indexer cache of the raw key). Per run (flash attention on and off, -np 3, -ub 1024, q8_0 caches,
--n-cpu-moe 2, up to the 131,072-token training context) the compute buffer to the 0.0001 MiB of
``~llama_context``'s line, the graph node for node, the layer shortcut against the whole replay. ``qwen4exp-ple``
(tests/fixtures/llamacpp-logs-cpu/ple.py) adds a PLE module: every buffer, its convolution history in the
recurrent memory among them, and the graph."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import Breakdown, MiB, breakdown, hybrid_idx_layout, ple_conv_state
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.hparams import hparams
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
    assert_runs_cover,
    assert_shortcut_is_whole,
    compute_mib,
    cpu_model,
    cpu_runs,
    cpu_spec,
    replay_cpu,
)
from .graph_grow import assert_grown_shortcut_is_whole

BUILT = ("qwen4exp", "qwen4exp-dense")
K128 = "qwen4exp-k128"  # indexer keys of 128 over 4 heads: an indexer CUDA's lightning indexer takes
CPU_RUNS = [(m, rid) for m in (*BUILT, K128) for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
REFUSED = (
    Refused(
        "qwen4exp-dense", "blk.2.attn_q.weight", "the graph needs tensor blk.2.attn_q.weight, which the file lacks"
    ),
    Refused(
        "qwen4exp-dense", "output_hc_up.weight", "the graph needs tensor output_hc_up.weight, which the file lacks"
    ),
    Refused(
        "qwen4exp",
        "",
        "the graph needs one attention.compress_ratios above 1 that divides attention.indexer.top_k",
        add_kv=(("attention.compress_ratios", [0, 0, 4, 0, 0, 8, 8]),),
    ),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("qwen4exp")
    return {n: cpu_model(n, out, smollm2_path) for n in (*BUILT, K128)}


def test_the_runs_cover_the_options() -> None:
    assert builder_of("qwen4exp") == "qwen4exp"
    for name in BUILT:
        assert_runs_cover(name, ("-fa off -np 3", "-ub 1024", "-ctk q8_0 -ctv q8_0", "--n-cpu-moe 2"))
    assert any("-c 131072" in line for line in (CPU_LOGS / "matrix").read_text().splitlines() if "\tqwen4exp\t" in line)
    assert {m for m, _ in NODE_RUNS} == set(BUILT)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The mixers' RMS_NORM, MUL, low-rank gate and DSV4_HC_PRE before each block, the scatter weights and
    DSV4_HC_POST after it (the inject projection where the combine reaches it), the Gated DeltaNet's CONT
    before its convolution-state copy, the last trunk layer's GET_ROWS of block output, streams and scatter
    weights, the unfused final mixer (SIGMOID, MUL, CONT, three ADDs, SCALE)."""
    assert_nodes_equal(rid, models[name])


def test_the_layer_shortcut_equals_the_whole_replay(models: dict[str, Path]) -> None:
    for name in BUILT:
        assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


def _grown(name: str, n_trunk: int, out: Path, smollm2: Path) -> Path:
    """The model with ``n_trunk`` trunk layers (layer il as the small model's il % 3: the interval of 3 keeps
    the kinds; the k-pool on the attention layers and the MTP block) and its MTP block after them."""
    spec = json.loads(json.dumps(cpu_spec(name)))
    spec["kv"]["block_count"] = n_trunk + 1
    if "attention.compress_ratios" in spec["kv"]:
        spec["kv"]["attention.compress_ratios"] = [4 if il % 3 == 2 else 0 for il in range(n_trunk)] + [4]
    tensors = []
    for t in json.loads((CPU_LOGS / "tensors.json").read_text())[name]:
        m = re.fullmatch(r"blk\.(\d+)\.(.*)", t[0])
        if m is None:
            tensors.append(t)
        elif int(m.group(1)) == 6:  # the MTP block
            tensors.append([f"blk.{n_trunk}.{m.group(2)}", *t[1:]])
        else:
            tensors += [[f"blk.{il}.{m.group(2)}", *t[1:]] for il in range(n_trunk) if il % 3 == int(m.group(1))]
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    path = out / f"{name}-{n_trunk}.gguf"
    header(path, spec, tensors, smollm2)
    return path


@pytest.mark.parametrize("name", BUILT)
def test_the_layer_shortcut_equals_the_whole_replay_on_24_trunk_layers(
    name: str, smollm2_path: Path, tmp_path: Path
) -> None:
    """Grown to 24 trunk layers (two Gated DeltaNet layers and one attention layer repeated) and the MTP
    block: the shortened replay, where it is taken, allocates as the whole one, on the CPU and on a GPU."""
    assert_grown_shortcut_is_whole(_grown(name, 24, tmp_path, smollm2_path))


def test_the_indexer_cache_holds_the_key_and_its_pooled_slot(models: dict[str, Path]) -> None:
    """The k-pool file's indexer cache: key | pooled (2 x 64 values per cell) for the two trunk attention
    layers, as llama.cpp's second KV line of the run; without a k-pool the key alone."""
    model = ggufx.open(models["qwen4exp"])
    assert hybrid_idx_layout(model, hparams(model), layer_kinds(model)) == (128, (2, 5))
    text, bd = replay_cpu("qwen4exp-c8192", models["qwen4exp"])
    assert "llama_kv_cache: size =    4.00 MiB (  8192 cells,   2 layers" in text
    assert (bd.kv_indexer_bytes, bd.kv_indexer_layers) == (4 * MiB, 2)
    dense = ggufx.open(models["qwen4exp-dense"])
    assert hybrid_idx_layout(dense, hparams(dense), layer_kinds(dense)) == (64, (2, 5))
    dense_log = (CPU_LOGS / "qwen4exp-dense-c8192.log").read_text()
    assert "llama_kv_cache: size =    2.00 MiB (  8192 cells,   2 layers" in dense_log


def test_the_qsa_mask_grows_with_the_context(models: dict[str, Path]) -> None:
    """The selection's mask (n_kv + n_sel columns per token, F32 without flash attention) dominates: the QSA
    file's compute buffer is llama.cpp's at 8K and at 131,072 cells, and above the dense file's."""
    qsa = replay_cpu("qwen4exp-c8192", models["qwen4exp"])[1]
    dense = replay_cpu("qwen4exp-dense-c8192", models["qwen4exp-dense"])[1]
    assert compute_mib(qsa)["CPU"] == 60.893 > compute_mib(dense)["CPU"] == 42.0489
    assert compute_mib(replay_cpu("qwen4exp-c131072", models["qwen4exp"])[1])["CPU"] == 448.9945


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: r.drop_tensor or next(iter(dict(r.add_kv))))
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)


# -- PLE (tests/fixtures/llamacpp-logs-cpu/ple.py: qwen4exp plus a PLE module on layer 3, its uint64 arrays set
# by ggufx's metadata edit; recorded by ple.py into ple/) ------------------------------------------------------
sys.path.insert(0, str(CPU_LOGS))
import ple  # noqa: E402

sys.path.remove(str(CPU_LOGS))
PLE_LOGS = CPU_LOGS / "ple"


@pytest.fixture(scope="module")
def ple_model(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ple.write(tmp_path_factory.mktemp("qwen4exp-ple") / "qwen4exp-ple.gguf", smollm2_path)


def _ple_replay(rid: str, path: Path) -> tuple[str, Breakdown]:
    text = (PLE_LOGS / f"{rid}.log").read_text()
    assert "# exit status: 0" in text
    args = parse_args("-m x " + dict(ple.RUNS)[rid])
    return text, breakdown(ggufx.open(path), [], args.offload, args.context)


def test_the_ple_runs_are_recorded() -> None:
    assert {rid for rid, _ in ple.RUNS} == {p.stem for p in PLE_LOGS.glob("*.log")}
    assert {p.stem for p in (PLE_LOGS / "nodes").glob("*.tsv")} == set(ple.NODES)


@pytest.mark.parametrize("rid", [rid for rid, _ in ple.RUNS])
def test_ple_buffers_equal_llama_cpp(rid: str, ple_model: Path) -> None:
    """Every buffer: the weights (the n-gram table among them), the caches, the recurrent memory with the PLE
    layer's convolution history (llama.cpp's P), the output; the compute buffer to the 0.0001 MiB."""
    text, bd = _ple_replay(rid, ple_model)
    log = parse_log(text)
    for kind in ("model", "kv", "recurrent", "output"):
        mine: dict[str, float] = {}
        for b in bd.buffers:
            if b.kind == kind:
                mine[b.buft] = mine.get(b.buft, 0.0) + round(b.bytes / MiB, 2)
        assert {k: round(v, 2) for k, v in mine.items() if v} == {k: v for k, v in log.buffers[kind].items() if v}
    assert_compute_equal(text, bd)


def test_the_ple_history_is_a_row_of_its_own(ple_model: Path) -> None:
    """cache_ple_r_l3: (4 - 1) x 3 x 4 x 1,024 F32 values per sequence, llama.cpp's "P (f32): 0.14 MiB" (0.42 for
    three sequences), beside R and S."""
    model = ggufx.open(ple_model)
    assert ple_conv_state(model) == 36864
    text, bd = _ple_replay("qwen4exp-ple-c8192", ple_model)
    assert "P (f32):    0.14 MiB" in text
    hp = hparams(model)
    n_rec = sum(1 for k in layer_kinds(model) if k.state)
    assert n_rec == 4 and bd.recurrent_bytes == n_rec * 4 * (hp.n_embd_r + hp.n_embd_s) + 4 * 36864
    text3, bd3 = _ple_replay("qwen4exp-ple-c4096-faoff-np3", ple_model)
    assert "P (f32):    0.42 MiB" in text3 and bd3.recurrent_bytes == 3 * bd.recurrent_bytes


def test_the_ple_graph_is_llama_cpps_node_for_node(ple_model: Path) -> None:
    """The n-gram rows gathered before the streams; at layer 3 the history's gather (where layer 2's experts
    are expanded), the key, value, gate and gated value, the history written back, four shifted copies and
    kernel columns made contiguous, multiplied and added, the SiLU and its CONT, the two ADDs."""
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder

    rid = ple.NODES[0]
    theirs = []
    for line in (PLE_LOGS / "nodes" / f"{rid}.tsv").read_text().splitlines():
        if not line.startswith("#"):
            _, op, _, size = line.split("\t")
            if op not in graph_arch_logs._VIEWS:
                theirs.append((graph_arch_logs._OP.get(op, op), size))
    model = ggufx.open(ple_model)
    args = parse_args("-m x " + dict(ple.RUNS)[rid])
    sp = breakdown(model, [], args.offload, args.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], args.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder("qwen4exp")(c, g))
    mine = [(n.op, graph_arch_logs._fmt_size(n.nbytes)) for n in g.nodes if n.op not in graph_arch_logs._VIEWS]
    assert len(mine) == len(theirs) > 500
    for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        assert a[0].startswith(b[0][:10]) and a[1] == b[1], (i, a, b)


def test_the_ple_shortcut_equals_the_whole_replay(ple_model: Path) -> None:
    assert_shortcut_is_whole(ple_model, "-c 8192", "-c 4096 -fa off -np 3")


def test_ple_on_an_attention_layer_is_refused(smollm2_path: Path, tmp_path: Path) -> None:
    """llama.cpp refuses a PLE module on a layer without the recurrent memory (qwen4exp.cpp:157-162): the generic
    estimate, with the reason."""
    model = ggufx.open(ple.write(tmp_path / "bad.gguf", smollm2_path, **{"ple.layers": [2]}))
    why = "PLE layer 2 is not a Gated DeltaNet layer of the trunk (llama.cpp refuses the file)"
    assert graphsim.unbuildable(model) == why
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate and why in bd.compute_estimate
