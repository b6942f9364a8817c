"""``clef`` (src/models/clef.cpp): a decision model on qwen35's backbone (Gated DeltaNet layers and a gated attention
layer) that llama.cpp runs without a memory module (llama-model.cpp create_memory: ``res = nullptr`` for CLEF), so
no KV cache and no recurrent state, whatever its layers would keep in a decoder's memory. Its runs on the CPU build
(tests/fixtures/llamacpp-logs-cpu, --no-repack) print neither; ggufx allocates neither (buffers.NO_MEMORY), and its
compute buffer is the generic estimate, labelled (no graph builder)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import arch_of, builder_of
from ggufx.analysis.memory.buffers import NO_MEMORY

from .graph_arch_logs import CPU_LOGS, cpu_model, cpu_runs, replay_cpu

RUNS = cpu_runs("clef")


@pytest.fixture(scope="module")
def clef(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model("clef", tmp_path_factory.mktemp("clef"), smollm2_path)


def test_clef_is_registered_without_memory_or_builder() -> None:
    assert arch_of("clef") is not None and "clef" in NO_MEMORY and builder_of("clef") is None
    assert len(RUNS) >= 3


def test_its_layers_would_keep_a_cache_and_a_state_in_a_decoder(clef: Path) -> None:
    """The backbone's layers: three Gated DeltaNet layers and an attention layer, as qwen35's (what memory
    llama.cpp would make for them were it a decoder)."""
    kinds = layer_kinds(ggufx.open(clef))
    assert [(k.kv, k.state) for k in kinds] == [(False, True)] * 3 + [(True, False)]


@pytest.mark.parametrize("rid", RUNS)
def test_no_kv_cache_and_no_recurrent_state(rid: str, clef: Path) -> None:
    text, bd = replay_cpu(rid, clef)
    assert "llama_kv_cache" not in text and "llama_memory_recurrent" not in text
    assert not [b for b in bd.buffers if b.kind in ("kv", "recurrent")]
    assert (bd.kv_bytes, bd.kv_layers, bd.recurrent_bytes, bd.recurrent_layers) == (0, 0, 0, 0)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert compute.bytes > 0 and "no graph builder for clef" in compute.reason


def test_without_a_cache_the_compute_buffer_does_not_follow_the_context() -> None:
    """llama.cpp's compute buffer is the same at 8,192 and 16,384 tokens of context: nothing is cached."""
    logs = [(CPU_LOGS / f"{rid}.log").read_text() for rid in ("clef-c8192-norepack", "clef-c16384-q8_0-norepack")]
    assert all("CPU compute buffer size is  24.0919 MiB" in t for t in logs)
