"""Phi-3.5's LongRoPE factors (``rope_factors_long``/``rope_factors_short``) are per-layer tensors, placed
as llama.cpp places them.

phi3.cpp:52-53 creates both in every layer (layer 0 its own, the others ``TENSOR_DUPLICATED``, which
reuses the copy already in that buffer type's context), and llama-arch.cpp:779-780 puts them in
``LLM_TENSOR_LAYER_REPEATING``: they go to the device of the layers that use them, one copy per buffer
type, exactly like Llama 3's ``rope_freqs`` (llama-arch.cpp:778). ggufx once kept them in the input layer
on the host: with every layer on the GPU its ``CPU_Mapped`` span then reached from ``token_embd`` over
``output.weight`` to them (129.91 MiB where llama.cpp maps 52.84), and each layer's RoPE read them across
devices (the CUDA0 compute buffer 2 MiB off). The oracle is the recorded CUDA run
``phi35-ngl99-c131072``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB
from ggufx.analysis.memory.placement import CPU_MAPPED, Device, OffloadParams, layer_of, place

from .llamacpp_logs import replay_run

_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")


def test_the_factors_are_per_layer_tensors() -> None:
    for name in (*_FACTORS, "rope_freqs.weight"):
        assert layer_of(name, 32, "phi3") == "repeating"
    assert layer_of("token_embd.weight", 32, "phi3") == "input"


def test_all_layers_on_the_gpu_map_only_the_embeddings(hole_models: dict[str, Path]) -> None:
    """The recorded run: -ngl 99 -c 131072 on one H100. Every buffer as llama.cpp printed it, the compute
    buffers to the four decimals of ``~llama_context``."""
    _, log, bd = replay_run("phi35-ngl99-c131072", hole_models)
    for kind in ("model", "compute"):
        ours = {b.buft: b.bytes for b in bd.buffers if b.kind == kind}
        digits = 4 if kind == "compute" else 2
        assert {k: round(v / MiB, digits) for k, v in ours.items()} == log.buffers[kind], kind
    model = ggufx.open(hole_models["phi35-mini"])
    embd = next(t for t in model.tensors if t.name == "token_embd.weight")
    host = next(b for b in bd.buffers if b.kind == "model" and b.buft == CPU_MAPPED)
    assert host.bytes == embd.nbytes  # the span of token_embd alone


@pytest.mark.parametrize("ngl", [0, 1, 16, 32, 33, 99])
@pytest.mark.parametrize("gpus", [1, 2])
def test_the_factors_go_where_llamas_rope_freqs_go(ngl: int, gpus: int, hole_models: dict[str, Path]) -> None:
    """Both models have 32 layers: for any -ngl and GPU count, each LongRoPE factor is loaded in exactly
    the buffer types where Llama 3.1 8B's rope_freqs is, whose placement the recorded l8b-ngl{0,1,16,32,33}
    and 2g-l8b-ngl20 runs prove (tests/test_memory_logs.py)."""
    devices = [Device(f"CUDA{i}", 80 * 1024 * MiB) for i in range(gpus)]
    p = OffloadParams(n_gpu_layers=ngl)
    phi = place(ggufx.open(hole_models["phi35-mini"]), devices, p)
    llama = place(ggufx.open(hole_models["llama31-8b"]), devices, p)
    freqs = [buft for t, buft in llama.tensors if t.name == "rope_freqs.weight"]
    assert freqs and len(freqs) == len(set(freqs))
    for name in _FACTORS:
        assert [buft for t, buft in phi.tensors if t.name == name] == freqs, name
