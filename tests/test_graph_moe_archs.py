"""The mixture-of-experts decoders of issue 25 whose graphs had no builder, against llama.cpp's CPU build:

* ``afmoe`` (src/models/afmoe.cpp, Arcee Trinity): scaled embeddings, sliding-window layers with a full
  layer every fourth (without RoPE), RMS norms of each Q and K head, the sigmoid gate of the attention output
  before its projection, norms before and after attention and FFN, a dense first layer, sigmoid-routed
  experts with the selection bias, normalized and scaled weights, a shared expert;
* ``exaone-moe`` (exaone-moe.cpp, K-EXAONE): three sliding-window layers of every four, RoPE only there,
  RMS norms of each Q and K head, a dense first layer, sigmoid-routed experts with the selection bias,
  normalized and scaled weights, a shared expert; a NextN block left out;
* ``cohere2moe`` (cohere2moe.cpp): layer norm, attention and FFN in parallel on the one input norm, the full
  layer first then three sliding-window layers (the pattern array), RoPE in those and in the dense first
  layer, sigmoid-routed experts (the gating unset) with normalized weights plus a shared expert, their sum
  halved; the last layer on every token, the output norm's rows picked, the logits scaled; with RMS norms
  (the file's RMS epsilon) and an MTP block left out (``cohere2moe-rms-mtp``);
* ``smallthinker`` (smallthinker.cpp): the router's logits from the layer's input before the attention norm
  (their rows picked with the last layer's), experts in every layer (softmax, normalized weights, ReLU: a
  REGLU); with a sliding window, 6 layers of which 0 and 4 are full and without RoPE
  (``n_no_rope_layer_step`` 4); without one (``smallthinker-nowin``), one cache and RoPE everywhere;
* ``phimoe`` (phimoe.cpp's loader, phi3.cpp's graph): RMS norms with biases, the query scaled, the output
  projection's and the head's biases, the residual added first after the FFN; softmax experts with
  normalized weights in every layer;
* ``dbrx`` (dbrx.cpp): layer norms, the fused QKV projection clamped, softmax experts in every layer;
* ``arctic`` (arctic.cpp): a dense FFN of n_embd on the attention's residual and, beside it, softmax experts
  on the layer's input normed by ``ffn_norm_exps``;
* ``grok`` (grok.cpp, Grok-2's shape): scaled embeddings, the attention logits scaled and soft-capped
  (flash attention is off for grok: its runs say so), norms after attention and FFN, GEGLU experts plus the
  dense FFN scaled by sqrt(2)/2, the logits scaled and soft-capped; Grok-1's shape (``grok-1``): the
  experts alone, the logits not soft-capped;
* ``grovemoe`` (grovemoe.cpp): Q/K head norms, the router's logits given to two ``build_moe_ffn`` calls
  (selection on their sigmoid): the experts, then the chunk experts on the experts' output (the ids halved
  through two casts and a scale), scaled and added.

Per model: its compute buffer on its runs (flash attention on and off at 8192 and 16384 cells, -np 3 with its
513-token micro-batch, q8_0 caches, --no-repack, --swa-full where there is a window, --n-cpu-moe), to the
0.0001 MiB of ``~llama_context``'s line; its graph against the one llama.cpp's scheduler printed, node for
node; the layer shortcut against the whole replay; and a file llama.cpp would refuse gets the generic
estimate, with the reason. The small models' compute buffers peak in the attention or the logits; the
``*-wide`` variants of the families whose experts are wired their own way (8 of 16 experts of 1024 used)
peak in the experts, so that their tensors' lifetimes are held too (8192 cells, -np 3, q8_0 caches)."""

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

_LACKS = "the graph needs tensor {}, which the file lacks"


