"""The embedding encoders (issue 25): ``bert`` (bge, all-MiniLM), ``nomic-bert`` / ``nomic-bert-moe`` (nomic-embed-text v1.5, v2-moe), ``jina-bert-v2`` / ``jina-bert-v3``
(jina-embeddings), ``neo-bert`` (NeoBERT), ``eurobert`` (EuroBERT) and
``gemma-embedding`` (EmbeddingGemma) and ``modern-bert`` (modernbert-embed, gte-modernbert), run with llama.cpp as ``llama-embedding`` / ``llama-server --embedding`` do.

llama.cpp makes no memory for them (llama-model.cpp create_memory: ``res = nullptr`` for the BERT-style encoders
and gemma-embedding): no KV cache, whatever the context; ggufx allocates none (buffers.NO_MEMORY, as for clef).
Their graph attends over the micro-batch alone, without a causal mask (``build_attn_inp_no_cache``), and
graph/models/bert.py, neo_bert.py, gemma_embedding.py and modern_bert.py rebuild it: on every CPU run recorded
(tests/fixtures/llamacpp-logs-cpu: small models of each family and the published shapes of bge-base-en-v1.5,
nomic-embed-text-v1.5, EmbeddingGemma-300m and modernbert-embed-base) every buffer equals llama.cpp's, the compute buffer to the 0.0001 MiB
of ``~llama_context``'s line where the log has it (else the 0.01 of ``sched_reserve``'s)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import arch_of, builder_of, sharing
from ggufx.analysis.memory.buffers import NO_MEMORY, breakdown
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log

from .graph_arch_logs import (
    CPU_LOGS,
    Refused,
    assert_buffers_equal,
    assert_no_cache,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_family,
    cpu_runs,
    node_for_node_test,
    replay_cpu,
)

SMALL = (
    "bert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "jina-bert-v3",
    "neo-bert",
    "eurobert",
    "gemma-embedding",
    "modern-bert",
)
PUBLISHED = ("bge-base", "nomic-embed-v1.5", "embeddinggemma-300m", "modernbert-embed-base", "nomic-embed-v2-moe")
MODELS = SMALL + PUBLISHED
RUNS, files = cpu_family(MODELS, "encoders", (*MODELS, "llama-embed"))
LLAMA_EMBED_RUNS = cpu_runs("llama-embed")


def test_the_encoders_are_registered_without_memory_and_with_builders() -> None:
    for name, builder in (
        ("bert", "bert"),
        ("nomic-bert", "bert"),
        ("nomic-bert-moe", "bert"),
        ("jina-bert-v2", "bert"),
        ("jina-bert-v3", "bert"),
        ("neo-bert", "neo_bert"),
        ("eurobert", "neo_bert"),
        ("gemma-embedding", "gemma_embedding"),
        ("modern-bert", "modern_bert"),
    ):
        assert arch_of(name) is not None and name in NO_MEMORY and builder_of(name) == builder, name
    assert sharing("bert") == ["bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3"]


@pytest.mark.parametrize("name", SMALL)
def test_the_runs_cover_flash_attention_off_parallel_sequences_and_repacking(name: str) -> None:
    assert_runs_cover(name, ("-fa off", "-np 3", "--no-repack", "-ub "), at_least=4)


@pytest.mark.parametrize(("name", "rid"), RUNS)
def test_no_cache_and_every_buffer_equals_llama_cpp(name: str, rid: str, files: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, files[name])
    assert_no_cache(text, bd)
    assert_buffers_equal(text, bd, ("model", "output"))


@pytest.mark.parametrize("rid", LLAMA_EMBED_RUNS)
def test_llama_embed_keeps_the_default_cache_its_graph_never_reads(rid: str, files: dict[str, Path]) -> None:
    """llama-embed is not among create_memory's memory-less architectures: llama.cpp allocates the default KV cache
    (and ggufx with it), though its graph (llm_graph_input_attn_no_cache) neither writes nor reads it."""
    assert "llama-embed" not in NO_MEMORY and builder_of("llama-embed") == "neo_bert"
    text, bd = replay_cpu(rid, files["llama-embed"])
    assert "llama_kv_cache" in text and parse_log(text).buffers["kv"]
    assert_buffers_equal(text, bd, ("model", "output", "kv"))


def test_the_layers_would_keep_a_cache_in_a_decoder(files: dict[str, Path]) -> None:
    """The layers are attention layers (a decoder would cache them; EmbeddingGemma's five of six with the
    window): only create_memory's choice leaves the cache out."""
    kinds = layer_kinds(ggufx.open(files["gemma-embedding"]))
    assert [k.kv for k in kinds] == [True] * 6
    assert [k.mixer for k in kinds] == ["attention (SWA)"] * 5 + ["attention"]


