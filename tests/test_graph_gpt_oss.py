"""gpt-oss's compute graph (ggufx/analysis/memory/graph/models/gpt_oss.py, after llama.cpp's
src/models/openai-moe.cpp) against llama.cpp's own compute buffers.

The CPU build's runs of tests/fixtures/llamacpp-logs-cpu (a 4-layer gpt-oss of the family's structure:
sliding-window and full layers over two caches, attention sinks, biased router and experts; flash
attention on and off, -np 3 with a micro-batch that is not a multiple of the sequences, quantized K and
V, --swa-full, -ub 1024): every compute buffer equal to the 0.01 MiB llama.cpp prints (gpt-oss-20b's
recorded runs: tests/test_graph_logs.py). The periodicity shortcut of the replay
equals the whole replay on a 24-layer model; files llama.cpp would not load fall back to the generic
estimate with the reason.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph import graphsim
from ggufx.analysis.memory.graph.ggml import _Graph
from ggufx.analysis.memory.graph.models import builder
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log
from ggufx.analysis.memory.placement import Device

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from make_arch_headers import header  # noqa: E402
from models import MODELS  # noqa: E402

TENSORS = json.loads((CPU_LOGS / "tensors.json").read_text())["gpt-oss"]
CPU_RUNS = {
    rid: args
    for rid, model, args in (
        line.split("\t") for line in (CPU_LOGS / "matrix").read_text().splitlines() if line and line[0] != "#"
    )
    if model == "gpt-oss" and (CPU_LOGS / f"{rid}.log").exists()
}


def _layers(n: int) -> list[list]:
    """The CPU model's tensors over ``n`` layers (its layers are alike but for the window)."""
    out = [t for t in TENSORS if not t[0].startswith("blk.")]
    one = [t for t in TENSORS if t[0].startswith("blk.0.")]
    return out + [[f"blk.{il}." + name[6:], shape, type_] for il in range(n) for name, shape, type_ in one]


def _write(path: Path, smollm2: Path, n_layer: int = 4, drop: str = "", kv: dict | None = None, extra=()) -> Path:
    spec = MODELS["gpt-oss"]
    spec = spec | {"kv": spec["kv"] | {"block_count": n_layer} | (kv or {})}
    tensors = [t for t in _layers(n_layer) if t[0] != drop] + [list(t) for t in extra]
    header(path, spec, tensors, smollm2)
    return path


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gpt-oss")
    small = out / "gpt-oss.gguf"
    header(small, MODELS["gpt-oss"], TENSORS, smollm2_path)
    return {"small": small, "deep": _write(out / "gpt-oss-24.gguf", smollm2_path, 24)}


def test_the_cpu_runs_cover_the_options() -> None:
    args = " ".join(CPU_RUNS.values())
    assert len(CPU_RUNS) >= 9
    for option in ("-fa off", "-np 3", "-ctk q8_0", "-ctk q4_0", "--swa-full", "-ub 1024"):
        assert option in args, option


@pytest.mark.parametrize("rid", sorted(CPU_RUNS))
def test_every_cpu_compute_buffer_is_llama_cpps(rid: str, models: dict[str, Path]) -> None:
    args = CPU_RUNS[rid]
    log = parse_log((CPU_LOGS / f"{rid}.log").read_text())
    parsed = parse_args("-m x " + args)
    bd = breakdown(ggufx.open(models["small"]), [], parsed.offload, parsed.context)
    assert bd.compute_estimate is None, bd.compute_estimate  # built, not estimated
    ours = {b.buft: b.bytes / MiB for b in bd.buffers if b.kind == "compute"}
    recorded = log.buffers["compute"]
    assert recorded and set(ours) == set(recorded)
    assert all(abs(ours[b] - recorded[b]) < 0.01 for b in recorded), (recorded, ours)


