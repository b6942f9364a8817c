"""The dense decoder builders (graph/models/_dense.py and one module per llama.cpp model file: gemma2,
olmo2, exaone4, cohere2, qwen2, qwen3, phi3, smollm3, mistral3, seed_oss, llama4, openelm) against llama.cpp's CPU build: every recorded run
of their small header-only models (tests/fixtures/llamacpp-logs-cpu) has the compute buffer llama.cpp
reserved, to the 4 decimals of its ``~llama_context`` line, simulated (not the generic estimate).
Where the CUDA logs of published dimensions (tests/fixtures/llamacpp-logs) hold runs of these
architectures, those are replayed too."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import ARCHS
from ggufx.analysis.memory.buffers import MiB, breakdown
from ggufx.analysis.memory.graph.graphsim import simulated
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import parse_log

CPU_LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs-cpu"
sys.path.insert(0, str(CPU_LOGS))
from make_arch_headers import header  # noqa: E402
from models import MODELS  # noqa: E402

DENSE = (
    "gemma2",
    "olmo2",
    "exaone4",
    "cohere2",
    "qwen2",
    "qwen3",
    "phi3",
    "smollm3",
    "mistral3",
    "seed_oss",
    "llama4",
    "openelm",
)
TENSORS = json.loads((CPU_LOGS / "tensors.json").read_text())
RUNS = {
    rid: (model, args)
    for rid, model, args in (
        line.split("\t")
        for line in (CPU_LOGS / "matrix").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    if MODELS[model]["arch"] in DENSE
    and (CPU_LOGS / f"{rid}.log").exists()
    and "# exit status: 0" in (CPU_LOGS / f"{rid}.log").read_text()  # "openelm": 10 heads over 4 abort
}


@pytest.fixture(scope="module")
def dense_models(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dense-holes")
    made = {}
    for name in sorted({m for m, _ in RUNS.values()}):
        made[name] = out / f"{name}.gguf"
        header(made[name], MODELS[name], TENSORS[name], smollm2_path)
    return made


def test_every_dense_builder_has_recorded_runs() -> None:
    """Each architecture given a builder here is proven on CPU runs: plain, a quantized cache,
    -fa off with -np 3 (512 tokens rounded up to 513, graph_reserve), -fa off at 16384 cells (the
    attention's KQ is the peak there, not the logits), --swa-full where it has a window."""
    built = {a for a in DENSE if ARCHS[a].builder}
    archs = {MODELS[m]["arch"] for m, _ in RUNS.values()}
    assert built and built <= archs, built - archs
    for arch in built:
        args = [a for m, a in RUNS.values() if MODELS[m]["arch"] == arch]
        assert any("-ctk q8_0" in a for a in args) and any("-fa off -np 3" in a for a in args), arch
        # without flash attention at 16384 cells the layers' attention, not the logits, sets the peak
        assert "-c 16384 -fa off" in args, arch
        if ARCHS[arch].swa and not ARCHS[arch].swa.disabled:
            assert any("--swa-full" in a for a in args), arch


@pytest.mark.parametrize("rid", sorted(RUNS))
def test_cpu_compute_buffer_is_llama_cpps(rid: str, dense_models: dict[str, Path]) -> None:
    model_name, args = RUNS[rid]
    if not ARCHS[MODELS[model_name]["arch"]].builder:
        pytest.skip(f"{MODELS[model_name]['arch']} has no builder")
    log = parse_log((CPU_LOGS / f"{rid}.log").read_text())
    parsed = parse_args("-m x " + args)
    model = ggufx.open(dense_models[model_name])
    assert simulated(model) is None
    bd = breakdown(model, [], replace(parsed.offload, repack=True), parsed.context)
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert compute and not bd.compute_estimate and not any(b.reason for b in compute), bd.compute_estimate
    ours = {b.buft: round(b.bytes / MiB, 4) for b in compute}
    assert ours == log.buffers["compute"]


def test_a_file_without_a_needed_tensor_falls_back(smollm2_path: Path, tmp_path: Path) -> None:
    """gemma2 without a post-FFN norm: not built (the reason names the tensor), the generic estimate
    sizes its compute buffer, labelled."""
    path = tmp_path / "g.gguf"
    header(path, MODELS["gemma2"], [t for t in TENSORS["gemma2"] if t[0] != "blk.1.post_ffw_norm.weight"], smollm2_path)
    model = ggufx.open(path)
    assert simulated(model) == "the graph needs tensor blk.1.post_ffw_norm.weight, which the file lacks"
    bd = breakdown(model, [], parse_args("-m x -c 4096").offload, parse_args("-m x -c 4096").context)
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert compute and all("generic decoder estimate" in b.reason for b in compute) and bd.compute_estimate
