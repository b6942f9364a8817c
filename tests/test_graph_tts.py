"""The text-to-speech architectures llama.cpp 11434 loads (issue 25, session 10), each proven on llama.cpp's CPU build
(tests/fixtures/llamacpp-logs-cpu: a small model and one of published dimensions per architecture): every buffer of
every recorded run equal to llama.cpp's, the compute buffer to the 0.0001 MiB of ``~llama_context``'s line.

* ``qwen3tts`` (Qwen3-TTS's talker): ``llama_model_qwen3tts`` is ``llama_model_qwen3vl`` (models.h: it overrides
  nothing), whose loader gives it a codec head of 3072 rows (qwen3vl.cpp:19-29) and whose graph pads the head's
  logits in front with ``-inf`` to the embeddings' rows (qwen3vl.cpp:175-191): graph/models/qwen3tts.py.
* ``pockettts`` (Pocket TTS's backbone, pockettts.cpp): layer norms with biases, Q/K/V optional to the loader, a GELU
  FFN without gate, logits over the token embeddings (no lm_head): graph/models/pockettts.py.
* ``wavtokenizer-dec`` (WavTokenizer's decoder, OuteTTS's vocoder, wavtokenizer-dec.cpp): a 1-D convolution, six
  posnet blocks (group norms, convolutions as IM2COL and MUL_MAT, one attention over the micro-batch), ConvNeXt blocks,
  the head; no memory, no logits. llama-tts no longer runs it (tools/tts is libmtmd's now); llama-completion loads it
  and reserves its graph like any model's (its decode runs too: llama.cpp forces every token out as an embedding).
  Its posnet.N / convnext.N / conv1d weights are layer N's (layer 0's): placement.layer_of.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import arch_of, builder_of
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import (
    CPU_LOGS,
    NODES,
    Refused,
    assert_buffers_equal,
    assert_compute_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_family,
    cpu_model_without,
    node_for_node_test,
    replay_cpu,
    replay_embedding,
)

SMALL = ("qwen3tts", "pockettts", "wavtokenizer-dec")
PUBLISHED = ("qwen3tts-0.6b", "pockettts-en", "wavtokenizer-dec-75t")
RUNS, files = cpu_family((*SMALL, *PUBLISHED), "tts")


def test_qwen3tts_is_registered_as_qwen3vls_loader_with_its_own_builder() -> None:
    a = arch_of("qwen3tts")
    assert a is not None and a.source == "qwen3vl.cpp" and builder_of("qwen3tts") == "qwen3tts"
    assert a.keys == arch_of("qwen3vl").keys  # type: ignore[union-attr]


@pytest.mark.parametrize("name", SMALL[:2])
def test_the_runs_cover_flash_attention_off_quantized_caches_and_micro_batches(name: str) -> None:
    assert_runs_cover(name, ["-fa off", "--no-repack", "-ctk q8_0", "-ub 1024", "-np 3"], at_least=4)


def test_the_vocoder_runs_cover_micro_batches() -> None:
    """No cache to quantize nor sequences to split: the micro-batch is what its graph is sized by."""
    assert_runs_cover("wavtokenizer-dec", ["-fa off", "--no-repack", "-ub 1024", "-ub 256"], at_least=4)


@pytest.mark.parametrize(("name", "rid"), RUNS)
def test_every_compute_buffer_equals_llama_cpps(name: str, rid: str, files: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, files[name])
    assert_compute_equal(text, bd)


NODE_RUNS = {
    "qwen3tts-c8192": "qwen3tts",
    "qwen3tts-c4096-faoff-np3": "qwen3tts",
    "pockettts-c8192": "pockettts",
    "pockettts-c4096-faoff-np3": "pockettts",
    "wavtokenizer-dec-c8192": "wavtokenizer-dec",
    "wavtokenizer-dec-75t-c8192-norepack": "wavtokenizer-dec-75t",
}


test_the_graph_is_llama_cpps_node_for_node = node_for_node_test(
    NODE_RUNS,
    """The reserved graph, node for node (op and size), as llama.cpp's scheduler printed it (GGML_SCHED_DEBUG=2,
    tests/fixtures/llamacpp-logs-cpu/nodes): qwen3vl's layers, then the padded logits; Pocket TTS's
    layer norms, GELU FFN and logits over the embeddings; the vocoder's IM2COL (F16
    over an F32 kernel in the small model, an F16 one in the published), convolution products, group norms and the
    posnet attention's [T, T] scores.""",
)


