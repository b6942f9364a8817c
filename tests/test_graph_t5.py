"""T5 (issue 25): ``t5`` (src/models/t5.cpp: flan-t5, madlad400) and ``t5encoder`` (src/models/t5encoder.cpp: the
T5-XXL text encoder of image pipelines), rebuilt by graph/models/t5.py.

llama_context reserves t5's *decoder* graph (LLM_GRAPH_TYPE_DEFAULT): self-attention over the KV cache with the
relative position bias (never flash attention: a ``kq_b`` turns it off), cross attention over ``n_ctx_train``
encoder rows (``build_inp_cross_embd`` before any encode: the training context, not ``-c``), the lm_head.
t5encoder's graph is the encoder: attention over the micro-batch with the position bias, no lm_head. Both get the
default KV cache of ``block_count`` layers (t5's decoder reads it; t5encoder's graph never does).

The proof is llama.cpp's CPU build (tests/fixtures/llamacpp-logs-cpu: small models of flan-t5's gated GELU with 4
encoder and 3 decoder blocks, T5 v1.0's ReLU with a tied output, t5encoder; flan-t5-xl and the T5-XXL encoder at
their published dimensions): every compute buffer equals llama.cpp's to the 0.0001 MiB of ``~llama_context``'s line
where the log has it, node for node where the scheduler's graph was dumped; every other buffer to its 0.01 MiB,
the repacked encoder blocks (``enc.blk.N``: layer N's buffer type) and t5's output buffer (logits and embeddings)
included."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import arch_of, builder_of, sharing
from ggufx.analysis.memory.buffers import Breakdown, MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device, place
from ggufx.errors import InputError

from .graph_arch_logs import (
    CPU_LOGS,
    Refused,
    assert_compute_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_args,
    cpu_family,
    cpu_spec,
    node_for_node_test,
)

SMALL = ("t5", "t5-relu", "t5encoder")
PUBLISHED = ("flan-t5-xl", "t5-v1_1-xxl-enc")
RUNS, files = cpu_family((*SMALL, *PUBLISHED), "t5")


def _replay(rid: str, model: str, args: str, files: dict[str, Path]) -> tuple[str, Breakdown]:
    text = (CPU_LOGS / f"{rid}.log").read_text()
    parsed = parse_args("-m x " + args.replace("--no-repack", ""))
    offload = replace(parsed.offload, repack="--no-repack" not in args)
    return text, breakdown(ggufx.open(files[model]), [], offload, parsed.context)


def _mib(bd: Breakdown, kind: str) -> dict[str, float]:
    mine: dict[str, float] = {}
    for b in bd.buffers:
        if b.kind == kind:
            mine[b.buft] = mine.get(b.buft, 0.0) + b.bytes / MiB
    return {k: round(v, 2) for k, v in mine.items() if v}


def test_t5_and_t5encoder_are_registered_with_the_t5_builder() -> None:
    t5, enc = arch_of("t5"), arch_of("t5encoder")
    assert t5 is not None and enc is not None
    assert (builder_of("t5"), builder_of("t5encoder")) == ("t5", "t5")
    assert "decoder_block_count" in t5.keys and "attention.relative_buckets_count" in enc.keys
    assert t5.memory == enc.memory == ""  # create_memory's default KV cache for both
    assert sharing("t5") == ["t5", "t5encoder"]  # using graph = llama_model_t5::graph<true>


@pytest.mark.parametrize("name", SMALL)
def test_the_runs_cover_flash_attention_off_quantized_caches_and_micro_batches(name: str) -> None:
    """Every matrix line of the model has its log; the runs include -fa off, --no-repack (and -ctk q8_0, -ub, -np 3
    where the family has them)."""
    assert builder_of(cpu_spec(name)["arch"]) == "t5"
    options = ["-fa off", "--no-repack"] + {"t5": ["-ctk q8_0", "-ub 256"], "t5encoder": ["-ctk q8_0", "-np 3"]}.get(
        name, []
    )
    assert_runs_cover(name, options, at_least=2)


@pytest.mark.parametrize(("name", "rid"), RUNS)
def test_every_buffer_equals_llama_cpps(name: str, rid: str, files: dict[str, Path]) -> None:
    """The weights, the KV cache of block_count layers, the output and the compute buffer of every run of the
    matrix, repacked or not."""
    text, bd = _replay(rid, *cpu_args(rid), files)
    theirs = parse_log(text).buffers
    assert "llama_kv_cache" in text and theirs["kv"]
    for kind in ("model", "kv", "output"):
        assert _mib(bd, kind) == {k: v for k, v in theirs[kind].items() if v}, kind
    assert_compute_equal(text, bd)


def test_the_kv_cache_follows_block_count_not_the_decoders_blocks(files: dict[str, Path]) -> None:
    """t5 (4 encoder, 3 decoder blocks): llama_kv_cache is made over n_layer_all = block_count layers
    (llama-kv-cache.cpp:102), the decoder's count aside: 4 layers x 512 cells x 512 K and V values in F16."""
    text = (CPU_LOGS / "t5-c512-norepack.log").read_text()
    assert "512 cells,   4 layers" in text
    _, bd = _replay("t5-c512-norepack", "t5", "-c 512 --no-repack", files)
    assert (bd.kv_bytes, bd.kv_layers) == (4 * 512 * 512 * 2 * 2, 4)


