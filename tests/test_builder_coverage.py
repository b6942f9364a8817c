"""Issue 25's coverage, held by tests.

1. No recorded run of an architecture with a graph builder is answered by the generic decoder estimate: the
   compute buffers of every such run (the CPU build's ``llamacpp-logs-cpu/matrix`` and ``published/`` runs, the
   CUDA and CPU runs of ``llamacpp-logs/runs.json``: llama-completion, llama-server and llama-mtmd-cli) are the
   rebuilt graph's. The other tests compare compute buffers only where the graph is rebuilt
   (tests/test_arch_logs.py, tests/test_graph_logs.py) or within a tolerance (the published shapes: 1%), so a
   builder that fell back to the estimate (a tensor its check wants, an ``_unsound`` head layout, a
   hyper-parameter it reads) would pass them unseen. A run counts where llama.cpp exited 0 or, on the CPU build,
   printed its compute buffers before an abort over the zero weights (its graph was reserved). The replays are
   shared with those tests (``replay_matrix_run``, ``replay_main``): this module adds little to a full run.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import ggufx
from ggufx.analysis.memory.archs import builder_of
from ggufx.analysis.memory.buffers import Breakdown, breakdown
from ggufx.analysis.memory.llamaargs import parse_args

from .graph_arch_logs import CPU_LOGS, CPU_MATRIX, cpu_spec, replay_matrix_run
from .llamacpp_logs import RUNS, replay_main

# Recorded runs of architectures with a builder that ggufx answers with the estimate, each with why. The test
# fails when one of them stops falling back (so the list stays true) and on any run not listed.
KNOWN_FALLBACKS = {
    # -sm tensor: llama.cpp's meta device splits every weight and the graph over the GPUs; ggufx's graphs of it
    # are not rebuilt (the phase model sizes them, labelled; tests/test_memory_logs.py holds them to 5%)
    **dict.fromkeys(
        [
            "2g-l8b-smtensor-c131072-q8",
            "2g-l8b-smtensor-c32768",
            "2g-l8b-smtensor-ts3-1-c32768",
            "2g-moe-smtensor-c32768",
            "2g-q27-smtensor-c131072",
            "2g-srv-l8b-smtensor-np4",
        ],
        "phase-model estimate: -sm tensor graphs are not rebuilt",
    ),
}


def _counts(text: str) -> bool:
    """llama.cpp reserved the run's graph: it exited 0, or it printed the compute buffers before stopping."""
    return "# exit status: 0" in text or "compute buffer size" in text


def _fallback(bd: Breakdown) -> str | None:
    """Why the breakdown's compute buffers are not the rebuilt graph's (None: they are)."""
    compute = [b for b in bd.buffers if b.kind == "compute"]
    if bd.compute_estimate is not None:
        return bd.compute_estimate
    if not compute:
        return "no compute buffer"
    return next((b.reason for b in compute if b.reason), None)


def _check(fallbacks: dict[str, str], runs: list[str]) -> None:
    assert runs
    known = {r: why for r, why in KNOWN_FALLBACKS.items() if r in runs}
    table = "\n".join(f"  {r}: {why}" for r, why in sorted(fallbacks.items()))
    unexpected = {r: why for r, why in fallbacks.items() if KNOWN_FALLBACKS.get(r) != why}
    assert not unexpected, f"{len(unexpected)} of {len(runs)} runs take the generic estimate:\n{table}"
    assert fallbacks == known, f"no longer falling back (drop them from KNOWN_FALLBACKS): {set(known) - set(fallbacks)}"


def _cpu_matrix_runs() -> list[str]:
    return [
        rid
        for rid, (model, _) in CPU_MATRIX.items()
        if builder_of(cpu_spec(model)["arch"]) is not None and _counts((CPU_LOGS / f"{rid}.log").read_text())
    ]


def test_no_cpu_matrix_run_of_a_builder_falls_back(arch_models: dict[str, Path]) -> None:
    runs = _cpu_matrix_runs()
    assert len(runs) >= 1200  # 1,278 when this test was written
    fallbacks = {}
    for rid in runs:
        if why := _fallback(replay_matrix_run(rid, arch_models)[1]):
            fallbacks[rid] = why
    _check(fallbacks, runs)


PUBLISHED = sorted((CPU_LOGS / "published").glob("*.log"))


def test_no_published_cpu_run_of_a_builder_falls_back(hole_models: dict[str, Path]) -> None:
    """The published shapes on the CPU build (tests/test_arch_logs.py holds their compute to 1% only)."""
    runs, fallbacks = [], {}
    for log in PUBLISHED:
        text = log.read_text()
        command = re.search(r"^# command: \S+ (.*)$", text, re.M)
        assert command, log
        args = parse_args(command.group(1).replace("@", "").replace("--no-repack", ""))
        model = ggufx.open(hole_models[str(args.model)])
        if builder_of(model.architecture) is None or not _counts(text):
            continue
        runs.append(log.stem)
        offload = replace(args.offload, repack="--no-repack" not in command.group(1))
        if why := _fallback(breakdown(model, [], offload, args.context)):
            fallbacks[log.stem] = why
    assert len(runs) >= 40
    _check(fallbacks, runs)


def _cuda_runs() -> list[str]:
    return sorted(
        rid for rid, r in RUNS.items() if r["tool"] in ("completion", "server", "mtmd") and r["exit_status"] == 0
    )


def test_no_recorded_run_of_a_builder_falls_back(hole_models: dict[str, Path]) -> None:
    """The runs of tests/fixtures/llamacpp-logs (one and two H100s, the CPU build), with a projector, a draft model
    or an MTP context too: the main model's compute buffers, as `mem` takes the command line."""
    archs: dict[str, str | None] = {}
    runs, fallbacks = [], {}
    for rid in _cuda_runs():
        name = str(parse_args(RUNS[rid]["args"].replace("@", "")).model)
        if name not in archs:
            archs[name] = ggufx.open(hole_models[name]).architecture
        if builder_of(archs[name]) is None:
            continue
        runs.append(rid)
        if why := _fallback(replay_main(rid, hole_models)[2]):
            fallbacks[rid] = why
    assert len(runs) >= 2200  # 2,304 when this test was written
    _check(fallbacks, runs)