def test_the_padding_opens_after_the_last_attention() -> None:
    """The final ggml_build_forward_expand visits the concat's first source first: SCALE (one float) and REPEAT
    (8192 - 3072 = 5120 columns of -inf over 512 outputs: 10 MiB) come right after the last layer's attention
    (which build_attn expanded) and before its output projection, FFN and the head's 3072-column product."""
    rows = [r.split("\t") for r in (NODES / "qwen3tts-c8192.tsv").read_text().splitlines() if not r.startswith("#")]
    ops = [(op, size) for _, op, _, size in rows]
    i = ops.index(("SCALE", "0K"))
    assert ops[i - 1][0] == "FLASH_ATTN" and ops[i + 1] == ("REPEAT", "10M")
    assert ops[-2:] == [("MUL_MAT", "6M"), ("CONCAT", "16M")]


def test_a_tied_head_is_qwen3vls_graph(files: dict[str, Path], smollm2_path: Path, tmp_path: Path) -> None:
    """Without output.weight the head is the embeddings' copy (qwen3vl.cpp:31-33), as wide as the vocabulary:
    no padding, the logits the graph's output."""
    tied = cpu_model_without("qwen3tts", tmp_path / "tied.gguf", smollm2_path, tensor="output.weight")
    assert graphsim.simulated(tied) is None
    a = parse_args("-m x -c 8192")
    padded = breakdown(ggufx.open(files["qwen3tts"]), [], a.offload, a.context)
    plain = breakdown(tied, [], a.offload, a.context)
    assert padded.compute_estimate is None and plain.compute_estimate is None
    mine = [sum(b.bytes for b in bd.buffers if b.kind == "compute") for bd in (padded, plain)]
    assert round(mine[0] / MiB, 4) == 44.0254  # qwen3tts-c8192.log
    assert mine[0] != mine[1]


@pytest.mark.parametrize("name", PUBLISHED)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, files: dict[str, Path]) -> None:
    assert_shortcut_is_whole(files[name], "-c 4096", "-c 4096 -fa off -np 3", "-c 8192 -ub 256 -ctk q8_0 -ctv q8_0")


def test_a_qwen3tts_file_without_its_rope_sections_is_refused(smollm2_path: Path, tmp_path: Path) -> None:
    r = Refused(
        "qwen3tts",
        "",
        "the graph needs the metadata key qwen3tts.rope.dimension_sections, which the file lacks",
        drop_key="rope.dimension_sections",
    )
    assert_refused(r, smollm2_path, tmp_path, kv_check="dropped")


def test_the_published_talker_logs_are_its_dimensions() -> None:
    text = (CPU_LOGS / "qwen3tts-0.6b-c4096-norepack.log").read_text()
    assert "n_vocab               = 155008" in text and "n_layer               = 28" in text


def test_pockettts_is_registered_with_its_layer_norm_key() -> None:
    a = arch_of("pockettts")
    assert a is not None and a.source == "pockettts.cpp" and builder_of("pockettts") == "pockettts"
    assert a.keys == ("attention.layer_norm_epsilon",) and a.memory == ""


@pytest.mark.parametrize(
    "tensor", ["blk.2.attn_q.weight", "blk.1.ffn_norm.bias", "output_norm.bias", "blk.3.ffn_up.weight"]
)
def test_a_pockettts_file_without_a_tensor_its_graph_reads_is_refused(
    tensor: str, smollm2_path: Path, tmp_path: Path
) -> None:
    """Q/K/V are optional to pockettts.cpp's loader (create_tensor_qkv with TENSOR_NOT_REQUIRED) but build_qkv needs
    them; the norms' biases and the FFN are required: each missing one is named, and the generic estimate used."""
    r = Refused("pockettts", tensor, f"the graph needs tensor {tensor}, which the file lacks")
    assert_refused(r, smollm2_path, tmp_path)