def test_the_cross_attention_spans_the_training_context_not_the_context(files: dict[str, Path], tmp_path: Path) -> None:
    """build_inp_cross_embd / build_attn_inp_cross size the encoder rows by n_ctx_train before any encode: the
    decoder's compute buffer grows with context_length at a fixed -c (the published flan-t5-xl has 512); the
    encoder's (t5encoder) does not read it."""
    import json
    import sys

    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = json.loads((CPU_LOGS / "tensors.json").read_text())
    a = parse_args("-m x -c 512 -fa off --no-repack")
    sizes = {}
    for name in ("t5", "t5encoder"):
        for n_ctx_train in (512, 4096):
            spec = MODELS[name]
            path = tmp_path / f"{name}-{n_ctx_train}.gguf"
            header(path, {**spec, "kv": {**spec["kv"], "context_length": n_ctx_train}}, tensors[name])
            bd = breakdown(ggufx.open(path), [], a.offload, a.context)
            sizes[(name, n_ctx_train)] = sum(b.bytes for b in bd.buffers if b.kind == "compute")
    assert sizes[("t5", 4096)] > sizes[("t5", 512)]
    assert sizes[("t5encoder", 4096)] == sizes[("t5encoder", 512)]


def test_the_self_attention_never_uses_flash_attention(files: dict[str, Path]) -> None:
    """The position bias turns flash attention off in build_attn_mha (llama-graph.cpp:2716): t5encoder's compute
    buffer with -fa on differs from -fa off only by the mask (F16 against F32, [n_ubatch, n_ubatch]), as
    llama.cpp's runs print."""
    _, on = _replay("t5encoder-c512-norepack", "t5encoder", "-c 512 --no-repack", files)
    _, off = _replay("t5encoder-c512-faoff-norepack", "t5encoder", "-c 512 -fa off --no-repack", files)
    comp = [sum(b.bytes for b in bd.buffers if b.kind == "compute") for bd in (on, off)]
    assert comp[1] - comp[0] == 512 * 512 * 2


def test_llama_server_outputs_the_whole_micro_batch_for_a_model_with_an_encoder(files: dict[str, Path]) -> None:
    """llama-server asks for -np outputs (4 slots here, a unified cache), but llama_context takes n_outputs_max =
    n_batch for a model with an encoder (llama-context.cpp:252): the prompt reservation outputs 512 rows of logits,
    as llama.cpp's server log prints (t5-server-c2048-norepack.log: n_outputs_max = 2048, n_outputs = 512), and the
    compute buffer is its 110.5176 MiB."""
    text = (CPU_LOGS / "t5-server-c2048-norepack.log").read_text()
    assert "n_outputs_max         = 2048" in text and "n_tokens =  512, n_seqs =  4, n_outputs =  512" in text
    a = parse_args("llama-server -m x -c 2048")
    assert a.context.n_outputs_max == 4 and a.context.kv_unified
    bd = breakdown(ggufx.open(files["t5"]), [], replace(a.offload, repack=False), a.context)
    theirs = parse_log(text).buffers
    for kind in ("model", "kv"):
        assert _mib(bd, kind) == theirs[kind], kind
    assert_compute_equal(text, bd)


NODE_RUNS = {
    "t5-c512-norepack": "t5",
    "t5-c2048-q8_0-norepack": "t5",
    "t5-relu-c1024-faoff-norepack": "t5-relu",
    "t5encoder-c512-norepack": "t5encoder",
    "t5encoder-c512-faoff-norepack": "t5encoder",
}


test_the_graph_is_llama_cpps_node_for_node = node_for_node_test(
    NODE_RUNS,
    """The reserved graph, node for node (op and size), as llama.cpp's scheduler printed it (GGML_SCHED_DEBUG=2,
    tests/fixtures/llamacpp-logs-cpu/nodes): the decoder's position bias (GET_ROWS, CONT) added to the scores,
    the cross attention's K and V over the 512 encoder rows cast to F16 for flash attention, the Hadamard
    rotations of the q8_0 cache, ReLU for T5 v1.0; the encoder's scores over the micro-batch.""",
)


@pytest.mark.parametrize("name", PUBLISHED)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, files: dict[str, Path]) -> None:
    assert_shortcut_is_whole(files[name], "-c 2048", "-c 1024 -fa off -ctk q8_0", "-c 4096 -ub 256 -ctk q8_0 -ctv q8_0")


