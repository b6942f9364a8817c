"""``deepseek4`` (DeepSeek V4; src/models/deepseek4.cpp, graph/models/deepseek4.py) against llama.cpp's CPU build:
four hyper-connection streams around every attention and FFN (the fused DSV4_HC_PRE, _COMB and _POST nodes, the
output head's unfused reduction), the sliding-window raw cache of every block, the CSA (ratio 4) and HCA (ratio 128)
compressors writing their caches and persisting their states, the lightning indexer's compressor, scores and top-k
mask, attention with sinks over the window plus the compressed rows, ROPE_BACK and the grouped low-rank output;
sqrt-softplus experts, hash-routed by the token in the first layers.

Per run (the small model, deepseek4-var's other branches, DeepSeek-V4-Flash's published dimensions up to its
1,048,576-token context; flash attention on and off, -np 2 and 3, -ub 64 to 2048, q8_0 and q4_0 caches, --swa-full,
-nkvo, --no-repack, --cpu-moe and --n-cpu-moe 2, llama-server's -np 3 -kvu): the compute buffer to the 0.0001 MiB
of ``~llama_context``'s line; the graph against the one llama.cpp's scheduler printed, node for node and index for
index (its views where llama.cpp's are); the layer shortcut against the whole replay (Flash's 40 alternating CSA
and HCA layers, a 33-layer model on the CPU and a GPU); a file llama.cpp would refuse gets the generic estimate,
with the reason."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import (
    _VIEWS,
    CPU_LOGS,
    NODES,
    Refused,
    _fmt_size,
    assert_compute_equal,
    assert_gpu_graph_builds,
    assert_nodes_equal,
    assert_refused,
    assert_shortcut_is_whole,
    cpu_args,
    cpu_model,
    cpu_runs,
    cpu_spec,
    replay_cpu,
)
from .graph_grow import assert_grown_shortcut_is_whole

MODELS = ("deepseek4", "deepseek4-var", "deepseek4-flash")
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
# llama-server's run (llama-completion has no -kvu): its matrix line is a comment, replayed here as the server's
SERVER = {"deepseek4-c4096-np3-kvu": ("deepseek4", "-c 4096 -np 3 -kvu")}
_REFUSED = (  # (model, tensor left out or "", keys added, unbuildable's reason)
    ("deepseek4", "output_hc_fn.weight", (), "the graph needs tensor output_hc_fn.weight, which the file lacks"),
    (
        "deepseek4",
        "blk.4.indexer_compressor_ape.weight",
        (),
        "the graph needs tensor blk.4.indexer_compressor_ape.weight, which the file lacks",
    ),
    (
        "deepseek4",
        "blk.1.ffn_gate_tid2eid.weight",
        (),
        "the graph needs tensor blk.1.ffn_gate_tid2eid.weight, which the file lacks",
    ),
    ("deepseek4", "blk.3.exp_probs_b.bias", (), "the graph needs tensor blk.3.exp_probs_b.bias, which the file lacks"),
    (
        "deepseek4",
        "",
        (("expert_gating_func", 2),),
        "the graph needs deepseek4.expert_gating_func 4 (sqrt-softplus: deepseek4.cpp refuses others)",
    ),
    (
        "deepseek4",
        "",
        (("hyper_connection.count", 2),),
        "the graph needs deepseek4.hyper_connection.count 4 (deepseek4.cpp asserts it)",
    ),
    (
        "deepseek4",
        "",
        (("attention.compress_ratios", [0, 0, 128, 128, 128, 128, 0]),),
        "deepseek4 files without a CSA (compress ratio 4) layer are not simulated: llama.cpp stops on a "
        "floating-point exception sizing the indexer cache's Hadamard matrix",
    ),
)
REFUSED = tuple(Refused(model, drop, reason, add_kv=kv) for model, drop, kv, reason in _REFUSED) + tuple(
    Refused(
        "deepseek4",
        "",
        f"the graph needs deepseek4.{key}, which the file lacks (deepseek4.cpp's loader requires it)",
        drop_key=key,
    )
    for key in ("swiglu_clamp_exp", "hash_layer_count", "attention.indexer.top_k")
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("deepseek4")
    return {n: cpu_model(n, out, smollm2_path) for n in MODELS}


def test_the_runs_cover_the_options_and_contexts_up_to_training() -> None:
    assert builder_of("deepseek4") == "deepseek4"
    rows = [line.split("\t") for line in (CPU_LOGS / "matrix").read_text().splitlines() if line[:1] not in ("", "#")]
    args = [a for _, m, a in rows if m in MODELS]
    assert len(args) == len(CPU_RUNS) >= 27  # every run recorded
    for option in ("-fa off", "-np 3", "-np 2", "-ub 64", "-ub 1024", "-ub 2048", "-ctk q8_0 -ctv q8_0",
                   "-ctk q4_0 -ctv q4_0", "--swa-full", "-nkvo", "--no-repack", "--cpu-moe", "--n-cpu-moe 2",
                   "-c 512", "-c 2048", "-c 65536", "-c 1048576"):  # fmt: skip
        assert any(option in a for a in args), option
    assert cpu_spec("deepseek4-flash")["kv"]["context_length"] == 1048576
    assert {m for m, _ in NODE_RUNS} == {"deepseek4", "deepseek4-var"} and len(NODE_RUNS) >= 5
    assert all((CPU_LOGS / f"{rid}.log").exists() for rid in SERVER)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", sorted(SERVER))
def test_llama_server_kvu_run(rid: str, models: dict[str, Path]) -> None:
    """-kvu leaves DeepSeek V4's caches per sequence (three streams of compressed rows of the whole -c each);
    llama-server reserves one output per sequence."""
    name, args = SERVER[rid]
    text = (CPU_LOGS / f"{rid}.log").read_text()
    assert (
        "# exit status: 0" in text and f"server -m @{name} {args} " in text and "kv_unified            = true" in text
    )
    parsed = parse_args("llama-server -m x " + args)
    assert parsed.context.kv_unified and parsed.context.n_outputs_max == 3
    bd = breakdown(ggufx.open(models[name]), [], replace(parsed.offload, repack=True), parsed.context)
    assert bd.reservation is not None and bd.reservation.n_streams == 1 and bd.reservation.n_kv == 4096
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The hyper-connections' gates before their fused nodes (an FFN's post and comb before its pre), the
    compressors before Q, the indexer's zeros FILLed before its scores; the experts' SWIGLU_CLAMP is a GLU op."""
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_views_lie_where_llama_cpps_do(name: str, rid: str, models: dict[str, Path]) -> None:
    """Each node that is not a view has llama.cpp's index in the graph: the views (of the mixes, the scales and
    bases, the compressors' halves, the caches, the masks, the streams) number and lie as llama.cpp's."""
    from ggufx.analysis.memory.graph import graphsim
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder

    theirs = []
    for line in (NODES / f"{rid}.tsv").read_text().splitlines():
        if not line.startswith("#"):
            index, _, _, size = line.split("\t")
            theirs.append((int(index), size))
    parsed = parse_args("-m x " + cpu_args(rid)[1])
    model = ggufx.open(models[name])
    sp = breakdown(model, [], parsed.offload, parsed.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], parsed.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder("deepseek4")(c, g))
    mine = [(i, _fmt_size(n.nbytes)) for i, n in enumerate(g.nodes) if n.op not in _VIEWS]
    assert mine == theirs


