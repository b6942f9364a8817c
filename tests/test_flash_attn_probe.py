"""``-fa auto``'s probe (llama.cpp's ``resolve_fused_ops``: a one-token graph, flash attention kept only if
every layer's flash-attention node is scheduled on that layer's device), built from the allocator plan's
layers, answers as the probe of every layer does: on every recorded run of an architecture with a graph
builder, and over every ``-ngl`` and some ``-ot`` of models whose layers differ in kind."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import ContextParams, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device, OffloadParams

from .llamacpp_logs import LOGS, RUNS, devices_of
from .test_graph_logs import RUNS_BUILT

GiB = 1 << 30


@pytest.fixture
def both_probes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, object]]:
    """Every probe breakdown() asks for, answered by both the shortened and the whole graph."""
    asked: list[tuple[object, object]] = []
    probe = graphsim._flash_attn_mismatch

    def twice(model, devices, offload, sp, placement, whole):  # type: ignore[no-untyped-def]
        short, full = (
            probe(model, devices, offload, sp, placement, False),
            probe(model, devices, offload, sp, placement, True),
        )
        asked.append((short, full))
        return full

    monkeypatch.setattr(graphsim, "_flash_attn_mismatch", twice)
    return asked


def test_on_every_recorded_run(hole_models: dict[str, Path], both_probes: list[tuple[object, object]]) -> None:
    runs = [rid for rid in RUNS_BUILT if RUNS[rid]["gpus"] != "cpu"]
    assert len(runs) >= 150
    for rid in runs:
        run = RUNS[rid]
        text = (LOGS / f"{rid}.log").read_text()
        args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
        breakdown(
            ggufx.open(hole_models[str(args.model)]),
            devices_of(run, parse_log(text).devices),
            args.offload,
            args.context,
        )
    assert len(both_probes) >= 100
    assert [s for s, f in both_probes if s != f] == []
    assert any(f is not None for _, f in both_probes)  # lfm2-ngl8-c32768: a host layer's attention on CUDA0


@pytest.mark.parametrize("name", ["lfm2-1.2b", "granite4-h-tiny", "gpt-oss-20b", "qwen36-27b", "gemma2-2b"])
def test_over_every_layer_split(
    name: str, hole_models: dict[str, Path], both_probes: list[tuple[object, object]]
) -> None:
    model = ggufx.open(hole_models[name])
    n_layer = model.metadata[f"{model.architecture}.block_count"]
    gpu = [Device("CUDA0", 80 * GiB)]
    # every split of the smaller models; every third of the 40- and 64-layer hybrids (and the last two)
    step = 1 if n_layer < 32 else 3
    offloads = [OffloadParams(n_gpu_layers=n) for n in sorted({*range(0, n_layer + 2, step), n_layer, n_layer + 1})]
    offloads += [
        OffloadParams(overrides=((r"blk\.[0-9]\.attn_.*", "CPU"),)),
        OffloadParams(overrides=((r"blk\.(1|5|6)\.", "CPU"),)),
        OffloadParams(n_gpu_layers=n_layer // 2, overrides=((r"blk\..*_exps", "CPU"),)),
    ]
    for offload in offloads:
        for nkvo in (False, True):
            breakdown(model, gpu, offload, ContextParams(n_ctx=4096, no_kv_offload=nkvo))
    assert len(both_probes) == 2 * len(offloads)
    assert [(i, s, f) for i, (s, f) in enumerate(both_probes) if s != f] == []
    if name == "lfm2-1.2b":  # host attention layers after GPU ones: flash attention off, as in lfm2-ngl8-c32768
        assert sum(f is not None for _, f in both_probes) >= 4


def test_a_quantized_v_cache_turns_flash_attention_on_before_any_probe(hole_models: dict[str, Path]) -> None:
    """llama_init_from_model (llama-context.cpp:3843-3847) sets flash attention on for a quantized V
    cache under -fa auto, so the probe that turns it off for LFM2 at -ngl 8 never runs: the buffers are
    -fa on's, with no note; with only K quantized the probe still decides. (--fit's search for the
    largest q8_0 context used to stop here with "a quantized V cache needs flash attention".)"""
    model = ggufx.open(hole_models["lfm2-1.2b"])
    gpu, offload = [Device("CUDA0", 80 * GiB)], OffloadParams(n_gpu_layers=8)
    q8 = ContextParams(n_ctx=32768, cache_type_k="q8_0", cache_type_v="q8_0")
    auto = breakdown(model, gpu, offload, q8)
    on = breakdown(model, gpu, offload, replace(q8, flash_attn="on"))
    assert auto.buffers == on.buffers and not [n for n in auto.notes if "-fa auto" in n]
    k_only = breakdown(model, gpu, offload, replace(q8, cache_type_v="f16"))
    k_on = breakdown(model, gpu, offload, replace(q8, cache_type_v="f16", flash_attn="on"))
    assert [n for n in k_only.notes if "-fa auto" in n] and k_only.buffers != k_on.buffers
