"""The recurrent and hybrid architectures whose graph builders issue 25 added, against llama.cpp's CPU build
(tests/fixtures/llamacpp-logs-cpu):

* ``kimi-linear`` (src/models/kimi-linear.cpp, Kimi Linear 48B-A3B's structure: graph/models/kimi_linear.py):
  Kimi-delta-attention layers (Q/K/V short convolutions over a cached state, the per-channel gate, the fused
  ``GATED_DELTA_NET`` node, the gated head norm) and MLA layers without RoPE over a K-only cache, a dense
  first layer then sigmoid-routed experts plus a shared expert;
* ``rwkv7`` (rwkv7.cpp over rwkv7-base.cpp: graph/models/rwkv7.py): the time mix's six token-shift
  interpolations, the low-rank decay, value-residual, learning-rate and gate paths, the fused ``RWKV_WKV7``
  node over the per-head state, the group norm, the channel mix (ReLU squared) with its own token shift;
  ``rwkv7-8k`` is the model with an 8,192-token vocabulary (with 49,152 the logits are the buffer's peak,
  and those runs end in an abort over the zero weights: tests/test_arch_logs.py holds their two decimals);
* ``arwkv7`` (arwkv7.cpp): the same time mix without the optional gate and group norm, RMS norms, one token
  shift, a SwiGLU FFN;
* ``rwkv6`` (rwkv6.cpp over rwkv6-base.cpp: graph/models/rwkv6.py): the data-dependent token shift (one
  low-rank projection to the five fused interpolations), the fused ``RWKV_WKV6`` node with its per-head bonus,
  the group norm, the SiLU gate, the channel mix with its sigmoid receptance, the residual halved every
  ``rescale_every_n_layers``;
* ``rwkv6qwen2`` (rwkv6qwen2.cpp, QRWKV-6): the same time mix without ``time_mix_first`` (the fused
  ``GATED_LINEAR_ATTN`` node, the sigmoid gate), grouped KV heads repeated, Qwen's biases, RMS norms, one
  token shift, a SwiGLU FFN;
* ``jamba`` (jamba.cpp: graph/models/jamba.py): Mamba-1 layers with dt's, B's and C's weighted RMS norms,
  attention without RoPE in one layer of eight, a dense FFN or softmax-routed experts every other layer;
* ``plamo2`` (plamo2.cpp: graph/models/plamo2.py): PLaMo's Mamba mixer (the in-projection interleaving z and
  x per head, no groups, B/C/dt norms) alternating with attention over one fused QKV projection (per-head
  Q/K norms, RoPE; V a strided view that llama.cpp copies contiguous into a transposed or rotated cache),
  post-mixer and post-FFN norms, a SwiGLU FFN of one up projection;
* ``minimax-01`` (minimax-01.cpp: graph/models/minimax_01.py): lightning attention (the fused QKV's SiLU, the
  position decays within the micro-batch, the per-head state decayed and written back, the RMS norm and
  sigmoid gate) and softmax attention every fourth layer, softmax experts in every layer, the scaled
  residuals of the normed inputs. llama.cpp aborts it with -np > 1: its runs have one sequence.

Per model: its compute buffer on every recorded run (flash attention on and off, -np 3 with its 513-token
micro-batch, -np 3 at 8192 cells, q8_0 caches, -ub 1024, --n-cpu-moe) to the 0.0001 MiB of
``~llama_context``'s line; its graph against the one llama.cpp's scheduler printed, node for node; the
layer shortcut against the whole replay; and a file llama.cpp would refuse gets the generic estimate, with
the reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import (
    CPU_LOGS,
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

# the models and the runs whose graph llama.cpp's scheduler printed (nodes/<id>.tsv: the last prompt graph
# reserved, which for kimi-linear is the one of a single sequence, llama-context.cpp:715-728)
MODELS = {
    "kimi-linear": ("kimi-linear-c8192", "kimi-linear-c8192-faoff", "kimi-linear-c16384-q8_0"),
    "rwkv7-8k": ("rwkv7-8k-c8192", "rwkv7-8k-c4096-faoff-np3"),
    "arwkv7": ("arwkv7-c8192", "arwkv7-c4096-faoff-np3"),
    "rwkv6": ("rwkv6-c8192", "rwkv6-c4096-faoff-np3"),
    "rwkv6qwen2": ("rwkv6qwen2-c8192", "rwkv6qwen2-c4096-faoff-np3"),
    "jamba": ("jamba-c8192", "jamba-c4096-faoff-np3", "jamba-c16384-q8_0"),
    "plamo2": ("plamo2-c8192", "plamo2-c4096-faoff-np3", "plamo2-c16384-q8_0"),
    "minimax-01": ("minimax-01-c8192", "minimax-01-c8192-faoff", "minimax-01-c16384-q8_0"),
}
# llama.cpp aborts minimax-01 with -np > 1 (ggml.c:2072, ggml_can_repeat, in the reservation of one sequence
# of a full micro-batch that follows the one of every sequence: llama-context.cpp:715-728): no such runs
SINGLE_SEQUENCE = {"minimax-01"}
# one file per builder that llama.cpp would refuse: (model, tensor dropped, metadata changed, the reason)
REFUSED = (
    (
        "kimi-linear",
        "blk.2.ssm_g_b.weight",
        {},
        "the graph needs tensor blk.2.ssm_g_b.weight, which the file lacks",
    ),
    (
        "kimi-linear",
        "blk.3.ffn_up_shexp.weight",
        {},
        "the graph needs tensor blk.3.ffn_up_shexp.weight, which the file lacks",
    ),
    (
        "kimi-linear",
        "",
        {"expert_gating_func": 0},
        "the graph needs kimi-linear.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 0",
    ),
    (
        "rwkv7-8k",
        "blk.2.channel_mix_key.weight",
        {},
        "the graph needs tensor blk.2.channel_mix_key.weight, which the file lacks",
    ),
    (
        "rwkv7-8k",
        "blk.1.time_mix_g2.weight",
        {},
        "the graph needs tensor blk.1.time_mix_g1.weight, which the file lacks",
    ),
    ("arwkv7", "blk.1.ffn_up.weight", {}, "the graph needs tensor blk.1.ffn_up.weight, which the file lacks"),
    (  # arwkv7.cpp:118 asserts one token shift (n_embd_r == n_embd)
        "arwkv7",
        "",
        {"token_shift_count": 2},
        "the graph needs arwkv7.token_shift_count 1, not 2",
    ),
    (
        "rwkv6",
        "blk.3.channel_mix_receptance.weight",
        {},
        "the graph needs tensor blk.3.channel_mix_receptance.weight, which the file lacks",
    ),
    (  # neither the fused interpolations nor the five separate ones: rwkv6-base.cpp would add a null tensor
        "rwkv6",
        "blk.2.time_mix_lerp_fused.weight",
        {},
        "the graph needs tensor blk.2.time_mix_lerp_w.weight, which the file lacks",
    ),
    (
        "rwkv6qwen2",
        "",
        {"attention.head_count_kv": 3},
        "the graph needs head_count_kv dividing the 16 heads in layer 0",
    ),
    ("rwkv6qwen2", "", {"token_shift_count": 2}, "the graph needs rwkv6qwen2.token_shift_count 1, not 2"),
    ("jamba", "blk.2.ssm_b_norm.weight", {}, "the graph needs tensor blk.2.ssm_b_norm.weight, which the file lacks"),
    ("jamba", "blk.5.ffn_up_exps.weight", {}, "the graph needs tensor blk.5.ffn_up_exps.weight, which the file lacks"),
    (  # jamba.cpp:31 asserts an inner size of twice the embeddings
        "jamba",
        "",
        {"ssm.inner_size": 3072},
        "the graph needs jamba.ssm.conv_kernel >= 2 and ssm.inner_size = 2 x embedding_length",
    ),
    ("plamo2", "blk.1.attn_k_norm.weight", {}, "the graph needs tensor blk.1.attn_k_norm.weight, which the file lacks"),
    ("plamo2", "blk.2.ssm_dt_norm", {}, "the graph needs tensor blk.2.ssm_dt_norm, which the file lacks"),
    ("plamo2", "", {"ssm.group_count": 1}, "the graph needs plamo2.ssm.group_count 0 (plamo2.cpp:289)"),
    (
        "minimax-01",
        "blk.5.attn_norm_2.weight",
        {},
        "the graph needs tensor blk.5.attn_norm_2.weight, which the file lacks",
    ),
    (
        "minimax-01",
        "blk.2.ffn_gate_exps.weight",
        {},
        "the graph needs tensor blk.2.ffn_gate_exps.weight, which the file lacks",
    ),
)
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rids in MODELS.items() for rid in rids]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(tuple(MODELS), smollm2_path, tmp_path_factory, "recurrent-families")


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache(name: str) -> None:
    options = ("-fa off", "-ctk q8_0 -ctv q8_0") + (() if name in SINGLE_SEQUENCE else ("-np 3", "-c 8192 -np 3"))
    args = assert_runs_cover(name, options)
    assert any("-fa off" not in a for a in args)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order (RWKV's EXP
    and NEG are unary ops)."""
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


