"""The ``granitehybrid`` graph builder (graph/models/granitehybrid.py, llama.cpp's
src/models/granite-hybrid.cpp): Mamba-2 layers whose selective scan reads the states straight from the
cache, attention layers, Granite's embedding, residual and logit scales. Its compute buffer against
llama.cpp's CPU build (flash attention on and off, -np 3 with its 513-token micro-batch, a q8_0 cache)
(granite-4.0-h-tiny's recorded runs: tests/test_graph_logs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .graph_arch_logs import (
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_model,
    cpu_runs,
    replay_cpu,
)

ARCH = "granitehybrid"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache() -> None:
    assert_runs_cover(ARCH, ("-fa off", "-np 3", "-ctk q8_0"), at_least=3)


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(model_path: Path) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(model_path, "-c 8192", "-c 4096 -fa off -np 3")


def test_a_file_without_the_convolution_bias_the_graph_adds_gets_the_generic_estimate(
    smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(
        Refused(ARCH, "blk.1.ssm_conv1d.bias", "the graph needs tensor blk.1.ssm_conv1d.bias, which the file lacks"),
        smollm2_path,
        tmp_path,
    )