def test_several_kv_streams_are_refused_as_llama_cpp_aborts(files: dict[str, Path]) -> None:
    """-np 2 without a unified cache: t5's position bias [n_kv, n_tokens, n_head] does not broadcast over the
    scores of two streams and llama.cpp aborts while reserving (GGML_ASSERT(ggml_can_repeat(b, a)) in ggml_add);
    ggufx says so for -np, and sizes the unified cache. t5encoder's graph has no cache streams: it reserves."""
    model = ggufx.open(files["t5"])
    a = parse_args("-m x -c 1024 -np 2")
    with pytest.raises(InputError, match="-np 2: llama.cpp aborts") as e:
        breakdown(model, [], a.offload, a.context)
    assert e.value.param == "-np"
    a = parse_args("-m x -c 1024 -np 2 -kvu")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate is None and bd.n_streams == 1
    a = parse_args("-m x -c 2048 -np 3")
    assert breakdown(ggufx.open(files["t5encoder"]), [], a.offload, a.context).compute_estimate is None


@pytest.mark.llamacpp
def test_llama_cpp_aborts_on_t5_with_two_kv_streams(files: dict[str, Path], llama_bin: Path) -> None:
    """The abort the InputError above names, from the local CPU build (the run the matrix leaves out)."""
    exe = llama_bin / "llama-completion"
    argv = [str(exe), "-m", str(files["t5"]), "-dev", "none", "-c", "1024", "-np", "2", "-p", "hi", "-n", "1"]
    p = subprocess.run([*argv, "-no-cnv", "--no-warmup", "-fit", "off"], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "ggml_can_repeat(b, a)" in p.stdout + p.stderr
    assert "compute buffer size" not in p.stdout + p.stderr


def test_the_encoder_blocks_follow_their_layer_on_a_gpu(files: dict[str, Path]) -> None:
    """llama.cpp creates enc.blk.N.* with layer N's buffer type (LLM_TENSOR_LAYER_REPEATING, llama-arch.cpp:845-851)
    and enc.output_norm with the output layer's (:777): with every layer offloaded they are on the GPU."""
    model = ggufx.open(files["flan-t5-xl"])
    a = parse_args("-m x -c 512 -ngl 99")
    where = {t.name: b for t, b in place(model, [Device("CUDA0", 80 << 30)], a.offload).tensors}
    assert where["enc.blk.3.attn_q.weight"] == "CUDA0" and where["dec.blk.3.attn_q.weight"] == "CUDA0"
    assert where["enc.output_norm.weight"] == "CUDA0" and where["token_embd.weight"] == "CPU_Mapped"


@pytest.mark.parametrize(
    "r",
    [
        Refused(
            "t5",
            "dec.blk.0.attn_rel_b.weight",
            "the graph needs tensor dec.blk.0.attn_rel_b.weight, which the file lacks",
        ),
        Refused(
            "t5",
            "dec.blk.2.cross_attn_k.weight",
            "the graph needs tensor dec.blk.2.cross_attn_k.weight, which the file lacks",
        ),
        Refused(
            "t5encoder", "enc.output_norm.weight", "the graph needs tensor enc.output_norm.weight, which the file lacks"
        ),
        Refused(
            "t5encoder",
            "",
            "the graph needs a positive attention.relative_buckets_count",
            drop_key="attention.relative_buckets_count",
        ),
        Refused(
            "t5",
            "",
            "the decoder has 5 blocks (decoder_block_count) for a KV cache of block_count = 4 layers: llama.cpp's "
            "decoder has no cache for the blocks past them",
            add_kv=(("decoder_block_count", 5),),
        ),
    ],
    ids=lambda r: f"{r.model}-{r.drop_tensor or r.drop_key or r.add_kv[0][0]}",
)
def test_a_file_without_what_the_graph_reads_gets_the_generic_estimate(
    r: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(r, smollm2_path, tmp_path)


def test_a_shorter_decoder_under_a_deep_encoder_gets_the_generic_estimate(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """graphsim's plan leaves repeated layers of block_count out from six layers on; a decoder of another count is
    not built there (its blocks are not the plan's), and the generic estimate says why."""
    import json
    import sys

    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = MODELS["flan-t5-xl"]
    tensors = [t for t in json.loads((CPU_LOGS / "tensors.json").read_text())["flan-t5-xl"] if not _dec_past(t[0], 12)]
    path = tmp_path / "short-decoder.gguf"
    header(path, {**spec, "kv": {**spec["kv"], "decoder_block_count": 12}}, tensors)
    model = ggufx.open(path)
    why = graphsim.unbuildable(model)
    assert why == "the graph of a decoder with fewer blocks than the encoder is rebuilt for up to 5 encoder blocks"
    a = parse_args("-m x -c 512")
    assert why in (breakdown(model, [], a.offload, a.context).compute_estimate or "")


def _dec_past(name: str, n: int) -> bool:
    return name.startswith("dec.blk.") and int(name.split(".")[2]) >= n
