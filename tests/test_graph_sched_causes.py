"""The causes of the recorded runs that ggufx's graph once got wrong, each checked where it acts (the node
the scheduler assigns, the size of the tensor it copies) and on the run llama.cpp recorded.

- ``-nkvo`` without flash attention: ``build_attn_mha`` sets the attention's output to the CPU backend
  (llama-graph.cpp:2821-2824), so the scores over the host cache are computed on the host
  (g-smol-ot0-9-nkvo-c8192, where ``-fa auto``'s probe turns flash attention off).
- A fused QKV projection's views (``ggml_view_3d`` with ``nb1`` = a head, ``nb2`` = the projection's
  row, phi3.cpp): a host cache's V write copies the view to the host, as large as its span, the
  micro-batch's rows (phi35-ngl16-c32768: 62 MiB on CUDA_Host, not 620).
"""

from __future__ import annotations

from pathlib import Path

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _T, _Graph
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.graph.sched import _Sched
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import host_buft

from .llamacpp_logs import LOGS, RUNS, devices_of


def _scheduled(rid: str, models: dict[str, Path]) -> tuple[_Graph, _Sched, dict[str, float], dict[str, int]]:
    """The prompt-processing graph of a recorded run, every node assigned by the scheduler; the
    compute buffers llama.cpp printed and ggufx's."""
    run = RUNS[rid]
    log = parse_log((LOGS / f"{rid}.log").read_text())
    args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
    model = ggufx.open(models[str(args.model)])
    devices = devices_of(run, log.devices)
    bd = breakdown(model, devices, args.offload, args.context)
    sp = bd.reservation
    assert sp is not None
    ld = graphsim._loaded(model, devices, args.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder(ld.hp.arch)(c, g))
    gpus = [d.name for d in ld.pl.devices]
    sched = _Sched(gpus, host_buft(gpus[0]), 1)
    sched.assign(g)
    return g, sched, log.buffers["compute"], graphsim.simulate(model, devices, args.offload, sp)


def _by_name(g: _Graph, sched: _Sched, prefix: str) -> dict[str, str]:
    return {n.name: sched.names[n.backend] for n in g.nodes if n.name.startswith(prefix)}


def test_nkvo_without_flash_attention_runs_the_scores_on_the_host(hole_models: dict[str, Path]) -> None:
    text = (LOGS / "g-smol-ot0-9-nkvo-c8192.log").read_text()
    assert "Flash Attention not supported, set to disabled" in text  # -fa auto's probe turned it off
    g, sched, theirs, ours = _scheduled("g-smol-ot0-9-nkvo-c8192", hole_models)
    n_layer = 30
    for prefix in ("kq-", "kq_soft_max-", "kqv-", "kqv_out-"):
        assert _by_name(g, sched, prefix) == {f"{prefix}{il}": "CPU" for il in range(n_layer)}, prefix
    # the output projection of layers 10-29 (weights on CUDA0) stays on the GPU
    assert set(_by_name(g, sched, "attn_out-").values()) == {"CUDA0"}
    assert {k: round(v / MiB, 4) for k, v in ours.items()} == theirs == {"CUDA0": 100.5039, "CUDA_Host": 166.3945}


def test_nkvo_with_flash_attention_is_left_to_the_scheduler(hole_models: dict[str, Path]) -> None:
    """With flash attention (-fa on) nothing is pinned: the GPU's expansion takes each layer's
    flash-attention node to CUDA0, the host cache copied to it."""
    g, sched, theirs, ours = _scheduled("g-smol-ot0-9-nkvo-faon-c8192", hole_models)
    assert set(_by_name(g, sched, "node_fa-").values()) == {"CUDA0"}
    assert {k: round(v / MiB, 4) for k, v in ours.items()} == theirs == {"CUDA0": 102.7539, "CUDA_Host": 12.5195}


def test_a_fused_qkv_view_spans_the_micro_batch(hole_models: dict[str, Path]) -> None:
    g, sched, theirs, ours = _scheduled("phi35-ngl16-c32768", hole_models)
    T, row = 512, 3 * 3072 * 4  # phi-3.5 mini: 32 heads of 96, a QKV row of 3 x 3072 floats
    set_v = [n for n in g.nodes if n.op == "SET_ROWS" and n.name == "cache_v_l0"]
    assert len(set_v) == 1
    v: _T = set_v[0].src[0]  # the V rows written: a view of the projection wqkv-0
    assert v.view_src is not None and v.view_src.name == "wqkv-0"
    assert (v.ne[:2], v.nb[:2]) == ((3072, T), (4, row))
    assert v.nbytes == (T - 1) * row + 3072 * 4  # ~18 MiB, not 576 MiB (a head's stride taken for nb0)
    # layer 0's cache is on the host, its projection on CUDA0 (op offload): the write copies V to the host
    assert sched.names[set_v[0].backend] == "CPU" and sched.names[v.view_src.backend] == "CUDA0"
    assert {k: round(v / MiB, 4) for k, v in ours.items()} == theirs == {"CUDA0": 632.0039, "CUDA_Host": 61.9961}
