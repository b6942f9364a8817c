"""``glm5-next`` (GLM-5.3-Flash; src/models/glm5-next.cpp, graph/models/glm5_next.py) against llama.cpp's CPU build:
Kimi-delta-attention layers and nope-only MLA layers sparse over a k-pool DSA indexer, between mHC residual streams
(the fused DSV4_HC_COMB, DSV4_HC_PRE and DSV4_HC_POST of the CPU build), over ``llama_memory_hybrid_idx`` (the MLA
cache, the recurrent state, the indexer cache of token keys, pool gates and pooled keys). ``glm5-next`` has shared
indexer layers (``attention.indexer.types``), a k-pool of 4 and the selected tail (``kpool_select_tail``'s default);
``glm5-next-var`` an indexer in every MLA layer, a k-pool of 8 without the tail, ``kda.gate_lower_bound``, the
clamped SwiGLU and unnormalized expert weights.

Per run (flash attention on and off, -np 2 and 3, -ub 1024, the gather path of -ub 16 and -ub 8, q8_0 caches, 8K to
the 131,072-token training context, --n-cpu-moe 2): the compute buffer to the 0.0001 MiB of ``~llama_context``'s
line; the graph against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the whole
replay; a file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import MiB, breakdown, hybrid_idx_layout
from ggufx.analysis.memory.hparams import hparams

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

MODELS = ("glm5-next", "glm5-next-var", "glm5-next-h32")  # h32: an indexer CUDA's lightning indexer takes
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
REFUSED = (
    Refused("glm5-next", "blk.4.attn_k_b.weight", "the graph needs tensor blk.4.attn_k_b.weight, which the file lacks"),
    Refused(
        "glm5-next",
        "blk.5.indexer_compressor_ape.weight",
        "the graph needs tensor blk.5.indexer_compressor_ape.weight, which the file lacks",
    ),
    Refused(
        "glm5-next",
        "",
        "the first MLA layer has no indexer (llama.cpp asserts: a shared layer needs an earlier full one)",
        add_kv=(("attention.indexer.types", [True, True, False, True, False, True]),),
    ),
    Refused(
        "glm5-next-var",
        "",
        "the graph needs nope-only MLA (rope.dimension_count 0: glm5-next.cpp asserts it)",
        add_kv=(("rope.dimension_count", 64),),
    ),
    Refused(
        "glm5-next-var",
        "",
        "the graph needs attention.indexer.kpool above 1 dividing attention.indexer.top_k",
        add_kv=(("attention.indexer.kpool", 3),),
    ),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("glm5-next")
    return {n: cpu_model(n, out, smollm2_path) for n in MODELS}


def test_the_runs_cover_the_options_and_contexts_up_to_training() -> None:
    assert builder_of("glm5-next") == "glm5_next"
    args = assert_runs_cover("glm5-next", ("-fa off -np 3", "-np 3", "-ub 1024", "-ub 16", "-ctk q8_0 -ctv q8_0"))
    assert "--n-cpu-moe 2" in " ".join(args) and "-c 131072" in " ".join(args)
    assert cpu_spec("glm5-next")["kv"]["context_length"] == 131072
    assert_runs_cover("glm5-next-var", ("-fa off -np 3", "-ub 1024", "-ub 8 -np 2", "-ctk q8_0 -ctv q8_0"))
    assert {m for m, _ in NODE_RUNS} == {"glm5-next", "glm5-next-var"}
    assert any("-ub 16" in graph_arch_logs.cpu_args(rid)[1] for _, rid in NODE_RUNS)  # the gather path


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The mHC pre weights before each block and the post weights, the Sinkhorn comb and DSV4_HC_POST after it;
    the KDA layers' three convolutions; the indexer's packed key | gate | zero row, the new pools' softmax pooling,
    the pooled keys scattered and gathered, the lightning indexer, the top pools ordered by their scores, the dump
    rows (ARANGE, EXP of the slot mask), the mask scatter (or, at -ub 16, the gathered latents); the output rows
    before the streams' mean. ``ggml_swiglu_clamp`` prints as SWIGLU_CLAMP (a GLU node), ``ggml_exp`` as EXP (UNARY)."""
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", MODELS[:2])
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


