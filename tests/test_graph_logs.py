"""Every recorded llama.cpp run of an architecture whose graph ggufx rebuilds: each compute buffer
equal to llama.cpp's, on every backend (CUDA0..., CUDA_Host, CPU), to the decimals the log prints
(four where it has ``~llama_context``'s line, else the two of ``sched_reserve``).

The runs are tests/fixtures/llamacpp-logs' (one and two H100s, the CPU build; header-only models of
published dimensions), ``-sm tensor``'s six included (the Meta device's buffer, ``Meta()``, and its GPUs' host
buffer). Left out: runs with a projector or a draft model (their own graphs: tests/test_projector*.py,
tests/test_memory_logs.py). A new builder's
runs join this test by being recorded; tests/test_arch_logs.py does the same for the CPU runs of the
small models of each family.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import MiB
from ggufx.analysis.memory.llamaargs import parse_args

from .llamacpp_logs import RUNS, cpu_model_archs, replay_main, with_known

# the architecture of each header-only model of the recorded runs (make_headers.py writes them)
_ARCH = {
    "smollm2-135m": "llama",
    "gemma3-270m": "gemma3",
    "llama32-1b": "llama",
    "llama31-8b": "llama",
    "qwen36-27b": "qwen35",
    "qwen3moe-30b-a3b": "qwen3moe",
    "gpt-oss-20b": "gpt-oss",
    "deepseek-v2-lite": "deepseek2",
    "deepseek-v3": "deepseek2",
    "glm45-air": "glm4moe",
    "qwen3next-80b-a3b": "qwen3next",
    "granite4-h-tiny": "granitehybrid",
    "granite33-8b": "granite",
    "lfm2-1.2b": "lfm2",
    "lfm2-8b-a1b": "lfm2moe",
    "phi35-mini": "phi3",
    "gemma2-2b": "gemma2",
    "qwen25-7b": "qwen2",
    "nemotron-h-8b": "nemotron_h",
    "falcon-h1-7b": "falcon-h1",
    "glm4-9b": "glm4",
    "smollm3-3b": "smollm3",
    "olmo2-7b": "olmo2",
    "cohere2-7b": "cohere2",
    "exaone4-1.2b": "exaone4",
    **cpu_model_archs(),  # the models of llamacpp-logs-cpu that matrix_builders.py's GPU runs loaded
}


def _runs() -> list[str]:
    out = []
    for rid, r in sorted(RUNS.items()):
        if r["tool"] not in ("completion", "server") or r["exit_status"] != 0 or rid.startswith("fiton"):
            continue  # (a -fit on run's layers and context are fit's answer: tests/test_fit_logs.py)
        args = parse_args(r["args"].replace("@", ""), server=r["tool"] == "server")
        if args.mmproj or args.draft:
            continue
        if builder_of(_ARCH[str(args.model)]) is not None:
            out.append(rid)
    return out


RUNS_BUILT = _runs()


def test_every_model_of_the_runs_is_known() -> None:
    models = {parse_args(r["args"].replace("@", ""), server=r["tool"] == "server").model for r in RUNS.values()}
    models.discard(None)
    assert {str(m) for m in models if not str(m).startswith("mmproj")} <= set(_ARCH)
    assert len(RUNS_BUILT) >= 190  # 194 runs when this test was written
    assert sum("-sm tensor" in RUNS[r]["args"] for r in RUNS_BUILT) == 6


@pytest.mark.parametrize("rid", with_known("compute", RUNS_BUILT))
def test_compute_buffers_are_llama_cpps(rid: str, hole_models: dict[str, Path]) -> None:
    text, log, bd = replay_main(rid, hole_models)
    args = parse_args(RUNS[rid]["args"].replace("@", ""), server=RUNS[rid]["tool"] == "server")
    assert ggufx.open(hole_models[str(args.model)]).architecture == _ARCH[str(args.model)]
    assert bd.compute_estimate is None, bd.compute_estimate
    ours: dict[str, int] = {}
    for b in bd.buffers:
        if b.kind == "compute":
            assert not b.reason, b.reason
            ours[b.buft] = ours.get(b.buft, 0) + b.bytes
    theirs = {k: v for k, v in log.buffers["compute"].items() if v}
    assert theirs
    digits = 4 if "compute buffer size is" in text else 2
    assert {k: round(ours.get(k, 0) / MiB, digits) for k in theirs} == theirs
    assert not {k for k, v in ours.items() if v > MiB // 100} - set(theirs)  # no buffer llama.cpp lacks