# the states the graph reads and writes: (model, run, sequences, recurrent layers, R and S bytes per layer
# and sequence: llama_hparams::n_embd_r/n_embd_s x 4, llama-hparams.cpp:208-258)
STATES = (
    # KDA: Q, K and V's (4 - 1) cached columns of 8 heads of 128, and 128 x 128 per head
    ("kimi-linear", "kimi-linear-c8192", 1, 3, 3 * 3 * 1024 * 4, 128 * 128 * 8 * 4),
    ("kimi-linear", "kimi-linear-c8192-np3", 3, 3, 3 * 3 * 1024 * 4, 128 * 128 * 8 * 4),
    # lightning attention: no convolution, 128 x 128 per head of 8 (n_embd_head_la = key_length)
    ("minimax-01", "minimax-01-c8192", 1, 6, 0, 128 * 128 * 8 * 4),
)


@pytest.mark.parametrize(("name", "rid", "n_seq", "n_rec", "r", "s"), STATES, ids=lambda x: str(x))
def test_the_state_the_graph_reads_is_llama_cpps(
    name: str, rid: str, n_seq: int, n_rec: int, r: int, s: int, models: dict[str, Path]
) -> None:
    """The recurrent states the graph reads and writes (its cache leaves) are llama.cpp's recurrent memory,
    whose R and S sizes the log prints (kimi-linear's and minimax-01's state sizes are their own:
    ``n_embd_head_kda``, ``n_embd_head_la``)."""
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.models import builder

    model = ggufx.open(models[name])
    text = (CPU_LOGS / f"{rid}.log").read_text()
    m = re.search(r"R \(f32\):\s+([\d.]+) MiB, S \(f32\):\s+([\d.]+) MiB", text)
    assert m is not None
    a = parse_args("-m x " + ("-c 8192" if n_seq == 1 else f"-c 8192 -np {n_seq}"))
    sp = breakdown(model, [], a.offload, a.context).reservation
    assert sp is not None and sp.n_seq_max == n_seq
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ld.hp.arch)(c, g))
    caches = {t.name: t for t in g.leafs if t.name.startswith(("cache_r_l", "cache_s_l"))}
    assert len([n for n in caches if n.startswith("cache_s")]) == n_rec
    got_r = sum(t.nbytes for n, t in caches.items() if n.startswith("cache_r"))
    got_s = sum(t.nbytes for n, t in caches.items() if n.startswith("cache_s"))
    assert (got_r, got_s) == (n_rec * r * n_seq, n_rec * s * n_seq)
    assert (round(got_r / MiB, 2), round(got_s / MiB, 2)) == (float(m.group(1)), float(m.group(2)))


@pytest.mark.parametrize(("name", "drop", "kv", "reason"), REFUSED, ids=lambda x: str(x)[:40])
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    name: str, drop: str, kv: dict, reason: str, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(Refused(name, drop, reason, add_kv=tuple(kv.items())), smollm2_path, tmp_path)
