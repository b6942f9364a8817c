"""Nanbeige 4.2's looped blocks (nanbeige.cpp ``load_arch_hparams``): ``num_loops`` 2 runs the file's 22 blocks twice,
each pass with caches of its own, so llama.cpp's n_layer (and its KV cache) is 44 layers over 22 blocks of tensors.
Proven on the CPU build's log of Nanbeige4.2-3B's published dimensions (tests/fixtures/llamacpp-logs-cpu)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ggufx
from ggufx.analysis.layers import layer_kinds
from ggufx.analysis.memory.buffers import MiB, breakdown
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
    assert bd.compute_estimate is not None  # the looped graph is not rebuilt: the generic estimate, labelled


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
    assert bd.compute_estimate is not None and "num_loops above 1" in bd.compute_estimate
