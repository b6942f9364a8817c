"""The deepseek2 graph builder (graph/models/deepseek2.py) against llama.cpp.

Its CPU build's compute buffer on the small DeepSeek V3-like (MLA with q_lora, a NextN block, a dense
layer 0, sigmoid routing scaled by 2.5) and V2-Lite-like (no q_lora) models of
tests/fixtures/llamacpp-logs-cpu, over flash attention on and off, ``-np 3`` (n_tokens rounded up to a
multiple of the sequences), q8_0/q4_0 K caches, ``--n-cpu-moe 2`` and ``--no-repack``: equal to the
0.0001 MiB the ``~llama_context`` line prints. Recorded runs of published shapes (tests/fixtures/llamacpp-logs)
are replayed for every builder by tests/test_graph_logs.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .graph_arch_logs import (
    assert_cpu_compute_is_llama_cpps,
    assert_falls_back_without,
    assert_gpu_graph_builds,
    assert_shortened_replay_is_whole,
    cpu_models,
    cpu_runs_of,
    deep_model,
)

ARCH = "deepseek2"
CPU_RUNS = cpu_runs_of(ARCH)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(tuple(sorted({m for m, _ in CPU_RUNS.values()})), smollm2_path, tmp_path_factory, ARCH)


def test_the_cpu_runs_cover_the_shapes() -> None:
    args = " ".join(a for _, a in CPU_RUNS.values())
    assert {"deepseek2-mla", "deepseek2-noqlora"} <= {m for m, _ in CPU_RUNS.values()}
    for option in ("-fa off", "-np 3", "-ctk q8_0", "-ctk q4_0", "--n-cpu-moe 2", "--no-repack"):
        assert option in args, option


@pytest.mark.parametrize("rid", sorted(CPU_RUNS))
def test_cpu_compute_buffer_is_llama_cpps(rid: str, models: dict[str, Path]) -> None:
    model, args = CPU_RUNS[rid]
    assert_cpu_compute_is_llama_cpps(rid, models[model], args)


@pytest.mark.parametrize(
    ("argv", "gpus"),
    [("-c 8192", 0), ("-c 4096 -fa off -np 3", 0), ("-c 8192 -ngl 7", 1), ("-c 8192 --n-cpu-moe 5", 1)],
)
def test_the_shortened_replay_is_the_whole_one(argv: str, gpus: int, smollm2_path: Path, tmp_path: Path) -> None:
    """The V3-like model with 14 trunk layers (layer 0 dense, the rest MoE like its layer 1) and its NextN
    block after them: long runs of identical layers for the shortened replay."""
    assert_shortened_replay_is_whole(deep_model("deepseek2-mla", smollm2_path, tmp_path / "deep.gguf", 14), argv, gpus)


def test_the_gpu_graph_builds(models: dict[str, Path]) -> None:
    """On a GPU, with the experts of layer 1 on the host (--n-cpu-moe 2 over a dense layer 0): a figure
    per backend from the builder."""
    assert_gpu_graph_builds(models["deepseek2-mla"])


def test_files_the_graph_cannot_read_fall_back_to_the_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """A deepseek2 file without the absorbed MLA tensors is refused with the tensor named, and gets the
    generic estimate, labelled."""
    assert_falls_back_without("deepseek2-noqlora", "blk.2.attn_k_b.weight", smollm2_path, tmp_path / "no-kb.gguf")
