"""Embedding runs (issue 25): ``llama-server --embedding`` (``--rerank``, ``--pooling``) and ``llama-embedding``.

An embedding run differs from a completion run in three places, each modelled from llama.cpp's source and held to
its CPU build's logs (tests/fixtures/llamacpp-logs-cpu/embedding: ``record_embedding.py`` runs ``embedding/matrix``,
the encoders of models.py, a Qwen3-Embedding-shaped decoder, a BERT reranker with its classification head and an
EmbeddingGemma with its dense projections):

* the tools' own rules (llamaargs.embedding_context): llama-embedding serves 256 sequences over a unified cache by
  default, makes the batch at least the context and the micro-batch the batch; llama-server cuts the batch to the
  micro-batch and reserves outputs for all of it; every tool's ``common_init_from_params`` cuts the batch again;
* the output buffer (``output_reserve``): ``n_embd_out`` floats per sequence beside the ``n_vocab`` logits;
* the graph: ``build_pooling`` (mean: a transposed copy times the ``mean`` input; cls/last: the rows of ``cls``;
  rank: the rows, the classification head, Qwen3's softmax) and ``build_dense_out`` after the model's own graph
  (graph/llm.py ``build_pooling``, called by the encoders' and qwen3's builders, and after every other decoder's
  graph by graphsim.build_graph: dense, Gemma 3, MoE and hybrid decoders recorded).

Every buffer of every run llama.cpp sized equals ggufx's (compute to the 0.0001 MiB of ``~llama_context``'s line where
the log has it); the runs llama.cpp aborts while sizing them are refused with the reason."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

import ggufx
from ggufx.analysis.memory.buffers import Breakdown, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import LLAMA_MAX_SEQ, parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.cli import main
from ggufx.errors import InputError

from .graph_arch_logs import EMBEDDING, assert_compute_equal, cpu_models, embedding_args, replay_embedding

RUNS: dict[str, tuple[str, str]] = {}
for _line in (EMBEDDING / "matrix").read_text().splitlines():
    if _line.strip() and not _line.startswith("#"):
        _rid, _model, _command = _line.split("\t")
        RUNS[_rid] = (_model, _command)
TEXT = {rid: (EMBEDDING / f"{rid}.log").read_text() for rid in RUNS}
SIZED = sorted(rid for rid in RUNS if "compute buffer size" in TEXT[rid])
ABORTED = sorted(rid for rid in RUNS if rid not in SIZED)


@pytest.fixture(scope="module")
def files(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(tuple(sorted({m for m, _ in RUNS.values()})), smollm2_path, tmp_path_factory, "embedding")


def _replay(rid: str, files: dict[str, Path]) -> Breakdown:
    return replay_embedding(rid, files[RUNS[rid][0]])[1]


def _mib(bd: Breakdown, kind: str) -> dict[str, float]:
    out: dict[str, int] = {}
    for b in bd.buffers:
        if b.kind == kind:
            out[b.buft] = out.get(b.buft, 0) + b.bytes
    return {k: round(v / 2**20, 2) for k, v in out.items() if v}


def _log_int(rid: str, key: str) -> int:
    m = re.search(rf"llama_context: {key} += (\d+)", TEXT[rid])
    assert m, (rid, key)
    return int(m.group(1))


def test_the_runs_cover_both_tools_every_pooling_type_and_the_families() -> None:
    commands = [c for _, c in RUNS.values()]
    assert all((EMBEDDING / f"{rid}.log").exists() for rid in RUNS)
    assert sum(c.startswith("llama-embedding") for c in commands) >= 15
    assert sum(c.startswith("llama-server") for c in commands) >= 15
    for option in (
        "--pooling none",
        "--pooling mean",
        "--pooling cls",
        "--pooling last",
        "--rerank",
        "-np 2",
        "-fa off",
    ):
        assert any(option in c for c in commands), option
    models = {m for m, _ in RUNS.values()}
    assert {"bert", "nomic-bert", "gemma-embedding", "modern-bert", "neo-bert", "qwen3-embed", "bert-rerank"} <= models
    assert {"qwen3-rerank", "modern-bert-rerank", "jina-bert-v2-rerank", "gemma-embedding-dense"} <= models
    assert {"bge-base", "nomic-embed-v1.5", "embeddinggemma-300m", "qwen3-embedding-0.6b"} <= models  # published
    assert set(DECODERS) <= models  # decoders of every kind: dense, sliding window, MoE, hybrids
    assert len(SIZED) >= 40 and len(ABORTED) == 2


@pytest.mark.parametrize("rid", SIZED)
def test_every_buffer_equals_llama_cpp(rid: str, files: dict[str, Path]) -> None:
    bd = _replay(rid, files)
    theirs = parse_log(TEXT[rid]).buffers
    for kind in ("model", "kv", "output"):
        assert _mib(bd, kind) == {k: v for k, v in theirs.get(kind, {}).items() if v}, kind
    assert_compute_equal(TEXT[rid], bd)
    embeddings = embedding_args(rid).context.embeddings  # all but llama-server --pooling without --embedding
    assert bd.reservation is not None and (bd.reservation.pooling is not None) == embeddings
    assert any(n.startswith("embedding run:") for n in bd.notes) == embeddings


@pytest.mark.parametrize("rid", SIZED)
def test_the_tools_rules_give_llama_cpps_context(rid: str) -> None:
    """The sequences, unified cache, batch and micro-batch llama.cpp's context printed, from ggufx's reading of the
    command line (llama-embedding: 256 sequences unless -np, the batch at least the context, the micro-batch the
    batch; llama-server: the batch cut to the micro-batch; a causal model's batch at most the context)."""
    cp = embedding_args(rid).context
    assert cp.embeddings or rid == "qwen3-embed-srv-c4096-pooling-only"
    assert _log_int(rid, "n_seq_max") == cp.n_parallel
    assert (re.search(r"kv_unified += (\w+)", TEXT[rid]) or [""])[1] == str(cp.kv_unified).lower()
    n_batch = min(cp.n_batch, cp.n_ubatch) if cp.embeddings else cp.n_batch  # common_init_from_params
    if _log_int(rid, "causal_attn"):
        n_batch = min(n_batch, _log_int(rid, "n_ctx"))
    assert _log_int(rid, "n_batch") == n_batch
    assert _log_int(rid, "n_ubatch") == min(n_batch, cp.n_ubatch)
    assert _log_int(rid, "n_outputs_max") == (cp.n_outputs_max or n_batch)


@pytest.mark.parametrize("rid", SIZED)
def test_the_reservation_is_llama_cpps(rid: str, files: dict[str, Path]) -> None:
    """The prompt-processing reserve: tokens and sequences of sched_reserve's worst case, the outputs of the last
    graph_reserve (all the tokens: an embedding run outputs every one)."""
    sp = _replay(rid, files).reservation
    assert sp is not None
    worst = re.search(r"worst-case: n_tokens = (\d+), n_seqs = (\d+)", TEXT[rid])
    last = re.findall(
        r"reserving a graph for ubatch with n_tokens = +(\d+), n_seqs = +(\d+), n_outputs = +(\d+)", TEXT[rid]
    )
    assert worst and last
    assert (sp.n_ubatch, sp.n_seq_max) == (int(worst[1]), int(worst[2]))
    assert sp.n_outputs == int(last[-1][2]) == sp.n_ubatch


def _nodes(rid: str, files: dict[str, Path]) -> int:
    return len(_graph(rid, files).nodes)


def _their_nodes(rid: str) -> int:
    m = re.search(r"graph: nodes = (\d+)", TEXT[rid])
    assert m
    return int(m.group(1))


@pytest.mark.parametrize(
    ("base", "other", "added"),
    [
        ("bert-emb-c512-none", "bert-emb-c512", 1),  # cls: GET_ROWS
        ("bert-emb-c512-none", "bert-emb-c512-mean", 3),  # mean: TRANSPOSE, CONT, MUL_MAT
        ("bert-emb-c512-none", "bert-emb-c512-rank", 1),  # rank without a head: the cls rows
        ("bert-rerank-emb-c512-cls", "bert-rerank-emb-c512", 5),  # the head: MUL_MAT, ADD, TANH, MUL_MAT, ADD
        ("qwen3-embed-srv-c4096-none", "qwen3-embed-srv-c4096", 1),  # last: GET_ROWS
        ("qwen3-embed-srv-c4096-none", "qwen3-embed-srv-c4096-rerank", 2),  # rank: the rows, Qwen3's softmax
        ("gemma-embedding-srv-c2048-ub2048-none", "gemma-embedding-dense-srv-c2048-ub2048-none", 2),  # dense_2, _3
        # modern-bert's head over the mean: MUL_MAT, GELU, NORM, MUL, MUL_MAT, ADD
        ("modern-bert-rerank-emb-c4096-faoff-mean", "modern-bert-rerank-emb-c4096-faoff", 6),
        ("jina-bert-v2-rerank-srv-c8192-none", "jina-bert-v2-rerank-srv-c8192", 4),  # GET_ROWS, MUL_MAT, ADD, TANH
        ("qwen3-embed-srv-c4096-none", "qwen3-rerank-srv-c4096", 3),  # GET_ROWS, cls.output's MUL_MAT, SOFT_MAX
        ("llama-srv-c4096-none", "llama-srv-c4096-last", 1),  # a decoder's last: GET_ROWS (graphsim.build_graph)
    ],
)
def test_the_pooling_adds_llama_cpps_nodes(base: str, other: str, added: int, files: dict[str, Path]) -> None:
    """build_pooling / build_dense_out add as many nodes to ggufx's graph as to llama.cpp's (sched_reserve's
    "graph: nodes"), and a decoder's single-stream graph has llama.cpp's count exactly."""
    assert _their_nodes(other) - _their_nodes(base) == added
    assert _nodes(other, files) - _nodes(base, files) == added
    if base.startswith("qwen3"):
        assert _nodes(base, files) == _their_nodes(base) and _nodes(other, files) == _their_nodes(other)


DECODERS = ("llama", "gemma3", "olmoe", "qwen2moe", "granitehybrid", "lfm2", "qwen3next")


@pytest.mark.parametrize(
    "rid", [rid for rid in SIZED if RUNS[rid][0] in DECODERS and "-np " not in RUNS[rid][1] and "none" not in rid]
)
def test_every_decoders_graph_ends_with_llama_cpps_pooling_nodes(rid: str, files: dict[str, Path]) -> None:
    """llama_model::build_graph adds build_pooling after every architecture's graph (graphsim.build_graph: over the
    decoder's result_norm; lfm2's graph stops there, without logits): the graph of a single-stream run has
    llama.cpp's node count exactly, the model's own graph alone has fewer nodes (the pooling's GET_ROWS, or mean's
    CONT and MUL_MAT, TRANSPOSE being a view), and the compute buffer is llama.cpp's (test_every_buffer_...)."""
    a = embedding_args(rid)
    model = ggufx.open(files[RUNS[rid][0]])
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None and sp.pooling in ("mean", "cls", "last", "rank")
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    own = _Graph()
    own.expand(builder(ld.hp.arch)(c, own))
    assert _nodes(rid, files) == _their_nodes(rid)
    assert "result_embd_pooled" in {n.name for n in _graph(rid, files).nodes}
    assert "result_embd_pooled" not in {n.name for n in own.nodes}
    if ld.hp.arch == "lfm2":  # no logits: the pooled graph is not the model's graph plus nodes
        assert "result_output" not in {n.name for n in _graph(rid, files).nodes}
    else:
        assert len(own.nodes) < _their_nodes(rid)


def _graph(rid: str, files: dict[str, Path]) -> _Graph:
    a = embedding_args(rid)
    model = ggufx.open(files[RUNS[rid][0]])
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(graphsim.build_graph(c, g))
    return g


def test_the_output_buffer_holds_the_embeddings_beside_the_logits(files: dict[str, Path]) -> None:
    """output_reserve(n_seq_max): (n_vocab + n_embd) floats per sequence in an embedding run, n_vocab otherwise."""
    for rid, n_embd in (("bert-emb-c512", 512), ("qwen3-embed-srv-c4096", 1024), ("bert-srv-c512-rerank", 512)):
        a = embedding_args(rid)
        model = ggufx.open(files[RUNS[rid][0]])
        on = breakdown(model, [], a.offload, a.context)
        off = breakdown(model, [], a.offload, replace(a.context, embeddings=False))
        out_on, out_off = (sum(b.bytes for b in bd.buffers if b.kind == "output") for bd in (on, off))
        assert out_on - out_off == 4 * n_embd * a.context.n_parallel
        assert round(out_on / 2**20, 2) == parse_log(TEXT[rid]).buffers["output"]["CPU"]


def test_pooling_changes_the_compute_buffer_as_llama_cpp(files: dict[str, Path]) -> None:
    """Mean pooling's transposed copy and product raise the peak over none (bert: 0.5 MiB at 512 tokens, as
    llama.cpp prints), cls gathers one row per sequence."""
    got = {
        rid: round(sum(b.bytes for b in _replay(rid, files).buffers if b.kind == "compute") / 2**20, 4)
        for rid in (
            "bert-emb-c512-none",
            "bert-emb-c512",
            "bert-emb-c512-mean",
        )
    }
    assert got == {"bert-emb-c512-none": 9.5117, "bert-emb-c512": 9.5127, "bert-emb-c512-mean": 10.0117}


@pytest.mark.parametrize("rid", ABORTED)
def test_the_runs_llama_cpp_aborts_are_refused(rid: str, files: dict[str, Path]) -> None:
    """llama-embedding --attention causal -ub 128: 256 sequences need more outputs than the batch holds
    (output_reserve asserts); mean pooling over -np 3 with 1,024 tokens: the reserve rounds the tokens to 1,026,
    the outputs stay 1,024 (ggml_mul_mat asserts)."""
    assert "# exit status: -6" in TEXT[rid] and "compute buffer size" not in TEXT[rid]
    with pytest.raises(InputError, match="llama.cpp aborts this embedding run") as e:
        _replay(rid, files)
    if "causal" in RUNS[rid][1]:
        assert "256 sequences need 256 outputs, but the batch holds 128" in str(e.value)
        assert "output buffer" not in TEXT[rid]
    else:
        assert "1026 tokens" in str(e.value)
        assert "making n_tokens a multiple of n_seqs - n_tokens = 1026, n_seqs = 3, n_outputs = 1024" in TEXT[rid]


def test_the_tools_command_lines() -> None:
    e = parse_args("llama-embedding -m x -c 512").context
    assert (e.embeddings, e.pooling, e.n_parallel, e.kv_unified, e.n_batch, e.n_ubatch) == (
        True, None, LLAMA_MAX_SEQ, True, 2048, 2048,
    )  # fmt: skip
    e = parse_args("llama-embedding -m x -c 4096 -np 4 --pooling last").context
    assert (e.pooling, e.n_parallel, e.kv_unified, e.n_batch, e.n_ubatch) == ("last", 4, False, 4096, 4096)
    assert parse_args("llama-embedding -m x --attention causal -ub 128").context.n_ubatch == 128
    s = parse_args("llama-server -m x --embedding -b 4096").context
    assert (s.embeddings, s.n_batch, s.n_ubatch, s.n_outputs_max, s.n_parallel) == (True, 512, 512, 0, 4)
    r = parse_args("llama-server -m x --rerank").context
    assert (r.embeddings, r.pooling) == (True, "rank")
    p = parse_args("llama-server -m x --pooling mean").context  # server_output_limits, but no embeddings
    assert (p.embeddings, p.n_outputs_max, p.n_batch) == (False, 0, 2048)
    assert _log_int("qwen3-embed-srv-c4096-pooling-only", "n_outputs_max") == 2048  # the whole batch, not -np's 4
    assert parse_args("llama-server -m x").context.n_outputs_max == 4
    with pytest.raises(InputError, match="invalid argument: --attention"):
        parse_args("llama-server -m x --attention causal")
    with pytest.raises(InputError, match="invalid value 'max'"):
        parse_args("llama-embedding -m x --pooling max")


def test_mem_embedding_cli(files: dict[str, Path], smollm2_path: Path) -> None:
    runner = CliRunner()
    bert = str(files["bert"])
    r = runner.invoke(main, ["mem", bert, "--embedding", "--pooling", "mean", "-c", "512", "--gpus", "none"])
    assert r.exit_code == 0, r.output
    assert "note: embedding run: mean pooling (--pooling) over 1 sequence(s)" in r.output
    # the context line names the run and the pooling in effect (--pooling, else the file's pooling_type)
    (context_line,) = [x for x in r.output.splitlines() if x.startswith("context ")]
    assert context_line.endswith(", no KV cache, embedding run (mean pooling)"), context_line
    r = runner.invoke(main, ["mem", bert, "--embedding", "-c", "512", "--gpus", "none"])
    assert "embedding run (cls pooling)" in r.output  # bert's pooling_type
    r = runner.invoke(main, ["mem", bert, "--embedding", "--pooling", "none", "-c", "512", "--gpus", "none"])
    assert "embedding run (no pooling)" in r.output
    assert "embedding run" not in runner.invoke(main, ["mem", bert, "-c", "512", "--gpus", "none"]).output
    assert "does not add llama.cpp's pooling nodes" not in r.output
    # every decoder's graph ends with the pooling nodes (SmolLM2: llama's builder, graphsim.build_graph): no caveat
    r = runner.invoke(main, ["mem", str(smollm2_path), "--embedding", "--pooling", "mean", "-c", "4096"])
    assert r.exit_code == 0 and "note: embedding run: mean pooling" in r.output
    assert "pooling nodes" not in r.output
    r = runner.invoke(main, ["mem", bert, "--embedding", "-c", "512", "--gpus", "none", "--json"])
    d = json.loads(r.output)
    assert (d["embeddings"], d["pooling"]) == (True, "cls")  # bert's pooling_type
    plain = json.loads(runner.invoke(main, ["mem", bert, "-c", "512", "--gpus", "none", "--json"]).output)
    assert (plain["embeddings"], plain["pooling"]) == (False, None)
    out = {x["kind"]: x["bytes"] for x in d["buffers"] if x["kind"] == "output"}
    assert out["output"] == 4 * (8192 + 512)
    # the buffers of a recorded llama-embedding run, from its command line, checked against its log
    log = EMBEDDING / "bert-emb-c512-mean.log"
    r = runner.invoke(
        main, ["mem", bert, "--llama-args", "llama-embedding -c 512 --pooling mean -dev none", "--check", str(log)]
    )
    assert r.exit_code == 0, r.output
    # refusals: exit 2, one line naming the option
    r = runner.invoke(main, ["mem", bert, "--pooling", "mean"])
    assert r.exit_code == 2 and "--pooling needs --embedding" in r.output
    r = runner.invoke(main, ["mem", bert, "--embedding", "--tool", "llama-completion"])
    assert r.exit_code == 2 and "llama-completion computes no embeddings" in r.output
    r = runner.invoke(main, ["mem", bert, "--embedding", "--pooling", "max"])
    assert r.exit_code == 2
    assert "--embedding" in runner.invoke(main, ["mem", "--help"]).output


def test_mem_fit_with_embedding(files: dict[str, Path]) -> None:
    """--fit sizes the embedding run: llama-server --embedding outputs (and so computes logits for) the whole
    micro-batch, a completion server one token per slot."""
    runner = CliRunner()
    q = str(files["qwen3-embed"])
    common = ["mem", q, "-c", "4096", "-np", "4", "--fit", "4GiB", "--json"]
    emb = json.loads(runner.invoke(main, [*common, "--embedding"]).output)
    srv = json.loads(runner.invoke(main, [*common, "--tool", "llama-server"]).output)
    assert emb["fits"][0]["gpu_bytes"] > srv["fits"][0]["gpu_bytes"]
    r = json.loads(runner.invoke(main, ["mem", q, "-c", "4096", "-np", "4", "--embedding", "--json"]).output)
    assert emb["fits"][0]["gpu_bytes"] == sum(d["self"] + d["output"] for d in r["devices"] if d["name"] == "CUDA0")


def test_the_python_api_mirrors_the_cli(files: dict[str, Path]) -> None:
    """``results.MemoryRequest(embedding=..., pooling=..., tool=...)`` is ``mem --embedding --pooling --tool``: the
    buffers of llama-embedding's recorded run on Qwen3-Embedding-0.6B's shape, from the request's fields."""
    from ggufx import results

    rid = "qwen3-embedding-0.6b-emb-c2048"
    model = ggufx.open(files["qwen3-embedding-0.6b"])
    req = results.MemoryRequest(ctx=2048, tool="llama-embedding", gpus="none")
    res = results.memory(model, req, ggufx.open)
    assert (res["embeddings"], res["pooling"], res["parallel"]) == (True, "last", LLAMA_MAX_SEQ)
    theirs = parse_log(TEXT[rid]).buffers
    for kind in ("kv", "output", "compute"):
        mine = sum(b["bytes"] for b in res["buffers"] if b["kind"] == kind)
        assert round(mine / 2**20, 4 if kind == "compute" else 2) == theirs[kind]["CPU"], kind
    with pytest.raises(InputError, match="--pooling needs --embedding"):
        results.memory(model, results.MemoryRequest(pooling="mean"), ggufx.open)
