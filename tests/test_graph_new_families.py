"""The newest decoder families of llama.cpp 11434 (issue 25, h-newarch) whose graph ggufx rebuilds, against
llama.cpp's CPU build:

* ``hy_v3`` (src/models/hy-v3.cpp, graph/models/hy_v3.py): Q/K head norms before RoPE, a dense first
  layer (no router), then sigmoid-routed experts with the selection bias ``blk.N.exp_probs_b``, normalized
  and scaled weights, an ungated shared expert; the rows picked after the output norm (the MTP hidden
  state ``t_h_nextn`` an output);
* ``spark2_5`` (spark2-5.cpp, graph/models/spark2_5.py): sliding-window layers from the pattern array on
  their own cache and mask (also with --swa-full), the head-wise sigmoid gate of the attention output, a
  GELU FFN.

Per model: its compute buffer on its runs (flash attention on and off, -np 3 with its 513-token
micro-batch, q8_0 caches at 16384 cells, --no-repack), to the 0.0001 MiB of ``~llama_context``'s line;
its graph against the one llama.cpp's scheduler printed, node for node; the layer shortcut against the whole replay; and a file llama.cpp would refuse gets the generic
estimate, with the reason."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device

from . import graph_arch_logs
from .graph_arch_logs import CPU_LOGS, assert_compute_equal, assert_nodes_equal, cpu_model, cpu_runs, replay_cpu
from .graph_arch_logs import cpu_spec as _spec


@dataclass(frozen=True)
class Refused:
    model: str  # the small model (models.py) whose file loses...
    drop_tensor: str  # ...this tensor (the graph needs it)...
    reason: str  # graphsim.unbuildable's words for it
    add_kv: tuple[tuple[str, object], ...] = ()  # ...or gains these keys


MODELS = ("hy_v3", "spark2_5")
REFUSED = (
    Refused(  # a router without its shared expert (the loader takes both as not required; the graph uses both)
        "hy_v3",
        "blk.2.ffn_down_shexp.weight",
        "the graph needs tensor blk.2.ffn_down_shexp.weight, which the file lacks",
    ),
    Refused(  # the gating set to 4 (sqrt-softplus, not built here)
        "hy_v3",
        "",
        "the graph needs hy_v3.expert_gating_func 1, 2 or 3 (softmax, sigmoid, softmax weights), not 4",
        add_kv=(("expert_gating_func", 4),),
    ),
    Refused(
        "spark2_5", "blk.1.attn_gate.weight", "the graph needs tensor blk.1.attn_gate.weight, which the file lacks"
    ),
)
CPU_RUNS = [(m, rid) for m in MODELS for rid in cpu_runs(m)]


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("new-families")
    return {n: cpu_model(n, out, smollm2_path) for n in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_runs_cover_flash_attention_off_parallel_sequences_a_quantized_cache_and_no_repack(name: str) -> None:
    assert builder_of(_spec(name)["arch"]) is not None
    args = [line.split("\t")[2] for line in (CPU_LOGS / "matrix").read_text().splitlines() if f"\t{name}\t" in line]
    assert len(cpu_runs(name)) == len(args) >= 4
    for option in ("-fa off", "-np 3", "-ctk q8_0 -ctv q8_0", "--no-repack"):
        assert any(option in a for a in args), option
    assert any("-fa off" not in a for a in args)


@pytest.mark.parametrize(("name", "rid"), CPU_RUNS)
def test_cpu_compute_buffer_equals_llama_cpp(name: str, rid: str, models: dict[str, Path]) -> None:
    text, bd = replay_cpu(rid, models[name])
    assert_compute_equal(text, bd)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("run", ["c4096-faoff-np3", "c16384-q8_0"])
def test_the_graph_is_llama_cpps_node_for_node(
    name: str, run: str, models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Equal buffers could hide another order of the same nodes: the graph itself equals the one
    llama.cpp's scheduler printed (GGML_SCHED_DEBUG=2, nodes/<id>.tsv), op and size of every node, in order
    (hy_v3: the selection bias's ADD, the rows picked after the output norm; spark2_5's GEGLU is a GLU op, as
    SwiGLU is)."""
    monkeypatch.setitem(graph_arch_logs._OP, "GEGLU", "GLU")
    assert_nodes_equal(f"{name}-{run}", models[name])


@pytest.mark.parametrize("name", MODELS)
def test_the_layer_shortcut_equals_the_whole_replay(name: str, models: dict[str, Path]) -> None:
    """The replay that leaves repeated blocks of layers out allocates as the one of every layer."""
    model = ggufx.open(models[name])
    for args in ("-c 8192", "-c 4096 -fa off -np 3"):
        a = parse_args("-m x " + args)
        sp = breakdown(model, [], a.offload, a.context).reservation
        assert sp is not None
        whole = graphsim.simulate(model, [], a.offload, sp, whole=True)
        assert graphsim.simulate(model, [], a.offload, sp) == whole and whole["CPU"] > 0


@pytest.mark.parametrize("refused", REFUSED, ids=lambda r: f"{r.model}-{r.drop_tensor or 'kv'}")
def test_a_file_llama_cpp_would_refuse_gets_the_generic_estimate(
    refused: Refused, smollm2_path: Path, tmp_path: Path
) -> None:
    sys.path.insert(0, str(CPU_LOGS))
    try:
        from make_arch_headers import header
    finally:
        sys.path.remove(str(CPU_LOGS))
    tensors = json.loads((CPU_LOGS / "tensors.json").read_text())[refused.model]
    kept = [t for t in tensors if t[0] != refused.drop_tensor]
    assert len(kept) == len(tensors) - (1 if refused.drop_tensor else 0)
    spec = _spec(refused.model)
    spec = {**spec, "kv": spec["kv"] | dict(refused.add_kv)}
    path = tmp_path / "refused.gguf"
    header(path, spec, kept, smollm2_path)
    model = ggufx.open(path)
    assert graphsim.unbuildable(model) == refused.reason
    a = parse_args("-m x -c 8192")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], a.offload, a.context)
    assert bd.compute_estimate and refused.reason in bd.compute_estimate
