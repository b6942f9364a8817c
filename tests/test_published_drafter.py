"""Gemma 4 31B's drafter of published dimensions (issue 25, session 10): google/gemma-4-31B-it-assistant's shape
(``gemma4-31b-assistant`` of models.py) reads its target's cache, so llama.cpp only loads it beside a target: it was
recorded by llama-server beside ``gemma4-31b`` (Gemma 4 31B's published dimensions), the lines of
``matrix-server-published``, as ``matrix-server``'s runs of the small pair. ``mem --check`` on each log: every buffer
of the target and of the drafter agrees with llama.cpp's, the drafter's compute buffer included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ggufx
from ggufx.analysis.memory.graph import graphsim
from tests.graph_arch_logs import CPU_LOGS, cpu_models
from tests.support import CliRun

SERVER_RUNS = [
    tuple(line.split("\t"))
    for line in (CPU_LOGS / "matrix-server-published").read_text().splitlines()
    if line.strip() and not line.startswith("#") and (CPU_LOGS / f"{line.split(chr(9))[0]}.log").exists()
]


@pytest.fixture(scope="module")
def pair(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return cpu_models(("gemma4-31b", "gemma4-31b-assistant"), smollm2_path, tmp_path_factory, "gemma4-31b-pair")


def test_the_published_drafter_is_recorded() -> None:
    """Both lines of matrix-server-published were run (llama-server stopped once the draft context existed)."""
    assert len(SERVER_RUNS) == 2
    for rid, *_ in SERVER_RUNS:
        text = (CPU_LOGS / f"{rid}.log").read_text()
        assert "# command: server -m @gemma4-31b -md @gemma4-31b-assistant" in text


def test_the_drafter_is_built_from_its_own_file(pair: dict[str, Path]) -> None:
    """4 layers of 1024 over the 31B target's 5376-wide rows, a dense head over 262,144 tokens: built, not refused."""
    model = ggufx.open(pair["gemma4-31b-assistant"])
    assert graphsim.unbuildable(model) is None
    assert model.metadata.get_int("gemma4-assistant.embedding_length_out") == 5376
    head = next(t for t in model.tensors if t.name == "token_embd.weight")
    assert tuple(head.shape) == (1024, 262144)


@pytest.mark.parametrize("rid", [r[0] for r in SERVER_RUNS])
def test_mem_check_agrees_with_the_published_drafter_runs(rid: str, cli: CliRun, pair: dict[str, Path]) -> None:
    _, target, drafter, args = next(r for r in SERVER_RUNS if r[0] == rid)
    line = f"llama-server -m {pair[target]} -md {pair[drafter]} {args} -dev none -fit off"
    r = cli("mem", "--json", "--llama-args", line, "--check", str(CPU_LOGS / f"{rid}.log"))
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert any(row["kind"] == "draft_compute" for row in rows), rows
    assert all(row["ok"] for row in rows), [row for row in rows if not row["ok"]]
