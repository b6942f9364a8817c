"""Nanbeige 4.2's looped blocks (nanbeige.cpp ``load_arch_hparams``): ``num_loops`` 2 runs the file's 22 blocks twice,
each pass with caches of its own, so llama.cpp's n_layer (and its KV cache) is 44 layers over 22 blocks of tensors,
and the graph runs the blocks again, the output norm between the passes (``loop_norm``, unless
``skip_loop_final_norm``). Proven on the CPU build's logs of Nanbeige4.2-3B's published dimensions and of the small
model's 4 blocks run three times, with and without the loop norm (tests/fixtures/llamacpp-logs-cpu)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.hparams import hparams, n_loops
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device, place

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from make_arch_headers import header  # noqa: E402
from models import MODELS  # noqa: E402


def _model(tmp_path: Path, smollm2_path: Path, name: str) -> ggufx.GGUFModel:
    path = tmp_path / f"{name}.gguf"
    header(path, MODELS[name], json.loads((CPU_LOGS / "tensors.json").read_text())[name], smollm2_path)
    return ggufx.open(path)


def test_two_loops_double_the_cache_layers(tmp_path: Path, smollm2_path: Path) -> None:
    log = (CPU_LOGS / "nanbeige-3b-c4096-norepack.log").read_text()
    assert "n_layer               = 44" in log and "4096 cells,  44 layers" in log
    model = _model(tmp_path, smollm2_path, "nanbeige-3b")
    assert n_loops(model) == 2 and hparams(model).n_layer == 44
    kinds = layer_kinds(model)
    assert len(kinds) == 44 and all(k.kv for k in kinds)
    assert not any(t.name.startswith("blk.22.") for t in model.tensors)  # the second pass has no tensors of its own
    a = parse_args("-m x -c 4096")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.kv_layers == 44 and bd.kv_bytes == 704 * MiB  # llama.cpp: K 352 MiB + V 352 MiB
    assert bd.compute_estimate is None  # the looped graph is rebuilt
    assert _compute_and_nodes(model, "-m x -c 4096") == _logged(log) == (358.5195, 1375)


def _logged(log: str) -> tuple[float, int]:
    """llama.cpp's CPU compute buffer (~llama_context's 4 decimals) and the nodes of its last reserved graph."""
    compute = re.search(r"CPU compute buffer size is\s+([\d.]+) MiB", log)
    nodes = re.search(r"graph: nodes = (\d+),", log)
    assert compute and nodes
    return float(compute.group(1)), int(nodes.group(1))


def _compute_and_nodes(model: ggufx.GGUFModel, args: str) -> tuple[float, int]:
    """ggufx's compute buffer on the host, and the nodes of the whole prompt graph it rebuilds (every layer)."""
    a = parse_args(args)
    bd = breakdown(model, [], a.offload, a.context)
    sp = bd.reservation
    assert sp is not None and bd.compute_estimate is None
    ld = graphsim._loaded(model, [], a.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(graphsim.build_graph(c, g))
    compute = sum(b.bytes for b in bd.buffers if b.kind == "compute")
    return round(compute / MiB, 4), len(g.nodes)


@pytest.mark.parametrize(
    ("rid", "name", "args"),
    [
        ("nanbeige-loop3-c8192", "nanbeige-loop3", "-m x -c 8192"),
        ("nanbeige-loop3-c4096-faoff-np3", "nanbeige-loop3", "-m x -c 4096 -fa off -np 3"),
        ("nanbeige-loop3-c4096-np3", "nanbeige-loop3", "-m x -c 4096 -np 3"),  # three streams: K and V reshaped
        ("nanbeige-loop3-skip-c8192", "nanbeige-loop3-skip", "-m x -c 8192"),
    ],
)
def test_three_loops_with_and_without_the_loop_norm(
    rid: str, name: str, args: str, tmp_path: Path, smollm2_path: Path
) -> None:
    """Three passes over 4 blocks: the output norm (RMS norm and its weight, 2 nodes) after passes 1 and 2 makes
    llama.cpp's 385 nodes, 381 with skip_loop_final_norm; the compute buffer and the 12 layers' caches as its."""
    log = (CPU_LOGS / f"{rid}.log").read_text()
    assert f"completion -m @{name} {args.removeprefix('-m x ')} " in log and "n_layer               = 12" in log
    model = _model(tmp_path, smollm2_path, name)
    assert _compute_and_nodes(model, args) == _logged(log)
    a = parse_args(args)
    kv = re.search(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*\d+ cells,\s+12 layers", log)
    assert kv and round(breakdown(model, [], a.offload, a.context).kv_bytes / MiB, 2) == float(kv.group(1))


def test_one_loop_is_the_plain_stack(tmp_path: Path, smollm2_path: Path) -> None:
    model = _model(tmp_path, smollm2_path, "nanbeige")  # no num_loops key: one pass (llama.cpp's default)
    assert n_loops(model) == 1 and len(layer_kinds(model)) == MODELS["nanbeige"]["kv"]["block_count"]


def test_two_loops_on_a_gpu(tmp_path: Path, smollm2_path: Path) -> None:
    """llama.cpp's load_tensors splits n_layer_all + 1 = 45 layers: with every one offloaded the 44 caches and the 22
    blocks' weights are on the card, and the generic compute estimate sizes the card's buffer (it indexed the
    22-layer placement with the 44 layers before)."""
    model = _model(tmp_path, smollm2_path, "nanbeige-3b")
    a = parse_args("-m x -c 4096 -ngl 99")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    kv = {b.buft: b.bytes for b in bd.buffers if b.kind == "kv"}
    assert kv == {"CUDA0": 704 * MiB} and bd.kv_layers == 44
    assert place(model, [Device("CUDA0", 80 << 30)], a.offload).n_layer == 44
    assert {b.buft for b in bd.buffers if b.kind == "compute"} == {"CUDA0", "CUDA_Host"}
    assert bd.compute_estimate is None  # the looped graph, rebuilt on the card
