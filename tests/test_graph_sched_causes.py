"""The causes of the recorded runs that ggufx's graph once got wrong, each checked where it acts (the node
the scheduler assigns, the size of the tensor it copies) and on the run llama.cpp recorded.

- ``-nkvo`` without flash attention: ``build_attn_mha`` sets the attention's output to the CPU backend
  (llama-graph.cpp:2821-2824), so the scores over the host cache are computed on the host
  (g-smol-ot0-9-nkvo-c8192, where ``-fa auto``'s probe turns flash attention off).
- A fused QKV projection's views (``ggml_view_3d`` with ``nb1`` = a head, ``nb2`` = the projection's
  row, phi3.cpp): a host cache's V write copies the view to the host, as large as its span, the
  micro-batch's rows (phi35-ngl16-c32768: 62 MiB on CUDA_Host, not 620).
- MLA's flash attention over a quantized latent cache: V is a view of K's data, so CUDA converts the
  cache to f16 once and V reads K's conversion (fattn-common.cuh:63-81, ``V_is_K_view``): the four
  131K+ q8_0 DeepSeek/GLM-5 runs, 128 MiB (n_kv x 512 x 2 bytes) below a second conversion.
- Every view of every recorded model's graph steps one element at a time, as ``ggml_view_*`` makes it.
- A quantized cache's V rotation (``llama_mul_mat_hadamard`` of the attention's output) is not expanded with
  the attention (``build_attn_mha`` expands the output before it, llama-graph.cpp:2827): in Cohere 2's
  parallel block it joins the graph with the output projection, after the FFN, so the allocator lays the
  last layer out differently (coh2-ngl99-c32768-q8_0: CUDA0 568.68 MiB, not 576.68).
"""

from __future__ import annotations

from pathlib import Path

import ggufx
from ggufx.analysis.memory.buffers import FLASH_ATTN_ABORTS, MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.galloc import _alloc_size
from ggufx.analysis.memory.graph.ggml import _T, _Graph, _type
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.graph.sched import _Sched
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device

from .graph_arch_logs import scheduled
from .llamacpp_logs import LOGS, RUNS, devices_of


def _by_name(g: _Graph, sched: _Sched, prefix: str) -> dict[str, str]:
    return {n.name: sched.names[n.backend] for n in g.nodes if n.name.startswith(prefix)}


def test_nkvo_without_flash_attention_runs_the_scores_on_the_host(hole_models: dict[str, Path]) -> None:
    text = (LOGS / "g-smol-ot0-9-nkvo-c8192.log").read_text()
    assert "Flash Attention not supported, set to disabled" in text  # -fa auto's probe turned it off
    g, sched, _, theirs, ours = scheduled("g-smol-ot0-9-nkvo-c8192", hole_models)
    n_layer = 30
    for prefix in ("kq-", "kq_soft_max-", "kqv-", "kqv_out-"):
        assert _by_name(g, sched, prefix) == {f"{prefix}{il}": "CPU" for il in range(n_layer)}, prefix
    # the output projection of layers 10-29 (weights on CUDA0) stays on the GPU
    assert set(_by_name(g, sched, "attn_out-").values()) == {"CUDA0"}
    assert {k: round(v / MiB, 4) for k, v in ours.items()} == theirs == {"CUDA0": 100.5039, "CUDA_Host": 166.3945}


def test_nkvo_with_flash_attention_is_left_to_the_scheduler(hole_models: dict[str, Path]) -> None:
    """With flash attention (-fa on) nothing is pinned: the GPU's expansion takes each layer's
    flash-attention node to CUDA0, the host cache copied to it."""
    g, sched, _, theirs, ours = scheduled("g-smol-ot0-9-nkvo-faon-c8192", hole_models)
    assert set(_by_name(g, sched, "node_fa-").values()) == {"CUDA0"}
    assert {k: round(v / MiB, 4) for k, v in ours.items()} == theirs == {"CUDA0": 102.7539, "CUDA_Host": 12.5195}


def test_a_fused_qkv_view_spans_the_micro_batch(hole_models: dict[str, Path]) -> None:
    g, sched, _, theirs, ours = scheduled("phi35-ngl16-c32768", hole_models)
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


