"""``dots3note`` (dots3-note; src/models/dots3note.cpp, graph/models/dots3note.py) against llama.cpp's CPU build:
absorbed MLA with q_lora in two geometries (the full layers' kv_lora_rank 512 under 8 heads, the sliding layers'
256 under 16), the full layers' lightning indexer and sparse mask over ``llama_kv_cache_dsa_iswa``'s DSA cache,
the sliding layers' dense attention over its window cache, the rope key's norm, the head-wise sigmoid gate of the
attention output, a dense first layer then sigmoid experts plus the shared expert, the NextN block left out.

Per run (flash attention on and off, -np 2 and 3, -ub 1024, q8_0 caches, --swa-full, 4K to 128K, --no-repack,
--n-cpu-moe 2; dots3-note's published dimensions at 8 of its 46 layers, 4K to its 524,288-token context): every
compute buffer to the 0.0001 MiB of ``~llama_context``'s line; the caches as llama.cpp prints them (the MLA cache
and the indexer-key cache of the full layers, the window cache of the others); the graph against the one llama.cpp's
scheduler printed, node for node; the layer shortcut against the whole replay; a file llama.cpp would refuse gets
the generic estimate, with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggufx.analysis.memory.buffers import MiB

from .graph_arch_logs import (
    NODES,
    Refused,
    assert_compute_equal,
    assert_nodes_equal,
    assert_refused,
    assert_runs_cover,
    assert_shortcut_is_whole,
    cpu_models,
    cpu_runs,
    replay_cpu,
)
from .graph_grow import assert_grown_shortcut_is_whole, grown_model

MODELS = ("dots3note", "dots3note-nomtp")
PUBLISHED = "dots3note-288b"  # the published dimensions at 8 of the 46 layers (models.py)
CPU_RUNS = [(m, rid) for m in (*MODELS, PUBLISHED) for rid in cpu_runs(m)]
NODE_RUNS = [(m, rid) for m, rid in CPU_RUNS if (NODES / f"{rid}.tsv").exists()]
REFUSED = (
    Refused(
        "dots3note", "blk.1.attn_gate.weight", "the graph needs tensor blk.1.attn_gate.weight, which the file lacks"
    ),
    Refused(
        "dots3note", "blk.3.attn_k_norm.weight", "the graph needs tensor blk.3.attn_k_norm.weight, which the file lacks"
    ),
    Refused(
        "dots3note",
        "blk.3.indexer.k_norm.bias",
        "the graph needs tensor blk.3.indexer.k_norm.bias, which the file lacks",
    ),
    Refused(
        "dots3note",
        "",
        "layer 3 is neither sliding nor an indexer layer (llama.cpp reads no indexer tensors for it)",
        add_kv=(("attention.indexer.types", [True, False, False, False]),),
    ),
    Refused(
        "dots3note",
        "",
        "an indexer key length of 96 is not a power of two from 64 (llama.cpp's Hadamard matrix)",
        add_kv=(("attention.indexer.key_length", 96),),
    ),
)


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models((*MODELS, PUBLISHED), smollm2_path, tmp_path_factory, "dots3note")


def test_the_runs_cover_the_options() -> None:
    args = assert_runs_cover(
        "dots3note",
        ("-fa off", "-np 3", "-ub 1024", "-ctk q8_0 -ctv q8_0", "--swa-full", "--no-repack", "--n-cpu-moe 2"),
        at_least=9,
    )
    assert any("-c 65536" in a for a in args) and any(a == "-c 131072" for a in args)  # up to the training context
    assert len(cpu_runs("dots3note-nomtp")) == 3
    assert any("-c 524288" in a for a in assert_runs_cover(PUBLISHED, ("-fa off -np 3", "-ctk q8_0"), at_least=4))


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize(("name", "rid"), NODE_RUNS)
def test_the_graph_is_llama_cpps_node_for_node(name: str, rid: str, models: dict[str, Path]) -> None:
    """The full layers' indexer (its keys and cache write, the fused scores, the top-k) before Q; the rope key's
    norm before the RoPEs; the sparse mask of a full layer, the window's mask of a sliding one; the output gate
    after the attention."""
    assert len(NODE_RUNS) >= 2
    assert_nodes_equal(rid, models[name])


@pytest.mark.parametrize(
    ("rid", "mla", "indexer", "window"),
    [
        # 2 full layers x 8192 cells x 576 (MLA) / 128 (indexer keys) f16 values; 2 sliding layers x 768 x 320
        ("dots3note-c8192", 18.0, 4.0, 0.94),
        ("dots3note-c8192-swafull", 18.0, 4.0, 10.0),  # the window cache at every cell: 8192 x 320 x 2 x 2
    ],
)
def test_the_three_caches_are_llama_cpps(
    rid: str, mla: float, indexer: float, window: float, models: dict[str, Path]
) -> None:
    """llama_kv_cache_dsa_iswa's three ``llama_kv_cache``s, each its own buffer line, in llama.cpp's order."""
    text, bd = replay_cpu(rid, models["dots3note"])
    lines = [x for x in text.splitlines() if "CPU KV buffer size" in x]
    printed = [float(x.split("=")[1].split()[0]) for x in lines]
    assert printed == [mla, indexer, window]
    ours = sorted(round(b.bytes / MiB, 2) for b in bd.buffers if b.kind == "kv")
    assert ours == sorted(printed)
    assert (bd.kv_indexer_layers, bd.kv_layers, bd.kv_swa_layers) == (2, 2, 2)


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    assert_shortcut_is_whole(models[name], "-c 8192", "-c 4096 -fa off -np 3")


def test_the_layer_shortcut_equals_the_whole_replay_on_33_layers(smollm2_path: Path, tmp_path: Path) -> None:
    """The model without NextN grown to 33 layers (a sliding and a full layer repeated): the shortened replay,
    where it is taken, allocates as the whole one, on the CPU and with the layers on a GPU or split."""
    assert_grown_shortcut_is_whole(grown_model("dots3note-nomtp", 33, 2, tmp_path, smollm2_path))


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    assert_refused(refused, smollm2_path, tmp_path)
