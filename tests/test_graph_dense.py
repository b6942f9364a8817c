"""The dense decoder builders (graph/models/_dense.py and one module per llama.cpp model file: gemma2,
olmo2, exaone4, cohere2, qwen2, qwen3, phi3, smollm3, mistral3, seed_oss, llama4, openelm, glm4, qwen2vl,
ernie4_5) against llama.cpp's CPU build: every recorded run of their small header-only models
(tests/fixtures/llamacpp-logs-cpu) has the compute buffer llama.cpp reserved, to the 4 decimals of its
``~llama_context`` line, simulated (not the generic estimate).
The same on models of published dimensions (llamacpp-logs-cpu/published: Qwen2.5-7B, gemma-2-2b,
Phi-3.5-mini, SmolLM3-3B, OLMo-2-7B, command-r7b, EXAONE-4.0-1.2B, GLM-4-9B-0414, whose headers
tests/fixtures/llamacpp-logs/make_headers.py writes); their runs in tests/fixtures/llamacpp-logs
are replayed for every builder by tests/test_graph_logs.py."""

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
    "glm4",
    "qwen2vl",
    "ernie4_5",
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


def test_nextn_and_mrope_files_fall_back(smollm2_path: Path, tmp_path: Path) -> None:
    """exaone4 and glm4 files with NextN layers, glm4 with M-RoPE sections: graph parts these builders do
    not rebuild, so the generic estimate with the reason named."""
    cases = [
        ("exaone4", {"nextn_predict_layers": 1}, "exaone4 graphs with NextN layers are not simulated"),
        ("glm4", {"nextn_predict_layers": 1}, "glm4 graphs with NextN layers are not simulated"),
        ("glm4", {"rope.dimension_sections": [8, 12, 12, 0]}, "glm4 graphs with M-RoPE sections are not simulated"),
    ]
    for name, kv, why in cases:
        path = tmp_path / f"{name}.gguf"
        spec = {**MODELS[name], "kv": {**MODELS[name]["kv"], **kv}}
        header(path, spec, TENSORS[name], smollm2_path)
        assert simulated(ggufx.open(path)) == why


# the models of published dimensions (make_headers.py) that run a builder of this module
PUBLISHED_MODELS = {
    "qwen25-7b": "qwen2",
    "gemma2-2b": "gemma2",
    "phi35-mini": "phi3",
    "smollm3-3b": "smollm3",
    "olmo2-7b": "olmo2",
    "cohere2-7b": "cohere2",
    "exaone4-1.2b": "exaone4",
    "glm4-9b": "glm4",
}
PUBLISHED = CPU_LOGS / "published"
PUBLISHED_RUNS = {
    rid: (model, args)
    for rid, model, args in (
        line.split("\t")
        for line in (PUBLISHED / "matrix").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    if (PUBLISHED / f"{rid}.log").exists() and "# exit status: 0" in (PUBLISHED / f"{rid}.log").read_text()
}


def _hole(hole_models: dict[str, Path], name: str) -> Path:
    if name not in hole_models:
        pytest.skip(f"make_headers.py does not write {name} in this checkout")
    return hole_models[name]


def test_published_runs_are_recorded() -> None:
    """Each published model: flash attention and not, -np 3 -ub 1024, a q8_0 cache."""
    assert {m for m, _ in PUBLISHED_RUNS.values()} == set(PUBLISHED_MODELS)
    assert len(PUBLISHED_RUNS) == 4 * len(PUBLISHED_MODELS)


@pytest.mark.parametrize("rid", sorted(PUBLISHED_RUNS))
def test_published_dimensions_cpu(rid: str, hole_models: dict[str, Path]) -> None:
    name, args = PUBLISHED_RUNS[rid]
    model = ggufx.open(_hole(hole_models, name))
    assert model.architecture == PUBLISHED_MODELS[name] and simulated(model) is None
    log = parse_log((PUBLISHED / f"{rid}.log").read_text())
    parsed = parse_args("-m x " + args)
    bd = breakdown(model, [], replace(parsed.offload, repack=False), parsed.context)
    compute = [b for b in bd.buffers if b.kind == "compute"]
    assert compute and not bd.compute_estimate
    assert {b.buft: round(b.bytes / MiB, 4) for b in compute} == log.buffers["compute"]