MODELS = (
    "afmoe", "exaone-moe", "cohere2moe", "cohere2moe-rms-mtp", "smallthinker", "smallthinker-nowin", "phimoe",
    "dbrx", "arctic", "grok", "grok-1", "grovemoe",
)  # fmt: skip
SWA = {
    "afmoe",
    "exaone-moe",
    "cohere2moe",
    "cohere2moe-rms-mtp",
    "smallthinker",
}  # the models with a sliding window: a --swa-full run
REFUSED = (
    Refused("afmoe", "blk.2.attn_gate.weight", "the graph needs tensor blk.2.attn_gate.weight, which the file lacks"),
    Refused("afmoe", "blk.3.exp_probs_b.bias", "the graph needs tensor blk.3.exp_probs_b.bias, which the file lacks"),
    Refused(
        "afmoe",
        "",
        "the graph needs afmoe.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 4",
        add_kv=(("expert_gating_func", 4),),
    ),
    Refused(
        "exaone-moe",
        "blk.2.ffn_up_shexp.weight",
        "the graph needs tensor blk.2.ffn_up_shexp.weight, which the file lacks",
    ),
    Refused("exaone-moe", "output.weight", "the graph needs tensor output.weight, which the file lacks"),
    Refused(
        "cohere2moe",
        "blk.2.ffn_gate_inp.weight",
        "the graph needs tensor blk.2.ffn_gate_inp.weight, which the file lacks",
    ),
    Refused(
        "cohere2moe",
        "",
        "the graph needs cohere2moe.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 4",
        add_kv=(("expert_gating_func", 4),),
    ),
    Refused(
        "smallthinker",
        "blk.5.ffn_up_exps.weight",
        "the graph needs tensor blk.5.ffn_up_exps.weight, which the file lacks",
    ),
    Refused(  # optional to smallthinker.cpp's loader, but build_moe_ffn aborts on gating 0
        "smallthinker",
        "",
        "the graph needs smallthinker.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
        drop_key="expert_gating_func",
    ),
    Refused("phimoe", "blk.1.attn_output.bias", "the graph needs tensor blk.1.attn_output.bias, which the file lacks"),
    Refused(
        "phimoe",
        "blk.3.ffn_gate_exps.weight",
        "the graph needs tensor blk.3.ffn_gate_exps.weight, which the file lacks",
    ),
    Refused("dbrx", "blk.2.attn_output_norm.weight", _LACKS.format("blk.2.attn_output_norm.weight")),
    Refused("dbrx", "output.weight", _LACKS.format("output.weight")),
    Refused("arctic", "blk.1.ffn_norm_exps.weight", _LACKS.format("blk.1.ffn_norm_exps.weight")),
    Refused("grok", "blk.3.post_ffw_norm.weight", _LACKS.format("blk.3.post_ffw_norm.weight")),
    Refused("grok", "blk.0.ffn_gate_exps.weight", _LACKS.format("blk.0.ffn_gate_exps.weight")),  # ungated GELU
    Refused("grovemoe", "blk.2.ffn_down_chexps.weight", _LACKS.format("blk.2.ffn_down_chexps.weight")),
    Refused(
        "grovemoe",
        "",
        "the graph needs grovemoe.experts_per_group > 0 dividing grovemoe.expert_count",
        add_kv=(("experts_per_group", 3),),
    ),
)
# llama.cpp turns flash attention off for grok (llama-context.cpp:3819-3822) and then refuses a quantized V
# cache; ggufx's context resolution does not know that yet (a default run would be sized with flash
# attention), so grok's runs say -fa off
FA_OFF = {"grok", "grok-1"}
NODE_RUNS = [(m, f"{m}-{run}") for m in MODELS for run in ("c4096-faoff-np3", "c16384-q8_0") if m not in FA_OFF]
NODE_RUNS += [(m, f"{m}-{run}") for m in sorted(FA_OFF) for run in ("c4096-faoff-np3", "c16384-faoff-ctk-q8_0")]
# the families whose experts are wired their own way, with experts wide enough to make the compute buffer's
# peak theirs (three runs each)
WIDE = ("afmoe-wide", "cohere2moe-wide", "smallthinker-wide", "arctic-wide", "grovemoe-wide", "grok-1-wide")
NODE_RUNS += [(m, f"{m}-c4096-faoff-np3") for m in WIDE]
CPU_RUNS = [(m, rid) for m in MODELS + WIDE for rid in cpu_runs(m)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(MODELS + WIDE, smollm2_path, tmp_path_factory, "moe-families")


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_the_options_that_change_the_graph(name: str) -> None:
    options = ["-fa off", "-np 3", "-ctk q8_0" if name in FA_OFF else "-ctk q8_0 -ctv q8_0", "--no-repack"]
    options += ["--swa-full"] if name in SWA else []
    args = assert_runs_cover(name, options)
    assert any("-fa off" not in a for a in args) or name in FA_OFF


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert bd.compute_estimate is None
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(
    name: str, rid: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order (smallthinker's
    REGLU and grok's GEGLU are GLU ops, as SwiGLU is)."""
    monkeypatch.setitem(graph_arch_logs._OP, "REGLU", "GLU")
    monkeypatch.setitem(graph_arch_logs._OP, "GEGLU", "GLU")
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3", "-c 16384 --swa-full")


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path, kv_check="dropped")