def _grown(name: str, n_trunk: int, out: Path, smollm2: Path) -> Path:
    """The model with ``n_trunk`` trunk layers: layers 0-2 as they are, then its layers 3-5 repeated (glm5-next: a
    KDA layer, a shared indexer layer, a full one), the NextN block after them; the per-layer keys alike."""
    spec = json.loads(json.dumps(cpu_spec(name)))
    kv = spec["kv"]

    def like(il: int) -> int:
        return il if il < 3 else 3 + (il - 3) % 3

    kv["block_count"] = n_trunk + 1
    for key in ("attention.head_count_kv", "swiglu_clamp_exp", "swiglu_clamp_shexp"):
        if key in kv:
            kv[key] = [kv[key][like(il)] for il in range(n_trunk)] + [kv[key][6]]
    if "attention.indexer.types" in kv:
        kv["attention.indexer.types"] = [kv["attention.indexer.types"][like(il)] for il in range(n_trunk)]
    tensors = []
    for t in json.loads((CPU_LOGS / "tensors.json").read_text())[name]:
        m = re.fullmatch(r"blk\.(\d+)\.(.*)", t[0])
        if m is None:
            tensors.append(t)
        elif int(m.group(1)) == 6:  # the NextN block
            tensors.append([f"blk.{n_trunk}.{m.group(2)}", *t[1:]])
        else:
            tensors += [[f"blk.{il}.{m.group(2)}", *t[1:]] for il in range(n_trunk) if like(il) == int(m.group(1))]
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    path = out / f"{name}-{n_trunk}.gguf"
    header(path, spec, tensors, smollm2)
    return path


@pytest.mark.parametrize("name", MODELS[:2])
def test_the_layer_shortcut_equals_the_whole_replay_on_24_trunk_layers(
    name: str, smollm2_path: Path, tmp_path: Path
) -> None:
    """Grown to 24 trunk layers and the NextN block: the shortened replay, where it is taken, allocates as the
    whole one, on the CPU (flash attention on and off, one and three sequences) and on a GPU, whole or split."""
    assert_grown_shortcut_is_whole(_grown(name, 24, tmp_path, smollm2_path))


def test_the_indexer_cache_holds_keys_gates_and_pooled_keys(models: dict[str, Path]) -> None:
    """llama_memory_hybrid_idx's third cache: 3 x indexer.key_length values per cell (key | gate | pooled) for the
    MLA layers with an indexer of their own (glm5-next: 2 and 5, not the shared 4; glm5-next-var: all three), as
    llama.cpp's second KV line of the run."""
    model = ggufx.open(models["glm5-next"])
    assert hybrid_idx_layout(model, hparams(model), layer_kinds(model)) == (384, (2, 5))
    text, bd = replay_cpu("glm5-next-c8192", models["glm5-next"])
    assert "llama_kv_cache: size =   12.00 MiB (  8192 cells,   2 layers" in text
    assert (bd.kv_indexer_bytes, bd.kv_indexer_layers) == (12 * MiB, 2)
    var = ggufx.open(models["glm5-next-var"])
    assert hybrid_idx_layout(var, hparams(var), layer_kinds(var)) == (192, (1, 3, 5))


def test_the_selection_mask_grows_with_the_context_and_the_gather_path_does_not(models: dict[str, Path]) -> None:
    """The scatter path's mask (n_kv + n_sel columns per token) makes the buffer grow with the context; at -ub 16
    the selected latents are gathered instead (llama.cpp's figure either way)."""
    mib = {rid: compute_mib(replay_cpu(rid, models["glm5-next"])[1])["CPU"] for rid in ("glm5-next-c8192",
           "glm5-next-c131072", "glm5-next-c8192-ub16")}  # fmt: skip
    assert mib == {"glm5-next-c8192": 53.4652, "glm5-next-c131072": 453.2231, "glm5-next-c8192-ub16": 17.6838}


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: r.drop_tensor or next(iter(dict(r.add_kv))))
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)


def test_indexer_types_of_the_wrong_length_are_refused_with_the_key(smollm2_path: Path, tmp_path: Path) -> None:
    """llama.cpp refuses an attention.indexer.types array of other than n_layer entries ("wrong array length"):
    ggufx's error names the key, its offset and the count, before any figure."""
    from ggufx.analysis.memory.llamaargs import parse_args
    from ggufx.errors import ValidationError

    spec = cpu_spec("glm5-next")
    kv = {**spec["kv"], "attention.indexer.types": [True] * 5}
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    path = tmp_path / "bad.gguf"
    header(path, {**spec, "kv": kv}, json.loads((CPU_LOGS / "tensors.json").read_text())["glm5-next"], smollm2_path)
    a = parse_args("-m x -c 8192")
    with pytest.raises(
        ValidationError, match=r"glm5-next\.attention\.indexer\.types has 5 entries but llama\.cpp expects 6"
    ):
        breakdown(ggufx.open(path), [], a.offload, a.context)
