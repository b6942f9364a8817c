"""The ``qwen35moe`` graph builder (graph/models/qwen35moe.py, llama.cpp's src/models/qwen35moe.cpp): the
``qwen35`` hybrid (Gated DeltaNet layers, a gated M-RoPE attention layer every fourth) with a mixture of
experts and a sigmoid-gated shared expert in every layer. Its compute buffer against llama.cpp's CPU
build (flash attention on and off, -np 3 with its 513-token micro-batch, q8_0 caches, -ub 1024,
--no-repack), and its graph against the one llama.cpp's scheduler printed, node for node."""

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

ARCH = "qwen35moe"
CPU_RUNS = cpu_runs(ARCH)
MTP_RUNS = cpu_runs(f"{ARCH}-mtp")
PUBLISHED_RUNS = cpu_runs(f"{ARCH}-35b-a3b")


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


@pytest.fixture(scope="module")
def published_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(f"{ARCH}-35b-a3b", tmp_path_factory.mktemp(ARCH), smollm2_path)


def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_and_a_quantized_cache() -> None:
    assert_runs_cover(ARCH, ("-fa off", "-np 3", "-ctk q8_0"), at_least=3)


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", MTP_RUNS)
def test_the_mtp_block_is_loaded_but_not_run(rid: str, smollm2_path: Path, tmp_path: Path) -> None:
    """A file with its MTP block (nextn_predict_layers = 1, as published): llama.cpp skips the block
    without speculative decoding; the compute buffer is the one without it, llama.cpp's."""
    assert len(MTP_RUNS) >= 2
    text, bd = replay_cpu(rid, cpu_model(f"{ARCH}-mtp", tmp_path, smollm2_path))
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", PUBLISHED_RUNS)
def test_qwen35_35b_a3b_dimensions_equal_llama_cpp(rid: str, published_path: Path) -> None:
    """Qwen3.5-35B-A3B's published dimensions (40 layers, 256 experts, a 248,320-token vocabulary; the
    replay leaves repeated blocks of 4 layers out): llama.cpp's CPU buffer to the 0.0001 MiB."""
    assert len(PUBLISHED_RUNS) >= 3
    text, bd = replay_cpu(rid, published_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2), op and size of every node, in order."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(model_path: Path) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    assert_shortcut_is_whole(model_path, "-c 8192", "-c 4096 -fa off -np 3")


def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    assert_refused(
        Refused(ARCH, "blk.1.ssm_beta.weight", "the graph needs tensor blk.1.ssm_beta.weight, which the file lacks"),
        smollm2_path,
        tmp_path,
    )
