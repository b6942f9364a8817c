"""``clef`` (src/models/clef.cpp, graph/models/clef.py): a decision model on qwen35's backbone (Gated DeltaNet layers
and a gated attention layer) that llama.cpp runs without a memory module (llama-model.cpp create_memory:
``res = nullptr`` for CLEF), so no KV cache and no recurrent state, whatever its layers would keep in a decoder's
memory; its decision head scores the options of a batch. Its runs on the CPU build (tests/fixtures/llamacpp-logs-cpu,
--no-repack) print neither cache; ggufx allocates neither (buffers.NO_MEMORY). The graph (the backbone over the
micro-batch alone, the head for the reserve's one question and one option): the compute buffer to the 0.0001 MiB of
``~llama_context``'s line, node for node, the layer shortcut against the whole replay."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.archs import arch_of, builder_of
from ggufx.analysis.memory.buffers import NO_MEMORY

from .graph_arch_logs import (
    CPU_LOGS,
    NODES,
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_shortcut_is_whole,
    cpu_model,
    cpu_runs,
    cpu_spec,
    replay_cpu,
)
from .graph_grow import assert_grown_shortcut_is_whole

RUNS = cpu_runs("clef")


@pytest.fixture(scope="module")
def clef(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model("clef", tmp_path_factory.mktemp("clef"), smollm2_path)


def test_clef_is_registered_without_memory() -> None:
    assert arch_of("clef") is not None and "clef" in NO_MEMORY and builder_of("clef") == "clef"
    assert len(RUNS) >= 3 and (NODES / "clef-c8192-norepack.tsv").exists()


def test_its_layers_would_keep_a_cache_and_a_state_in_a_decoder(clef: Path) -> None:
    """The backbone's layers: three Gated DeltaNet layers and an attention layer, as qwen35's (what memory
    llama.cpp would make for them were it a decoder)."""
    kinds = layer_kinds(ggufx.open(clef))
    assert [(k.kv, k.state) for k in kinds] == [(False, True)] * 3 + [(True, False)]


@pytest.mark.parametrize("rid", RUNS)
def test_no_cache_and_the_compute_buffer_equals_llama_cpp(rid: str, clef: Path) -> None:
    text, bd = replay_cpu(rid, clef)
    assert "llama_kv_cache" not in text and "llama_memory_recurrent" not in text
    assert not [b for b in bd.buffers if b.kind in ("kv", "recurrent")]
    assert (bd.kv_bytes, bd.kv_layers, bd.recurrent_bytes, bd.recurrent_layers) == (0, 0, 0, 0)
    assert_compute_equal(text, bd)


def test_without_a_cache_the_compute_buffer_does_not_follow_the_context() -> None:
    """llama.cpp's compute buffer is the same at 8,192 and 16,384 tokens of context: nothing is cached."""
    logs = [(CPU_LOGS / f"{rid}.log").read_text() for rid in ("clef-c8192-norepack", "clef-c16384-q8_0-norepack")]
    assert all("CPU compute buffer size is  24.0919 MiB" in t for t in logs)


def test_the_graph_is_llama_cpps_node_for_node(clef: Path) -> None:
    """The convolution states' FILLs first (the graph is expanded from the scores, depth first), the attention
    over the micro-batch (K and V cast to F16), the head's span means, routing and joint blocks, the scorer;
    ``ggml_gelu_erf`` and ``ggml_abs`` print as GELU_ERF and ABS: UNARY nodes."""
    assert_nodes_equal("clef-c8192-norepack", clef)


def test_the_layer_shortcut_equals_the_whole_replay(clef: Path) -> None:
    assert_shortcut_is_whole(clef, "-c 8192", "-c 4096 -fa off -np 3")


def test_the_layer_shortcut_equals_the_whole_replay_on_24_layers(smollm2_path: Path, tmp_path: Path) -> None:
    """Grown to 24 layers (layer il as the small model's il % 4: three Gated DeltaNet layers and the attention
    layer repeated, the head unchanged)."""
    spec = json.loads(json.dumps(cpu_spec("clef")))
    spec["kv"]["block_count"] = 24
    tensors = []
    for t in json.loads((CPU_LOGS / "tensors.json").read_text())["clef"]:
        m = re.fullmatch(r"blk\.(\d+)\.(.*)", t[0])
        if m is None:
            tensors.append(t)
        else:
            tensors += [[f"blk.{il}.{m.group(2)}", *t[1:]] for il in range(24) if il % 4 == int(m.group(1))]
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    path = tmp_path / "clef-24.gguf"
    header(path, spec, tensors, smollm2_path)
    assert_grown_shortcut_is_whole(path)


def test_a_file_without_its_head_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    assert_refused(
        Refused(
            "clef", "decision.scorer.weight", "the graph needs tensor decision.scorer.weight, which the file lacks"
        ),
        smollm2_path,
        tmp_path,
    )


def test_mem_says_there_is_no_kv_cache(cli, clef: Path) -> None:  # type: ignore[no-untyped-def]
    """The text names no cache type for a model llama.cpp gives no cache (a decoder's line names both)."""
    out = cli("mem", str(clef), "-c", "8192", "--gpus", "none").output
    assert "layers offloaded, no KV cache" in out and "KV cache K" not in out