def _graph(path: Path, argv: str, devices: list[Device] | None = None) -> _Graph:
    model = ggufx.open(path)
    p = parse_args("-m x " + argv)
    bd = breakdown(model, devices or [], p.offload, p.context)
    sp = bd.reservation
    assert sp is not None
    ld = graphsim._loaded(model, devices or [], p.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    c.layers = list(range(ld.hp.n_layer))
    g = _Graph()
    g.expand(builder("gpt-oss")(c, g))
    return g


def test_the_sinks_are_a_source_of_each_attention(models: dict[str, Path]) -> None:
    """ggml_flash_attn_ext_add_sinks makes the sinks source 4 of the flash-attention node,
    ggml_soft_max_add_sinks source 2 of the masked softmax; the router's softmax has none; the
    graph has llama.cpp's node count (204 with flash attention, sched_reserve's "graph: nodes")."""
    fa = _graph(models["small"], "-c 8192")
    assert len(fa.nodes) == 204  # gpt-oss-c8192.log
    nodes = [n for n in fa.nodes if n.op == "FLASH_ATTN_EXT"]
    assert [n.src[4].name for n in nodes] == [f"blk.{il}.attn_sinks.weight" for il in range(4)]
    soft = [n for n in _graph(models["small"], "-c 8192 -fa off").nodes if n.op == "SOFT_MAX"]
    attn = [n for n in soft if len(n.src) == 3]
    assert [n.src[2].name for n in attn] == [f"blk.{il}.attn_sinks.weight" for il in range(4)]
    assert len(soft) == 8 and all(len(n.src) == 1 for n in soft if n not in attn)  # the experts' weights
    # sliding-window layers (0, 2) read the 768-cell cache, the others the 8192-cell one
    masks = [n.src[3].ne[0] for n in nodes]
    assert masks == [768, 8192, 768, 8192]


def test_np3_rounds_the_micro_batch_up_to_a_multiple_of_the_sequences(models: dict[str, Path]) -> None:
    """graph_reserve: 512 tokens over 3 sequences are reserved as 513 (gpt-oss-c4096-faoff-np3.log)."""
    text = (CPU_LOGS / "gpt-oss-c4096-faoff-np3.log").read_text()
    assert "making n_tokens a multiple of n_seqs - n_tokens = 513" in text
    g = _graph(models["small"], "-c 4096 -fa off -np 3")
    assert next(n for n in g.nodes if n.name == "embd").ne[1] == 513


@pytest.mark.parametrize(
    ("argv", "n_gpus"),
    [
        ("-c 32768", 0),
        ("-c 16384 -fa off -np 3", 0),
        ("-c 32768", 1),
        ("-c 32768 -ngl 10", 1),
        ("-c 32768 --n-cpu-moe 7", 1),
        ("-c 16384 --cpu-moe -ctk q8_0 -ctv q8_0", 1),
        ("-c 16384 -fa off -np 3 -ngl 13", 1),
        ("-c 65536 -ts 3,1", 2),
    ],
)
def test_the_shortcut_replay_equals_the_whole_one(argv: str, n_gpus: int, models: dict[str, Path]) -> None:
    """24 layers, alternately sliding-window and full: the replay builds a few pairs of layers and
    checks that the allocator is periodic where it leaves the others out."""
    model = ggufx.open(models["deep"])
    devices = [Device(f"CUDA{i}", 80 << 30) for i in range(n_gpus)]
    p = parse_args("-m x " + argv)
    bd = breakdown(model, devices, p.offload, p.context)
    assert bd.compute_estimate is None and bd.reservation is not None
    sp = bd.reservation
    ld = graphsim._loaded(model, devices, p.offload)
    c = graphsim._context(model, ld, sp, sp.n_ubatch, sp.n_outputs)
    warm = next(w for w in graphsim.WARM if graphsim._one(model, ld, sp, sp.n_ubatch, sp.n_outputs, w) is not None)
    plan = graphsim._plan(graphsim._layer_signatures(c, ld), warm)
    assert plan.checks and len(plan.layers) <= 16, plan.layers  # pairs of layers left out
    assert graphsim.simulate(model, devices, p.offload, sp) == graphsim.simulate(
        model, devices, p.offload, sp, whole=True
    )


@pytest.mark.parametrize(
    ("name", "change", "why"),
    [
        ("sinks", {"drop": "blk.2.attn_sinks.weight"}, "tensor blk.2.attn_sinks.weight"),
        ("bias", {"drop": "blk.1.ffn_down_exps.bias"}, "tensor blk.1.ffn_down_exps.bias"),
        ("unused", {"kv": {"expert_used_count": 0}}, "expert_used_count"),
        ("overused", {"kv": {"expert_used_count": 9}}, "expert_used_count"),
        ("window", {"kv": {"attention.sliding_window": 0}}, "sliding_window"),
        ("fused", {"extra": [["blk.0.attn_qkv.weight", [1024, 1536], "F16"]]}, "blk.0.attn_qkv.weight"),
    ],
)
def test_files_llama_cpp_would_not_load_get_the_generic_estimate(
    name: str, change: dict, why: str, smollm2_path: Path, tmp_path: Path
) -> None:
    model = ggufx.open(_write(tmp_path / f"{name}.gguf", smollm2_path, **change))
    reason = graphsim.simulated(model)
    assert reason is not None and why in reason, reason
    p = parse_args("-m x -c 4096")
    bd = breakdown(model, [], p.offload, p.context)
    assert bd.compute_estimate and why in bd.compute_estimate
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert compute and all(b.bytes > 0 and "generic decoder estimate" in b.reason for b in compute)


def test_the_cpu_matrix_lists_the_runs() -> None:
    """Each recorded log is the run its matrix line names (line 2 is the command)."""
    for rid, args in CPU_RUNS.items():
        command = (CPU_LOGS / f"{rid}.log").read_text().splitlines()[1]
        assert re.search(rf"-m @gpt-oss {re.escape(args)} -dev none", command), (rid, command)


def test_no_repack_is_the_same_graph(models: dict[str, Path]) -> None:
    """The weights' host buffer does not change the CPU graph: --no-repack sizes the same compute."""
    model = ggufx.open(models["small"])
    p = parse_args("-m x -c 8192")
    a = breakdown(model, [], p.offload, p.context)
    b = breakdown(model, [], replace(p.offload, repack=False), p.context)
    assert [x.bytes for x in a.buffers if x.kind == "compute"] == [x.bytes for x in b.buffers if x.kind == "compute"]