def test_the_published_backbone_logs_are_its_dimensions() -> None:
    """The English model's 6 layers of 1024 and its 4,003 rows (4,001 conditioner rows and the 2 learned inputs)."""
    text = (CPU_LOGS / "pockettts-en-c4096-norepack.log").read_text()
    assert "n_vocab               = 4003" in text and "n_layer               = 6" in text


def test_wavtokenizer_dec_is_registered_without_memory() -> None:
    a = arch_of("wavtokenizer-dec")
    assert a is not None and a.memory == "none" and builder_of("wavtokenizer-dec") == "wavtokenizer_dec"


@pytest.mark.parametrize(
    "tensor", ["posnet.2.attn_v.weight", "convnext.3.gamma.weight", "token_embd_norm.bias", "output.bias"]
)
def test_a_vocoder_without_a_tensor_its_loader_requires_is_refused(
    tensor: str, smollm2_path: Path, tmp_path: Path
) -> None:
    r = Refused("wavtokenizer-dec", tensor, f"the graph needs tensor {tensor}, which the file lacks")
    assert_refused(r, smollm2_path, tmp_path)


def test_a_seventh_posnet_block_is_refused(smollm2_path: Path, tmp_path: Path) -> None:
    """wavtokenizer-dec.cpp aborts on a posnet block past the sixth ("unknown posnet layer")."""
    r = Refused(
        "wavtokenizer-dec",
        "",
        "wavtokenizer-dec.posnet.block_count is 7: llama.cpp knows 6 posnet blocks and aborts past them",
        add_kv=(("posnet.block_count", 7),),
    )
    assert_refused(r, smollm2_path, tmp_path)


def test_the_vocoder_blocks_are_their_layers_weights() -> None:
    """posnet.N and convnext.N are created with block N, conv1d with block 0 (LLM_TENSOR_LAYER_REPEATING): their
    layer's buffer types. On the CPU build the ConvNeXt products' Q4_K matrices get their CPU_REPACK copy, which
    llama.cpp's log prints (0.84 MiB: 4 layers x pw1 and pw2 of 256 x 768), and which the input layer never gets."""
    from ggufx.analysis.memory.placement import layer_of

    assert layer_of("posnet.5.attn_norm.weight", 6, "wavtokenizer-dec") == 5
    assert layer_of("convnext.3.pw1.weight", 6, "wavtokenizer-dec") == 3
    assert layer_of("conv1d.weight", 6, "wavtokenizer-dec") == 0
    assert layer_of("token_embd.weight", 6, "wavtokenizer-dec") == "input"
    assert layer_of("output.weight", 6, "wavtokenizer-dec") == 6
    assert "CPU_REPACK model buffer size =     0.84 MiB" in (CPU_LOGS / "wavtokenizer-dec-c8192.log").read_text()


EMB_RUNS = {
    "qwen3tts-emb-c4096-none": "qwen3tts",
    "qwen3tts-emb-c4096-last": "qwen3tts",
    "pockettts-emb-c4096-none": "pockettts",
    "wavtokenizer-dec-emb-c4096-none": "wavtokenizer-dec",
    "wavtokenizer-dec-emb-c4096-mean": "wavtokenizer-dec",
}


@pytest.mark.parametrize("rid", EMB_RUNS)
def test_embedding_runs_as_llama_tts_makes_them(rid: str, files: dict[str, Path]) -> None:
    """llama-tts runs the talker and the backbone with embeddings on (tools/tts/tts.cpp: params.embedding = true);
    llama-embedding's runs (tests/fixtures/llamacpp-logs-cpu/embedding: the micro-batch is the 2048-token batch):
    the output buffer holds the embeddings beside the logits (the vocoder's n_embd_out is its embedding_length,
    258 floats, not its 128-wide features), the compute buffer to llama.cpp's figure; last pooling over the
    talker's result_norm, which its padded logits hide from graphsim's walk back (the builder pools itself), and
    mean pooling over the vocoder's result_embd."""
    text, bd = replay_embedding(rid, files[EMB_RUNS[rid]])
    assert_buffers_equal(text, bd, ("output",))
