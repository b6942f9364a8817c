"""The classic decoders llama.cpp knows that ggufx did not register before (issue 25), against llama.cpp's
CPU build (graph/models/<arch>.py over _dense.py and _plain.py):

* ``deci`` (src/models/deci.cpp: DeciLM, Llama-3.x-Nemotron 51B / Super 49B / Ultra 253B): per-layer head
  counts and FFN widths from the arrays; a full-attention layer, the "linear attention" layer (query heads
  without KV heads: attn_output alone), an attention-free layer, one of one KV head and a narrower FFN (its
  V padded to the widest without flash attention), the FFN-free layer whose attention output deci.cpp's
  ``continue`` leaves out of the residual, and llama 3's rope_freqs; over 16 layers (``deci-long``: several
  attention-free layers, Super 49B's, and an FFN-free one, Ultra 253B's, between repeated blocks);
* ``olmo`` (olmo.cpp): layer norms without weights, llama's attention and SwiGLU; with OLMo 1.7's
  ``attention.clamp_kqv`` (``olmo-clamp``: Q, K and V each clamped after its projection);
* ``falcon`` (falcon.cpp): one KV head, the fused QKV, attention and a GELU FFN in parallel on the one
  norm, ``(FFN + attention) + x``; with 2 KV heads and the attention's own input norm (``falcon-40b``);
* ``gptneox`` (gptneox.cpp): layer norms and biases, partial rotary, the parallel residual of
  ``use_parallel_residual`` (``(FFN(ffn_norm(x)) + x) + attention``), and without it (``gptneox-seq``);
* ``mpt``, ``bloom`` and ``jais`` (ALiBi in place of RoPE: Q and K stay views of the fused QKV, which the
  Hadamard rotation of a quantized cache makes contiguous first), bloom with the embeddings' layer norm,
  jais with SwiGLU and biases; ``mpt-clamp``: the fused QKV projection clamped before its views;
* ``starcoder`` and ``gpt2`` (starcoder.cpp, gpt2.cpp): learned absolute positions added to the token rows;
* ``refact`` (refact.cpp): the llama graph without RoPE; ``codeshell`` (codeshell.cpp): layer norms, biases,
  RoPE, a GELU FFN; ``jais2`` (jais2.cpp): layer norms, biases, an FFN of up, ReLU squared and down;
* ``bitnet`` (bitnet.cpp): llama's layer with RMS sub-norms before ``attn_output`` and ``ffn_down``, the
  per-tensor scales of some projections (a MUL after the product), the token embeddings as the head;
* ``plamo`` (plamo.cpp): RMS norms, attention and SwiGLU in parallel on the one norm (falcon's residual);
  ``pangu-embedded`` (pangu-embed.cpp) and ``nanbeige`` (nanbeige.cpp; its loops: test_nanbeige_loops.py): the llama graph;
* ``plamo3`` (plamo3.cpp): 8 layers of which the sliding-window pattern's default makes the eighth full (also
  with --swa-full), the fused QKV (V a strided view of it, made contiguous for the Hadamard rotation of a
  quantized cache), Q/K head norms, the post norms (named without ``.weight`` by its loader), the fused up
  projection's SwiGLU;
* ``mellum`` (mellum.cpp): qwen3moe's layer (Q/K head norms, softmax experts with normalized weights) over 8
  layers of which the pattern's default makes every fourth full (also with --swa-full);
* ``laguna`` (laguna.cpp): per-layer query heads, Q/K head norms, the softplus gate of the attention output
  (per head and per element), a dense first layer, sigmoid experts with the selection bias plus a shared
  expert, over the sliding-window pattern whose first layer of four is full (also with --swa-full);
* ``plm`` (plm.cpp): minicpm3's expanded latent attention without the Q compression, an FFN of up, ReLU
  squared and down, the token embeddings as the head (flash attention off only: llama.cpp aborts with it);
* ``granite_swa`` (granite-swa.cpp): granite's scales over the sliding-window pattern array, sinks in every
  layer, NoPE layers from ``attention.rope_pattern`` (also with --swa-full).

Per model: its compute buffer on its runs (flash attention on and off at 8192 and 16384 cells, -np 3
with its 513-token micro-batch, q8_0 caches, --no-repack), to the 0.0001 MiB of ``~llama_context``'s line;
its graph against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the
whole replay; and per builder a file llama.cpp would refuse gets the generic estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import graph_arch_logs
from .graph_arch_logs import (
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

MODELS = (
    "deci", "deci-long", "olmo", "olmo-clamp", "falcon", "falcon-40b", "gptneox", "gptneox-seq", "mpt", "mpt-clamp", "starcoder",
    "gpt2", "bloom", "refact", "codeshell", "jais", "jais2", "bitnet", "plamo", "pangu-embedded", "nanbeige",
    "plamo3", "mellum", "laguna", "plm", "granite_swa",
)  # fmt: skip
# llama.cpp 11434 aborts on plm's graph with flash attention (its V, a 2-D view, is taken for one token of
# n_tokens heads by the cache's cpy_v: GGML_ASSERT in ggml_set_rows): its runs are all -fa off, the quantized
# cache a K cache
FA_OFF_ONLY = {"plm": "c16384-faoff-ctkq8"}
REFUSED = (
    Refused(
        "deci", "blk.1.attn_output.weight", "the graph needs tensor blk.1.attn_output.weight, which the file lacks"
    ),
    Refused("deci", "blk.3.ffn_gate.weight", "the graph needs tensor blk.3.ffn_gate.weight, which the file lacks"),
    Refused("olmo", "blk.2.ffn_gate.weight", "the graph needs tensor blk.2.ffn_gate.weight, which the file lacks"),
    Refused("falcon", "blk.0.attn_norm.bias", "the graph needs tensor blk.0.attn_norm.bias, which the file lacks"),
    Refused(
        "gptneox",
        "",
        "the gptneox graph needs gptneox.use_parallel_residual, which llama.cpp requires",
        drop_key="use_parallel_residual",
    ),
    Refused("gptneox", "output.weight", "the graph needs tensor output.weight, which the file lacks"),
    Refused("mpt", "blk.1.attn_qkv.weight", "the graph needs tensor blk.1.attn_qkv.weight, which the file lacks"),
    Refused("starcoder", "position_embd.weight", "the graph needs tensor position_embd.weight, which the file lacks"),
    Refused("gpt2", "blk.3.ffn_up.bias", "the graph needs tensor blk.3.ffn_up.bias, which the file lacks"),
    Refused("bloom", "token_embd_norm.bias", "the graph needs tensor token_embd_norm.bias, which the file lacks"),
    Refused(
        "refact",
        "",
        "refact graphs with experts are not simulated (refact.cpp's graph has no expert FFN)",
        add_kv=(("expert_count", 8),),
    ),
    Refused("codeshell", "token_embd.weight", "the graph needs tensor token_embd.weight, which the file lacks"),
    Refused("jais", "blk.2.ffn_gate.bias", "the graph needs tensor blk.2.ffn_gate.bias, which the file lacks"),
    Refused(
        "bitnet",
        "blk.2.attn_sub_norm.weight",
        "the graph needs tensor blk.2.attn_sub_norm.weight, which the file lacks",
    ),
    Refused("plamo", "output.weight", "the graph needs tensor output.weight, which the file lacks"),
    Refused(
        "pangu-embedded",
        "blk.1.attn_output.bias",
        "the graph needs tensor blk.1.attn_output.bias, which the file lacks",
    ),
    Refused(  # the looped layers (num_loops) multiply by the first pass's tensors: a block missing one is refused
        "nanbeige",
        "blk.3.ffn_down.weight",
        "the graph needs tensor blk.3.ffn_down.weight, which the file lacks",
        add_kv=(("num_loops", 2),),
    ),
    Refused("plamo3", "blk.3.post_ffw_norm", "the graph needs tensor blk.3.post_ffw_norm, which the file lacks"),
    Refused(
        "mellum", "blk.5.ffn_up_exps.weight", "the graph needs tensor blk.5.ffn_up_exps.weight, which the file lacks"
    ),
    Refused("laguna", "blk.6.attn_gate.weight", "the graph needs tensor blk.6.attn_gate.weight, which the file lacks"),
    Refused("laguna", "blk.3.exp_probs_b.bias", "the graph needs tensor blk.3.exp_probs_b.bias, which the file lacks"),
    Refused("plm", "blk.2.attn_kv_b.weight", "the graph needs tensor blk.2.attn_kv_b.weight, which the file lacks"),
    Refused(
        "granite_swa", "blk.4.attn_sinks.weight", "the graph needs tensor blk.4.attn_sinks.weight, which the file lacks"
    ),
    Refused(  # GraniteMoeSWAForCausalLM's fused gate-up experts and fused shared expert are not rebuilt
        "granite_swa",
        "",
        "granite_swa graphs with experts (GraniteMoeSWAForCausalLM) are not simulated",
        add_kv=(("expert_count", 8),),
    ),
    Refused("jais2", "output_norm.bias", "the graph needs tensor output_norm.bias, which the file lacks"),
    Refused(
        "deci",
        "",
        "deci graphs with other query head counts than layer 0's are not simulated",
        drop_key="attention.head_count",
        add_kv=(("attention.head_count", [8, 8, 0, 4, 8, 8]),),
    ),
)
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS, smollm2_path, tmp_path_factory, "classic-families")


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_no_repack(name: str) -> None:
    options = ("-fa off", "-np 3", "-ctk q8_0" + ("" if name in FA_OFF_ONLY else " -ctv q8_0"), "--no-repack")
    args = assert_runs_cover(name, options)
    if name in FA_OFF_ONLY:
        assert all("-fa off" in a for a in args)
    assert name in FA_OFF_ONLY or any("-fa off" not in a for a in args)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("run", ["c4096-faoff-np3", "c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(
    name: str, run: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order (gemma's
    GEGLU is a GLU op, as SwiGLU is)."""
    monkeypatch.setitem(graph_arch_logs._OP, "GEGLU", "GLU")
    if name in FA_OFF_ONLY and run == "c16384-q8_0":
        run = FA_OFF_ONLY[name]
    assert_nodes_equal(f"{name}-{run}", models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(
        models[name], "-c 8192" + (" -fa off" if name in FA_OFF_ONLY else ""), "-c 4096 -fa off -np 3"
    )


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or r.drop_key or r.add_kv[0][0]}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path, kv_check="count")