def test_without_a_cache_the_memory_does_not_follow_the_context(files: dict[str, Path]) -> None:
    """ggufx: nomic-embed-text-v1.5 at 2,048 and 8,192 tokens of context needs the same buffers (llama.cpp's runs
    at both contexts print no cache)."""
    model = ggufx.open(files["nomic-embed-v1.5"])
    sizes = []
    for ctx in (2048, 8192):
        a = parse_args(f"-m x -c {ctx} -fa off")
        bd = breakdown(model, [], a.offload, a.context)
        sizes.append(sorted((b.kind, b.buft, b.bytes) for b in bd.buffers))
    assert sizes[0] == sizes[1]
    logs = [(CPU_LOGS / f"{rid}.log").read_text() for rid in ("nomic-embed-v1.5-c2048", "nomic-embed-v1.5-c8192-faoff")]
    assert all("llama_kv_cache" not in t for t in logs)


def test_flash_attention_casts_k_and_v_to_f16(files: dict[str, Path]) -> None:
    """With flash attention K and V are cast to F16 (llama-graph.cpp:2726-2733) and the scores are never
    materialised: the compute buffer is below the one without it, as llama.cpp's runs print."""
    _, on = replay_cpu("bert-c512", files["bert"])
    _, off = replay_cpu("bert-c512-faoff", files["bert"])
    comp = [sum(b.bytes for b in bd.buffers if b.kind == "compute") for bd in (on, off)]
    assert 0 < comp[0] < comp[1]


NODE_RUNS = {
    "bert-c512-faoff": "bert",
    "nomic-bert-c2048": "nomic-bert",
    "nomic-bert-moe-c512": "nomic-bert-moe",
    "jina-bert-v2-c8192": "jina-bert-v2",
    "neo-bert-c4096-faoff": "neo-bert",
    "eurobert-c8192": "eurobert",
    "llama-embed-c4096": "llama-embed",
    "gemma-embedding-c2048": "gemma-embedding",
    "modern-bert-c8192-faoff": "modern-bert",
}


test_the_graph_is_llama_cpps_node_for_node = node_for_node_test(
    NODE_RUNS,
    """Each builder's prompt-processing graph, node for node (op and size), as llama.cpp's scheduler printed it
    (GGML_SCHED_DEBUG=2, tests/fixtures/llamacpp-logs-cpu/nodes): with flash attention K and V cast to F16 (CPY),
    without it the scores over the micro-batch; bert's position rows, the token-type row, nomic-moe's experts.""",
)


@pytest.mark.parametrize("name", PUBLISHED)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, files: dict[str, Path]) -> None:
    assert_shortcut_is_whole(files[name], "-c 2048", "-c 2048 -fa off -np 3")


@pytest.mark.parametrize(
    "r",
    [
        Refused("bert", "position_embd.weight", "the graph needs tensor position_embd.weight, which the file lacks"),
        Refused(
            "nomic-bert", "blk.1.ffn_gate.weight", "the graph needs tensor blk.1.ffn_gate.weight, which the file lacks"
        ),
        Refused(
            "nomic-bert-moe",
            "blk.3.ffn_up_exps.weight",
            "the graph needs tensor blk.3.ffn_up_exps.weight, which the file lacks",
        ),
        Refused(
            "jina-bert-v2", "blk.2.ffn_down.bias", "the graph needs tensor blk.2.ffn_down.bias, which the file lacks"
        ),
        Refused(
            "neo-bert", "enc.output_norm.weight", "the graph needs tensor enc.output_norm.weight, which the file lacks"
        ),
        Refused(
            "eurobert", "blk.3.ffn_gate.weight", "the graph needs tensor blk.3.ffn_gate.weight, which the file lacks"
        ),
        Refused(
            "llama-embed", "blk.0.ffn_gate.weight", "the graph needs tensor blk.0.ffn_gate.weight, which the file lacks"
        ),
        Refused(
            "gemma-embedding",
            "blk.2.attn_q_norm.weight",
            "the graph needs tensor blk.2.attn_q_norm.weight, which the file lacks",
        ),
        Refused(
            "modern-bert",
            "",
            "the graph of a decision model (decision.block_count > 0) is not built",
            add_kv=(("decision.block_count", 1),),
        ),
        Refused(
            "modern-bert",
            "",
            "the graph needs a GLU hidden_activation, not gelu_pytorch_tanh",
            add_kv=(("hidden_activation", "gelu_pytorch_tanh"),),
        ),
    ],
    ids=lambda r: f"{r.model}-{r.drop_tensor or r.add_kv[0][0]}",
)
def test_a_file_without_what_the_graph_reads_gets_the_generic_estimate(
    r: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(r, smollm2_path, tmp_path)
