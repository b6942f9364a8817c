"""The plain decoders whose llama.cpp graph is the llama graph with small differences, against llama.cpp's
CPU build (graph/models/_dense.py, _plain.py, _moe_dense.py):

* ``olmoe`` (src/models/olmoe.cpp): RMS norms of the whole Q and K projections, softmax-routed experts
  with unnormalized weights;
* ``arcee`` (arcee.cpp): llama's layer with an FFN of up, ReLU squared and down;
* ``command-r`` (command-r.cpp): layer norm, attention and FFN in parallel, the logits scaled; with 64
  layers (``command-r-qk``, Command-R+) the layer norms of each Q and K head;
* ``gemma`` (gemma.cpp): scaled embeddings and query, GEGLU, one KV head of 256;
* ``internlm2`` (internlm2.cpp) and ``exaone`` (exaone.cpp): the llama graph;
* ``starcoder2`` (starcoder2.cpp): layer norms and projections with biases, a GELU FFN without gate;
* ``phi2`` (phi2.cpp): the fused QKV with bias, partial rotary, attention and GELU FFN in parallel;
* ``stablelm`` (stablelm.cpp): layer norms with biases, partial rotary; with an FFN norm (1.6B) and
  without it (12B: Q/K head norms, the FFN of the attention's input norm);
* ``hunyuan-dense`` (hunyuan-vl.cpp's graph): Q and K heads RMS-normed after RoPE, a dense FFN;
* ``dots1`` (dots1.cpp) and ``bailingmoe2`` (bailingmoe2.cpp: the fused QKV, a NextN block left out):
  Q/K head norms, a leading dense layer, sigmoid-routed experts with the selection bias, normalized and
  scaled weights, a shared expert;
* ``mistral4`` (deepseek2.cpp's loader and graph): DeepSeek V3's MLA shape under its own name;
* ``minicpm3`` (minicpm3.cpp): expanded multi-head latent attention (K of the heads' own part and a
  shared rope part repeated over the heads) over an ordinary cache, the MiniCPM scales;
* ``mimo2`` (mimo2.cpp): sliding-window layers from the pattern array on their own cache, per-layer KV
  heads (the V cache padded to the widest without flash attention), K wider than V, sinks, the scaled
  attention output, a dense first layer then sigmoid-routed experts (also with --swa-full);
* ``step35`` (step35.cpp): mimo2's layer kinds with per-layer query heads, Q/K head norms, the head-wise
  sigmoid gate of the attention output, experts plus a shared expert, the hidden state an output and the
  rows picked after the layers (also with --swa-full); with SwiGLU clamps (``step35-clamp``: the experts'
  of two layers, the dense layer's and a shared expert's);
* ``xverse`` (the llama graph), ``orion`` (with layer norms), ``qwen`` (Qwen 1: the fused QKV with its
  bias), ``nemotron`` (layer norms, an FFN of up, ReLU squared, down), ``minicpm`` (granite's graph with
  MiniCPM's default scales), ``deepseek`` (V1: a dense first layer, softmax experts plus shared experts)
  and ``bailingmoe`` (Ling 1.x: normalized softmax experts plus a shared expert in every layer);
* ``maincoder`` (hunyuan-dense's graph), ``baichuan`` (no RoPE; with it at 32 layers, ``baichuan-7b``) and
  ``chatglm`` (the fused QKV with its bias, the fused up projection's SwiGLU over its halves).

Per model: its compute buffer on its runs (flash attention on and off at 8192 and 16384 cells, -np 3
with its 513-token micro-batch, q8_0 caches, --no-repack), to the 0.0001 MiB of ``~llama_context``'s line;
its graph against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the
whole replay; and per builder family a file llama.cpp would refuse gets the generic estimate, with the
reason."""

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
    "olmoe", "arcee", "command-r", "gemma", "internlm2", "starcoder2", "exaone", "phi2", "stablelm", "stablelm-par",
    "hunyuan-dense", "dots1", "bailingmoe2", "mistral4", "minicpm3", "mimo2", "step35",
    "step35-clamp", "command-r-qk", "xverse", "orion", "qwen", "nemotron", "deepseek", "bailingmoe", "minicpm",
    "maincoder", "baichuan", "baichuan-7b", "chatglm",
)  # fmt: skip
# one refused file per builder family: _moe_dense (olmoe), _plain (arcee, starcoder2's required biases,
# phi2's output bias), _dense (gemma), and the switches of command-r and stablelm
REFUSED = (
    Refused(
        "olmoe", "blk.2.attn_k_norm.weight", "the graph needs tensor blk.2.attn_k_norm.weight, which the file lacks"
    ),
    Refused("arcee", "blk.1.ffn_up.weight", "the graph needs tensor blk.1.ffn_up.weight, which the file lacks"),
    Refused("starcoder2", "blk.3.ffn_up.bias", "the graph needs tensor blk.3.ffn_up.bias, which the file lacks"),
    Refused("phi2", "output.bias", "the graph needs tensor output.bias, which the file lacks"),
    Refused("gemma", "blk.0.ffn_gate.weight", "the graph needs tensor blk.0.ffn_gate.weight, which the file lacks"),
    Refused(
        "command-r", "blk.1.attn_norm.weight", "the graph needs tensor blk.1.attn_norm.weight, which the file lacks"
    ),
    Refused("stablelm", "blk.2.ffn_norm.weight", "stablelm graphs with ffn_norm in some layers only are not simulated"),
    Refused(
        "hunyuan-dense",
        "blk.3.attn_q_norm.weight",
        "the graph needs tensor blk.3.attn_q_norm.weight, which the file lacks",
    ),
    Refused(
        "bailingmoe2",
        "blk.2.ffn_up_shexp.weight",
        "the graph needs tensor blk.2.ffn_up_shexp.weight, which the file lacks",
    ),
    Refused(  # llama.cpp's build_moe_ffn aborts on gating 0
        "dots1",
        "",
        "the graph needs dots1.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
        drop_key="expert_gating_func",
    ),
    Refused("chatglm", "blk.3.ffn_down.weight", "the graph needs tensor blk.3.ffn_down.weight, which the file lacks"),
    Refused("minicpm", "blk.2.ffn_up.weight", "the graph needs tensor blk.2.ffn_up.weight, which the file lacks"),
    Refused(
        "deepseek",
        "blk.2.ffn_up_shexp.weight",
        "the graph needs tensor blk.2.ffn_up_shexp.weight, which the file lacks",
    ),
    Refused(
        "mimo2", "blk.2.ffn_up_exps.weight", "the graph needs tensor blk.2.ffn_up_exps.weight, which the file lacks"
    ),
    Refused(  # the gating set to 4 (sqrt-softplus, not built): llama.cpp's build_moe_ffn knows it
        "step35",
        "",
        "the graph needs step35.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 4",
        add_kv=(("expert_gating_func", 4),),
    ),
    Refused(
        "minicpm3", "blk.1.attn_kv_b.weight", "the graph needs tensor blk.1.attn_kv_b.weight, which the file lacks"
    ),
    Refused(
        "mistral4",
        "blk.1.ffn_gate_exps.weight",
        "the graph needs tensor blk.1.ffn_gate_exps.weight, which the file lacks",
    ),
)
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS, smollm2_path, tmp_path_factory, "plain-families")


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_no_repack(name: str) -> None:
    args = assert_runs_cover(name, ("-fa off", "-np 3", "-ctk q8_0 -ctv q8_0", "--no-repack"))
    assert any("-fa off" not in a for a in args)


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
    assert_nodes_equal(f"{name}-{run}", models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: r.model)
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path, kv_check="count")
