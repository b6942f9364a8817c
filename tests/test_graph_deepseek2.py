"""The deepseek2 graph builder (graph/models/deepseek2.py) against llama.cpp.

Its CPU build's compute buffer on the small DeepSeek V3-like (MLA with q_lora, a NextN block, a dense
layer 0, sigmoid routing scaled by 2.5) and V2-Lite-like (no q_lora) models of
tests/fixtures/llamacpp-logs-cpu, over flash attention on and off, ``-np 3`` (n_tokens rounded up to a
multiple of the sequences), q8_0/q4_0 K caches, ``--n-cpu-moe 2`` and ``--no-repack``: equal to the
0.0001 MiB the ``~llama_context`` line prints. Recorded runs of published shapes (tests/fixtures/llamacpp-logs)
are replayed for every builder by tests/test_graph_logs.py.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph.graphsim import simulate, simulated
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.placement import Device

ARCH = "deepseek2"
HERE = Path(__file__).resolve().parent
CPU_LOGS = HERE / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from make_arch_headers import header  # noqa: E402
from models import MODELS  # noqa: E402

TENSORS = json.loads((CPU_LOGS / "tensors.json").read_text())
CPU_RUNS = {
    rid: (model, args)
    for rid, model, args in (
        line.split("\t")
        for line in (CPU_LOGS / "matrix").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    if MODELS[model]["arch"] == ARCH and (CPU_LOGS / f"{rid}.log").exists()
}


def _exact_cpu_compute(text: str) -> float:
    """The ``~llama_context`` line: the CPU compute buffer to 0.0001 MiB."""
    (line,) = [x for x in text.splitlines() if "~llama_context:" in x and "CPU compute buffer size is" in x]
    return float(line.split("size is")[1].split("MiB")[0])


@pytest.fixture(scope="module")
def models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("deepseek2")
    made = {}
    for name in sorted({m for m, _ in CPU_RUNS.values()}):
        made[name] = out / f"{name}.gguf"
        header(made[name], MODELS[name], TENSORS[name], smollm2_path)
    return made


def _replay(rid: str, models: dict[str, Path]) -> tuple[ggufx.GGUFModel, object, object]:
    model, args = CPU_RUNS[rid]
    parsed = parse_args("-m x " + args.replace("--no-repack", ""))
    offload = replace(parsed.offload, repack="--no-repack" not in args)
    return ggufx.open(models[model]), offload, parsed.context


def test_the_cpu_runs_cover_the_shapes() -> None:
    args = " ".join(a for _, a in CPU_RUNS.values())
    assert {"deepseek2-mla", "deepseek2-noqlora"} <= {m for m, _ in CPU_RUNS.values()}
    for option in ("-fa off", "-np 3", "-ctk q8_0", "-ctk q4_0", "--n-cpu-moe 2", "--no-repack"):
        assert option in args, option


@pytest.mark.parametrize("rid", sorted(CPU_RUNS))
def test_cpu_compute_buffer_is_llama_cpps(rid: str, models: dict[str, Path]) -> None:
    model, offload, context = _replay(rid, models)
    assert simulated(model) is None
    bd = breakdown(model, [], offload, context)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert not compute.reason  # the builder's figure, not the generic estimate
    want = _exact_cpu_compute((CPU_LOGS / f"{rid}.log").read_text())
    assert round(compute.bytes / MiB, 4) == want


def _deep(smollm2: Path, path: Path, n_trunk: int) -> Path:
    """The V3-like model with ``n_trunk`` trunk layers (layer 0 dense, the rest MoE like its layer 1) and
    its NextN block after them: long runs of identical layers for the shortened replay."""
    spec = dict(MODELS["deepseek2-mla"])
    spec["kv"] = dict(spec["kv"], block_count=n_trunk + 1)
    base = TENSORS["deepseek2-mla"]
    tensors = [t for t in base if not t[0].startswith("blk.")]
    tensors += [t for t in base if t[0].startswith("blk.0.")]
    for il in range(1, n_trunk + 1):
        src = "blk.4." if il == n_trunk else "blk.1."
        tensors += [[f"blk.{il}." + t[0][len(src) :], *t[1:]] for t in base if t[0].startswith(src)]
    header(path, spec, tensors, smollm2)
    return path


@pytest.mark.parametrize(
    ("argv", "gpus"),
    [("-c 8192", 0), ("-c 4096 -fa off -np 3", 0), ("-c 8192 -ngl 7", 1), ("-c 8192 --n-cpu-moe 5", 1)],
)
def test_the_shortened_replay_is_the_whole_one(argv: str, gpus: int, smollm2_path: Path, tmp_path: Path) -> None:
    model = ggufx.open(_deep(smollm2_path, tmp_path / "deep.gguf", 14))
    assert simulated(model) is None
    args = parse_args("-m x " + argv)
    devices = [Device("CUDA0", 80 << 30)] * gpus
    bd = breakdown(model, devices, args.offload, args.context)
    sp = bd.reservation
    assert sp is not None
    assert simulate(model, devices, args.offload, sp) == simulate(model, devices, args.offload, sp, whole=True)


def test_the_gpu_graph_builds(models: dict[str, Path]) -> None:
    """On a GPU, with the experts of layer 1 on the host (--n-cpu-moe 2 over a dense layer 0): a figure
    per backend from the builder."""
    model = ggufx.open(models["deepseek2-mla"])
    args = parse_args("-m x -c 8192 --n-cpu-moe 2")
    bd = breakdown(model, [Device("CUDA0", 80 << 30)], args.offload, args.context)
    compute = {b.buft: b for b in bd.buffers if b.kind == "compute"}
    assert set(compute) == {"CUDA0", "CUDA_Host"} and all(b.bytes > 0 and not b.reason for b in compute.values())


def test_files_the_graph_cannot_read_fall_back_to_the_estimate(smollm2_path: Path, tmp_path: Path) -> None:
    """A deepseek2 file without the absorbed MLA tensors is refused with the tensor named, and gets the
    generic estimate, labelled."""
    tensors = [t for t in TENSORS["deepseek2-noqlora"] if t[0] != "blk.2.attn_k_b.weight"]
    header(tmp_path / "no-kb.gguf", MODELS["deepseek2-noqlora"], tensors, smollm2_path)
    model = ggufx.open(tmp_path / "no-kb.gguf")
    why = simulated(model)
    assert why is not None and "blk.2.attn_k_b.weight" in why
    args = parse_args("-m x -c 8192")
    bd = breakdown(model, [], args.offload, args.context)
    (compute,) = [b for b in bd.buffers if b.kind == "compute"]
    assert compute.bytes > 0 and "generic decoder estimate" in compute.reason
