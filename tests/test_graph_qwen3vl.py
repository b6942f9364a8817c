"""The ``qwen3vl`` graph builder (graph/models/qwen3vl.py, llama.cpp's src/models/qwen3vl.cpp): the qwen3
decoder with M-RoPE and deepstack (input rows ``n_embd * (1 + n_deepstack_layers)`` wide, the token rows
padded to that width, the first layers' outputs adding a slice of them). Its compute buffer against
llama.cpp's CPU build on a 6-layer model with 3 deepstack layers (flash attention on and off, -np 3 with
its 513-token micro-batch, a q8_0 cache, -ub 1024), and its graph node for node."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import ARCHS
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.model import GGUFModel

from .graph_arch_logs import (
    CPU_LOGS,
    assert_compute_equal,
    assert_nodes_equal,
    assert_shortcut_is_whole,
    cpu_model,
    cpu_runs,
    replay_cpu,
)

ARCH = "qwen3vl"
CPU_RUNS = cpu_runs(ARCH)


@pytest.fixture(scope="module")
def model_path(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cpu_model(ARCH, tmp_path_factory.mktemp(ARCH), smollm2_path)


def test_the_builder_is_registered_and_the_runs_cover_the_options() -> None:
    assert ARCHS[ARCH].builder == ARCH
    args = " ".join(line for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{ARCH}\t" in line)
    assert len(CPU_RUNS) >= 5
    for option in ("-fa off -np 3", "-ctk q8_0", "-ub 1024", "--no-repack", "-c 16384 -fa off"):
        assert option in args


@pytest.mark.parametrize("rid", CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(rid: str, model_path: Path) -> None:
    text, bd = replay_cpu(rid, model_path)
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("rid", [f"{ARCH}-c4096-faoff-np3", f"{ARCH}-c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(rid: str, model_path: Path) -> None:
    """The padded token rows (PAD to 4 x n_embd), the deepstack ADDs of layers 0-2: op and size of
    every node, in order, as llama.cpp's scheduler printed them (GGML_SCHED_DEBUG=2)."""
    assert_nodes_equal(rid, model_path)


def test_the_layer_shortcut_equals_the_whole_replay(model_path: Path) -> None:
    """Deepstack layers share their signature with the others: the replay that leaves repeated layers
    out must still keep the padded embeddings alive until the last deepstack layer."""
    assert_shortcut_is_whole(model_path, "-c 8192", "-c 4096 -fa off -np 3")


def _variant(smollm2: Path, out: Path, drop: str = "", **kv: object) -> GGUFModel:
    """The CPU model with other metadata ``kv`` (a ``block_count``: each layer like layer 0), without
    tensor ``drop``."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = [t for t in json.loads((CPU_LOGS / "tensors.json").read_text())[ARCH] if t[0] != drop]
    n_layer = kv.get("block_count")
    if isinstance(n_layer, int):
        one = [t for t in tensors if t[0].startswith("blk.0.")]
        tensors = [t for t in tensors if not t[0].startswith("blk.")]
        tensors += [[n.replace("blk.0.", f"blk.{il}.", 1), ne, ty] for il in range(n_layer) for n, ne, ty in one]
    header(out, {**MODELS[ARCH], "kv": {**MODELS[ARCH]["kv"], **kv}}, tensors, smollm2)
    return ggufx.open(out)


@pytest.mark.parametrize("n_deepstack", [3, 20, 35])
def test_the_layer_shortcut_keeps_every_deepstack_layer(n_deepstack: int, smollm2_path: Path, tmp_path: Path) -> None:
    """36 layers (Qwen3-VL-8B's count) of one signature, the first 3, 20 or 35 adding a deepstack slice:
    the shortcut's periodicity check sees the padded embeddings freed after the last deepstack layer it
    builds, so it only leaves out layers past the last one (or all deepstack ones, the padded rows alive
    throughout); the replay with layers left out allocates as the whole one."""
    model = _variant(smollm2_path, tmp_path / "q36.gguf", block_count=36, n_deepstack_layers=n_deepstack)
    assert graphsim.unbuildable(model) is None
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


def test_the_deepstack_width_counts(smollm2_path: Path, tmp_path: Path) -> None:
    """The same file without n_deepstack_layers is built as plain qwen3 with M-RoPE: narrower input
    rows, nothing kept alive, a smaller buffer than the recorded 146.0254 MiB of -c 8192."""
    a = parse_args("-m x -c 8192")
    model = _variant(smollm2_path, tmp_path / "no-ds.gguf", n_deepstack_layers=0)
    assert graphsim.unbuildable(model) is None
    bd = breakdown(model, [], a.offload, a.context)
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert not bd.compute_estimate and 0 < compute[0].bytes < 146 * 2**20


def test_a_file_without_a_tensor_the_graph_reads_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    model = _variant(smollm2_path, tmp_path / "no-qnorm.gguf", "blk.2.attn_q_norm.weight")
    assert graphsim.unbuildable(model) == "the graph needs tensor blk.2.attn_q_norm.weight, which the file lacks"
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [], a.offload, a.context)
    assert bd.compute_estimate and "blk.2.attn_q_norm.weight" in bd.compute_estimate


def test_a_file_without_rope_sections_gets_the_generic_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """qwen3vl.cpp reads rope.dimension_sections required: llama.cpp refuses a file without them."""
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
        from models import MODELS
    finally:
        sys.path.remove(str(CPU_LOGS))
    spec = {**MODELS[ARCH], "kv": {k: v for k, v in MODELS[ARCH]["kv"].items() if k != "rope.dimension_sections"}}
    header(tmp_path / "no-sections.gguf", spec, json.loads((CPU_LOGS / "tensors.json").read_text())[ARCH], smollm2_path)
    model = ggufx.open(tmp_path / "no-sections.gguf")
    why = "the graph needs the metadata key qwen3vl.rope.dimension_sections, which the file lacks"
    assert graphsim.unbuildable(model) == why
