"""``-fa auto`` that llama.cpp turns off keeps the KV cache it made for flash attention.

``llama_context`` makes its memory with ``cparams.flash_attn`` true for ``-fa auto``
(llama-context.cpp:232, :399: ``attn_v_trans = !cparams.flash_attn``, llama-model.cpp:2485), so the V
cache is not transposed; ``resolve_fused_ops`` (:509-561) then turns flash attention off and every graph
is reserved without it over that cache: the V rows are written as with flash attention (``cpy_v``'s
``!v_trans`` branch, ``attn_inp_v_idxs`` of one index per token) and ``build_attn_mha`` copies V
transposed before the product (``ggml_cont(ggml_transpose(v))``, "v_cont", llama-graph.cpp:2801-2805).
``SimParams.v_trans`` carries that layout to the graph builders. The proof: LFM2-1.2B at ``-ngl 8``
(its host attention layer 8 scheduled on CUDA0 by the probe), whose recorded CUDA buffers the graph
equals to the byte (llama.cpp prints four decimals) with the untransposed cache only."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import ggufx
from ggufx.analysis.memory.buffers import MiB
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.graph.llm import SimParams
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import parse_args

from .llamacpp_logs import LOGS, RUNS, devices_of, replay_run

RID = "lfm2-ngl8-c32768"


def test_the_v_layout_follows_flash_attention_unless_given() -> None:
    sp = SimParams(512, 512, 1, 4096, 1, flash_attn=False)
    assert sp.v_transposed
    assert not replace(sp, flash_attn=True).v_transposed
    assert not replace(sp, v_trans=False).v_transposed


def test_fa_auto_turned_off_is_sized_over_the_cache_made_for_flash_attention(hole_models: dict[str, Path]) -> None:
    text = (LOGS / f"{RID}.log").read_text()
    assert "Flash Attention not supported, set to disabled" in text  # what llama.cpp did
    run, log, bd = replay_run(RID, hole_models)
    assert any("-fa auto: llama.cpp turns flash attention off" in n for n in bd.notes)
    sp = bd.reservation
    assert sp is not None and not sp.flash_attn
    args = parse_args(RUNS[RID]["args"].replace("@", ""))
    model = ggufx.open(hole_models[str(args.model)])
    devices = devices_of(run, log.devices)
    theirs = log.buffers["compute"]
    assert set(theirs) == {"CUDA0", "CUDA_Host"}

    kept = graphsim.simulate(model, devices, args.offload, replace(sp, v_trans=False))
    assert {b: round(kept[b] / MiB, 4) for b in theirs} == theirs

    # a transposed cache (what -fa off makes) lacks, on each device, the transposed copy of the V of one
    # layer (32768 cells x 64 x 8 heads, f16), and on the host it writes V element by element: 512 x 512
    # indices where the untransposed cache has 512
    transposed = graphsim.simulate(model, devices, args.offload, replace(sp, v_trans=True))
    v_cont = 32768 * 64 * 8 * 2
    assert kept["CUDA0"] - transposed["CUDA0"] == v_cont
    assert kept["CUDA_Host"] - transposed["CUDA_Host"] == v_cont - 8 * (512 * 512 - 512)


def test_an_untransposed_cache_without_flash_attention_copies_v_transposed_before_the_scores(
    hole_models: dict[str, Path],
) -> None:
    """One ``v_cont`` per attention layer, of the cache's type, [n_kv, head_v, n_head_kv], the first
    source of the V product, so that it joins the graph before ``kq`` (``ggml_visit_parents``); the
    cache written row by row, one index per token."""
    run, log, bd = replay_run(RID, hole_models)
    assert bd.reservation is not None
    sp = replace(bd.reservation, v_trans=False)
    args = parse_args(RUNS[RID]["args"].replace("@", ""))
    model = ggufx.open(hole_models[str(args.model)])
    ld = graphsim._loaded(model, devices_of(run, log.devices), args.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ld.hp.arch)(c, g))
    attention = [il for il in range(ld.hp.n_layer) if ld.hp.n_head_kv[il] > 0]
    assert attention == [2, 5, 8, 10, 12, 14]
    at = {(n.name, n.op): i for i, n in enumerate(g.nodes)}
    for il in attention:
        v_cont = g.nodes[at[(f"v_cont-{il}", "CONT")]]
        assert (v_cont.type, v_cont.ne) == ("F16", (32768, 64, 8, 1))
        assert g.nodes[at[(f"kqv-{il}", "MUL_MAT")]].src[0] is v_cont
        assert at[(f"v_cont-{il}", "CONT")] < at[(f"kq-{il}", "MUL_MAT")] < at[(f"kqv-{il}", "MUL_MAT")]
    (v_idxs,) = [t for t in g.leafs if t.name == "attn_inp_v_idxs"]
    assert v_idxs.ne == (512, 1, 1, 1)
    (cache_v,) = {t for t in g.leafs if t.name == "cache_v_l8"}
    assert cache_v.ne[:2] == (64 * 8, 32768)