def _fa(g: _Graph, width: int, rank: int, n_kv: int, T: int, nh: int, mla: bool) -> _T:
    """A flash-attention node over a q8_0 cache: MLA's (V the first ``rank`` values of K's rows) or
    one over separate K and V caches."""
    cache_k = g.leaf("cache_k_l0", "Q8_0", (width, n_kv), buft="CUDA0")
    cache_v = cache_k if mla else g.leaf("cache_v_l0", "Q8_0", (rank, n_kv), buft="CUDA0")
    k = g.view(cache_k, (width, 1, n_kv, 1), cache_k.nb)
    v = g.view(k if mla else cache_v, (rank, 1, n_kv, 1), (k if mla else cache_v).nb)
    q = g.new("q", "NONE", "F32", (width, T, nh, 1))
    mask = g.new("mask", "NONE", "F16", (n_kv, T, 1, 1))
    kp, vp = g.permute(k, 0, 2, 1, 3), g.permute(v, 0, 2, 1, 3)
    return g.new("node_fa-0", "FLASH_ATTN_EXT", "F32", (rank, nh, T, 1), q, kp, vp, mask)


def test_mla_v_shares_the_f16_conversion_of_k() -> None:
    n_kv, T, nh = 131072, 512, 64
    out = T * nh * 512 * 4
    mla = _fa(_Graph(), 576, 512, n_kv, T, nh, mla=True)
    assert _alloc_size("CUDA0", mla) == out + 2 * 576 * n_kv  # K's conversion only
    apart = _fa(_Graph(), 576, 512, n_kv, T, nh, mla=False)
    assert _alloc_size("CUDA0", apart) == out + 2 * 576 * n_kv + 2 * 512 * n_kv
    # one token: MLA's 576-wide heads have no vector kernel (fattn.cu:641), the MMA kernel converts K
    one = _fa(_Graph(), 576, 512, n_kv, 1, nh, mla=True)
    assert _alloc_size("CUDA0", one) == -(-(nh * 512 * 4) // 128) * 128 + 2 * 576 * n_kv
    assert _alloc_size("CUDA_Host", mla) == out  # the host converts nothing ahead


def test_mla_q8_0_runs_at_131072_cells(hole_models: dict[str, Path]) -> None:
    for rid in (
        "g-deepseek2-k2-ngl99-c131072-q8_0",
        "g-deepseek32-ngl99-c131072-q8_0",
        "g-deepseek32-v32-ngl99-c163840-q8_0",
        "g-glm-dsa-ngl99-c131072-q8_0",
    ):
        run = RUNS[rid]
        text = (LOGS / f"{rid}.log").read_text()
        log = parse_log(text)
        args = parse_args(run["args"].replace("@", ""))
        model = ggufx.open(hole_models[str(args.model)])
        bd = breakdown(model, devices_of(run, log.devices), args.offload, args.context)
        assert bd.compute_estimate is None
        ours = {k: round(v / MiB, 4) for k, v in bd.by_kind("compute").items()}
        assert ours == log.buffers["compute"], rid


def test_every_view_steps_one_element_at_a_time(hole_models: dict[str, Path]) -> None:
    """``ggml_view_1d``..``_4d`` give a view the element size as ``nb0`` and take ``nb1``..``nb3`` from
    their arguments (ggml.c ``ggml_view_impl``): only a permute or transpose steps otherwise. A view
    built with its strides shifted by one spans far more than its source, which the scheduler then
    copies whole where a split reads it (the fused QKV's V of phi35-ngl16; gpt-oss's top-k ids,
    ``ggml_argsort_top_k``; qwen3next's gate, ``b`` and ``a`` heads). Every recorded model's graph,
    with flash attention and without."""
    gpu = [Device("CUDA0", 80 * 1024 * MiB)]
    built, wrong = 0, []
    for name, path in sorted(hole_models.items()):
        model = ggufx.open(path)
        if graphsim.simulated(model) is not None:
            continue
        for fa in ("on", "off") if model.architecture not in FLASH_ATTN_ABORTS else ("off",):
            args = parse_args(f"-m x -ngl 99 -c 4096 -fa {fa}")
            bd = breakdown(model, gpu, args.offload, args.context)
            sp = bd.reservation
            assert sp is not None
            ld = graphsim._loaded(model, gpu, args.offload)
            c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
            c.layers = list(graphsim._plan(graphsim._layer_signatures(c, ld), 2).layers)
            g = _Graph()
            g.expand(builder(ld.hp.arch)(c, g))
            odd = [(n.name, n.ne, n.nb) for n in g.nodes if n.op == "VIEW" and n.nb[0] != _type(n.type).type_size]
            wrong += [(name, fa, *odd[0])] if odd else []
            built += 1
    assert not wrong
    assert built >= 2 * 50  # PLM without flash attention only: llama.cpp aborts with it (FLASH_ATTN_ABORTS)


def test_cuda_flash_attention_support_follows_ggml_cuda() -> None:
    """``ggml_cuda_flash_attn_ext_supported`` (fattn.cu:541-632): MiniCPM3's 96/64 heads and MiMo-V2's 192/128
    at a GQA ratio that is not a multiple of 8 have no kernel (the scheduler then runs the node on the CPU
    and ``-fa auto`` turns flash attention off: g-minicpm3-*, g-mimo2-* recorded so); equal heads, MLA's
    576/512 with GQA, and 192/128 at a GQA ratio of 8 have one."""
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.sched import cuda_flash_attn_supported

    def fa(dk: int, dv: int, heads: int, kv_heads: int, kv_type: str = "F16") -> bool:
        g = _Graph()
        q = g.new("q", "PERMUTE", "F32", (dk, 512, heads, 1))
        k = g.leaf("k", kv_type, (dk, 4096, kv_heads, 1))
        v = g.leaf("v", kv_type, (dv, 4096, kv_heads, 1))
        mask = g.input("mask", "F16", 4096, 512, 1, 1)
        return cuda_flash_attn_supported(
            g.new("node_fa-0", "FLASH_ATTN_EXT", "F32", (dv, heads, 512, 1), q, k, v, mask)
        )

    assert fa(128, 128, 32, 8) and fa(64, 64, 8, 8) and fa(256, 256, 8, 4, "Q8_0")
    assert not fa(96, 64, 8, 8)  # MiniCPM3
    assert not fa(192, 128, 8, 2) and fa(192, 128, 16, 2)  # GQA 4: none; GQA 8: the MMA kernel
    assert fa(576, 512, 16, 1) and not fa(576, 512, 1, 1)  # MLA needs the GQA path
    assert not fa(128, 128, 8, 8, "IQ4_NL") and not fa(48, 48, 8, 8)


def test_cuda_lightning_indexer_support_follows_ggml_cuda() -> None:
    """``ggml_cuda_lightning_indexer_supported`` (lightning-indexer.cu:724-778): keys of 128 values, 4, 32 or
    64 indexer heads, rows aligned to 16 bytes, and the key types of its kernels. DeepSeek-V3.2's and V4-Flash's
    64 x 128 indexer runs on the GPU; DeepSeek V4's small recorded models (8 x 128, 4 x 64) run it on the CPU."""
    from ggufx.analysis.memory.graph.ggml import _Graph
    from ggufx.analysis.memory.graph.sched import cuda_lightning_indexer_supported

    def lid(head: int, heads: int, k_type: str = "F16") -> bool:
        g = _Graph()
        q = g.new("q", "ROPE", "F32", (head, heads, 512, 1))
        k = g.leaf("k", k_type, (head, 1, 4096, 1))
        w = g.new("w", "SCALE", "F32", (heads, 512, 1, 1))
        mask = g.input("mask", "F16", 4096, 512, 1, 1)
        return cuda_lightning_indexer_supported(
            g.new("indexer_score-0", "LIGHTNING_INDEXER", "F32", (4096, 512, 1, 1), q, k, w, mask)
        )

    assert lid(128, 64) and lid(128, 32) and lid(128, 4) and lid(128, 64, "Q8_0") and lid(128, 64, "Q4_0")
    assert not lid(128, 8) and not lid(64, 4) and not lid(128, 16)
    assert not lid(128, 64, "Q4_K") and not lid(128, 64, "IQ4_NL")


def test_a_parallel_block_rotates_the_attention_output_after_its_ffn(hole_models: dict[str, Path]) -> None:
    rid = "coh2-ngl99-c32768-q8_0"
    g, _sched, _, theirs, ours = scheduled(rid, hole_models)
    order = [n.name for n in g.nodes]
    for il in (0, 3, 31):  # sliding-window layers, a full one, the last (its output rows taken first)
        fa = order.index(f"node_fa-{il}")
        ffn = order.index(f"ffn_out-{il}")
        wo = order.index(f"attn_out-{il}")
        # the rotation of the attention's output: the product of the reshaped output by the 64 x 64 matrix
        rot = next(
            i
            for i, n in enumerate(g.nodes)
            if n.op == "MUL_MAT" and any(s.name == "attn_inp_v_rot" for s in n.src) and i > fa
        )
        assert fa < ffn < rot < wo, (il, fa, ffn, rot, wo)
    assert {k: round(v / MiB, 4) for k, v in ours.items()} == theirs == {"CUDA0": 568.6797, "CUDA_Host": 68.6836}
