"""The recorded llama.cpp runs of tests/fixtures/llamacpp-logs: their index, the header-only models
they loaded (rebuilt byte-identical from the real GGUF files) and a run replayed through ggufx."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.buffers import Breakdown, MiB, breakdown
from ggufx.analysis.memory.llamaargs import parse_args
from ggufx.analysis.memory.llamalog import LlamaLog, parse_log
from ggufx.analysis.memory.mtp import MtpOptions, main_context, split_log
from ggufx.analysis.memory.placement import Device

LOGS = Path(__file__).resolve().parent / "fixtures" / "llamacpp-logs"
RUNS = json.loads((LOGS / "runs.json").read_text())
# record.sh hands llama.cpp each whitespace-separated word of a matrix line as it is (bash `read -ra`: no
# quote or backslash removal), so `-ot blk\.[0-9]\.=CPU` reached llama.cpp with its backslashes; the
# tests read the arguments as a shell would (shlex), so such a word is quoted here to stay whole
for _run in RUNS.values():
    _run["args"] = " ".join(shlex.quote(w) if "\\" in w else w for w in _run["args"].split())


PROJECTOR_LOGS = LOGS.parent / "projector-logs"


def _write_holes(script: Path, manifest: Path, out: Path, *args: str) -> dict[str, Path]:
    """Run a header writer, check each header against the manifest it was recorded with (sha256),
    and truncate a copy to the model's full size."""
    proc = subprocess.run([sys.executable, str(script), str(out), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = {}
    for line in manifest.read_text().splitlines():
        name, size, head, sha = line.split("\t")
        hdr = (out / f"{name}.hdr").read_bytes()
        assert (len(hdr), hashlib.sha256(hdr).hexdigest()) == (int(head), sha), (
            f"{name}: not the header llama.cpp loaded"
        )
        path = out / f"{name}.gguf"
        with open(path, "wb") as f:
            f.write(hdr)
            f.truncate(int(size))
        models[name] = path
    return models


@pytest.fixture(scope="session")
def hole_models(smollm2_path: Path, gemma_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The recorded runs' models: the headers of make_headers.py (text models and the Qwen3.6 27B
    projector) and of projector-logs/make_projectors.py (projectors of other types), each file
    truncated to its full size."""
    out = tmp_path_factory.mktemp("holes")
    models = _write_holes(
        LOGS / "make_headers.py",
        LOGS / "headers-manifest.tsv",
        out,
        "--smollm2",
        str(smollm2_path),
        "--gemma",
        str(gemma_path),
    )
    models.update(_write_holes(PROJECTOR_LOGS / "make_projectors.py", PROJECTOR_LOGS / "headers-manifest.tsv", out))
    models.update(_cpu_models(out, smollm2_path))
    return models


CPU_MODELS = LOGS.parent / "llamacpp-logs-cpu"


def cpu_model_archs() -> dict[str, str]:
    """Model name -> architecture, for the models of llamacpp-logs-cpu/models.py that GPU runs loaded
    (headers-manifest-cpu-models.tsv, written by matrix_builders.py)."""
    sys.path.insert(0, str(CPU_MODELS))
    try:
        from models import ALIASES, MODELS
    finally:
        sys.path.remove(str(CPU_MODELS))
    names = [line.split("\t")[0] for line in (LOGS / "headers-manifest-cpu-models.tsv").read_text().splitlines()]
    return {n: MODELS[ALIASES.get(n, n)]["arch"] for n in names}


def _cpu_models(out: Path, smollm2: Path) -> dict[str, Path]:
    """The models of llamacpp-logs-cpu that the GPU runs of matrix_builders.py loaded, each checked
    against the header the GPU machine was given."""
    sys.path.insert(0, str(CPU_MODELS))
    try:
        from make_arch_headers import header
        from models import ALIASES, MODELS
    finally:
        sys.path.remove(str(CPU_MODELS))
    tensors = json.loads((CPU_MODELS / "tensors.json").read_text())
    models = {}
    for line in (LOGS / "headers-manifest-cpu-models.tsv").read_text().splitlines():
        name, size, head, sha = line.split("\t")
        path, spec = out / f"{name}.gguf", ALIASES.get(name, name)
        assert header(path, {"name": spec, **MODELS[spec]}, tensors[spec], smollm2) == (int(head), int(size)), name
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read(int(head))).hexdigest() == sha, f"{name}: not the header llama.cpp loaded"
        models[name] = path
    return models


def devices_of(run: dict, log_devices: list[tuple[str, int]]) -> list[Device]:
    """The GPUs llama.cpp saw: CUDA0..N-1 as CUDA_VISIBLE_DEVICES numbered them, with the free memory
    the log reports (the default split follows it)."""
    if run["gpus"] == "cpu" or "-dev none" in run["args"]:
        return []
    free = dict(log_devices)
    first = next(iter(free.values()))
    return [Device(f"CUDA{i}", free.get(f"CUDA{i}", first) * MiB) for i in range(int(run["gpus"]))]


def replay_run(rid: str, models: dict[str, Path]):
    run = RUNS[rid]
    log = parse_log((LOGS / f"{rid}.log").read_text())
    args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
    model = ggufx.open(models[args.model])
    return run, log, breakdown(model, devices_of(run, log.devices), args.offload, args.context)


_MAIN_REPLAYS: dict[str, tuple[str, LlamaLog, Breakdown]] = {}


def replay_main(rid: str, models: dict[str, Path]) -> tuple[str, LlamaLog, Breakdown]:
    """A run's main model as `mem` takes its command line: the log's text and lines (under ``draft-mtp`` without
    ``-md``, the main context's) and ggufx's breakdown (there, the main context's options), computed once per test
    session (tests/test_builder_coverage.py and tests/test_graph_logs.py replay the same runs)."""
    if rid not in _MAIN_REPLAYS:
        run = RUNS[rid]
        text = (LOGS / f"{rid}.log").read_text()
        args = parse_args(run["args"].replace("@", ""), server=run["tool"] == "server")
        offload, context = args.offload, args.context
        if "draft-mtp" in args.spec_types and not args.draft:  # the MTP context (with -md: Gemma 4's drafter)
            text = split_log(text)[0]
            offload = replace(offload, mtp=True)
            context = main_context(context, MtpOptions(args.spec_n_max, *args.spec_cache), run["tool"] == "server")
        log = parse_log(text)
        model = ggufx.open(models[str(args.model)])
        _MAIN_REPLAYS[rid] = text, log, breakdown(model, devices_of(run, log.devices), offload, context)
    return _MAIN_REPLAYS[rid]


# Recorded runs where ggufx does not yet say what llama.cpp did. Each is an expected failure, strict: the
# test fails when one of them comes right, so this table stays true. Key: (test, run id). The deviations
# of the first CUDA recordings (Mamba-2 state-copy views, -fa auto's untransposed V cache, Phi-3's LongRoPE
# factors, the fit traces' reading) are resolved, and so are those of the second recordings (2026-12-06:
# MLA's V sharing K's f16 conversion, a fused QKV's view strides, -nkvo's attention pinned to the host
# without flash attention: tests/test_graph_sched_causes.py), and so is the third recordings' (Cohere 2 with
# q8_0 caches: the V rotation joined the graph with the attention, not after the parallel FFN).
# The session-8 CUDA recordings (one H100, 418 runs of the builders of sessions 6-8) left three (GLM5-Next at -ngl 3:
# resolve_fused_ops turns the fused mHC post off there, tests/test_graph_glm5_next_sched.py); every run of those
# builders is now exact on CUDA as on the CPU build.
KNOWN_DEVIATIONS: dict[tuple[str, str], str] = {
}  # fmt: skip


def with_known(test: str, rids: list[str]) -> list[object]:
    """``rids`` as pytest parameters, the known deviations of ``test`` marked as strict expected failures."""
    return [
        pytest.param(r, marks=pytest.mark.xfail(strict=True, reason=KNOWN_DEVIATIONS[(test, r)]))
        if (test, r) in KNOWN_DEVIATIONS
        else r
        for r in rids
    ]