@pytest.mark.parametrize(
    ("name", "runs"),
    [
        ("deepseek4", ("-c 8192", "-c 4096 -fa off -np 3")),
        ("deepseek4-var", ("-c 8192", "-c 4096 -fa off -np 3")),
        ("deepseek4-flash", ("-c 4096 --no-repack", "-c 4096 -fa off -np 3 --no-repack")),
    ],
)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, runs: tuple[str, ...], models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], *runs)


@pytest.mark.parametrize("name", ["deepseek4", "deepseek4-var"])
def test_the_gpu_graph_builds(name: str, models: dict[str, Path]) -> None:
    """On a GPU with the first two layers' experts on the host: a figure per backend from the builder (the
    scheduler's splits, copies and CUDA's fusions over DeepSeek V4's graph; llama.cpp's CUDA runs: to record)."""
    assert_gpu_graph_builds(models[name])


def _grown(n_pairs: int, out: Path, smollm2: Path) -> Path:
    """The small model with its two hash-routed window layers, then ``n_pairs`` CSA and HCA layers (copies of its
    blocks 2 and 3), then its NextN block."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = json.loads(json.dumps(cpu_spec("deepseek4")))
    n = 2 + 2 * n_pairs + 1
    kv = spec["kv"]
    kv["block_count"] = n
    kv["attention.compress_ratios"] = [0, 0, *[4, 128] * n_pairs, 0]
    kv["swiglu_clamp_exp"] = kv["swiglu_clamp_shexp"] = [10.0] * n
    base = json.loads((CPU_LOGS / "tensors.json").read_text())["deepseek4"]

    def layer(src: int, il: int) -> list[list]:
        p = f"blk.{src}."
        return [[f"blk.{il}." + t[0][len(p) :], *t[1:]] for t in base if t[0].startswith(p)]

    tensors = [t for t in base if not t[0].startswith("blk.")] + layer(0, 0) + layer(1, 1)
    for il in range(2, n - 1):
        tensors += layer(2 if il % 2 == 0 else 3, il)
    tensors += layer(6, n - 1)
    path = out / f"deepseek4-{n}.gguf"
    header(path, spec, tensors, smollm2)
    return path


def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(smollm2_path: Path, tmp_path: Path) -> None:
    """15 CSA/HCA pairs: the shortened replay, where it is taken, allocates as the whole one, on the CPU and with
    the layers on a GPU or split."""
    path = _grown(15, tmp_path, smollm2_path)
    assert ggufx.open(path).metadata.get_int("deepseek4.block_count") == 33
    assert_grown_shortcut_is_whole(path)


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or r.drop_key or r.add_kv[0][0]}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path, kv_check="dropped" if refused.drop_key else "")
