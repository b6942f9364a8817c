"""A draft model's context (issue 25): llama.cpp 11434 builds it from the target's parameters
(``common_base_params_to_speculative``, common/speculative.cpp) with as many cells as the target's context
(``cparams.n_ctx = llama_n_ctx(ctx_tgt)``) and the target's --no-mmap / --no-repack / -sm; only -ngld, -otd,
-ctkd and -ctvd are its own. It has no ``-cd``. Gemma 4's drafter reads the target's cache, so its cache types
are the target's too. Proven on the recorded llama-server runs of Gemma 4's drafter (``matrix-server``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.graph_arch_logs import CPU_LOGS, cpu_model
from tests.support import CliRun

SERVER_RUNS = [
    tuple(line.split("\t"))
    for line in (CPU_LOGS / "matrix-server").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


@pytest.fixture(scope="module")
def pair(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("draft-pair")
    return {n: cpu_model(n, out, smollm2_path) for n in ("gemma4", "gemma4-assistant")}


@pytest.mark.parametrize("rid", [r[0] for r in SERVER_RUNS])
def test_mem_check_agrees_with_every_recorded_drafter_run(rid: str, cli: CliRun, pair: dict[str, Path]) -> None:
    """`mem --check` on llama-server's log of a target and its drafter: every buffer of both agrees, the quantized
    target cache (the drafter's rotations follow it) and --no-repack (the drafter's weights are not repacked
    either) included."""
    _, target, drafter, args = next(r for r in SERVER_RUNS if r[0] == rid)
    line = f"llama-server -m {pair[target]} -md {pair[drafter]} {args} -dev none -fit off"
    r = cli("mem", "--json", "--llama-args", line, "--check", str(CPU_LOGS / f"{rid}.log"))
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert any(row["kind"].startswith("draft_") for row in rows)
    assert all(row["ok"] for row in rows), [row for row in rows if not row["ok"]]


def test_the_draft_context_holds_the_targets_cells(cli: CliRun, smollm2_path: Path, tmp_path: Path) -> None:
    """-c 0: the target's training context (8,192 for SmolLM2), also for a draft trained on 2,048 tokens."""
    draft = tmp_path / "draft.gguf"
    shutil.copyfile(smollm2_path, draft)
    assert cli("set", str(draft), "llama.context_length", "2048").exit_code == 0
    r = cli("mem", "--json", "--gpus", "none", "-md", str(draft), str(smollm2_path))
    assert r.exit_code == 0, r.output
    buffers = json.loads(r.stdout)["buffers"]
    kv = sum(b["bytes"] for b in buffers if b["kind"] == "kv")
    draft_kv = sum(b["bytes"] for b in buffers if b["kind"] == "draft_kv")
    assert kv == draft_kv == 30 * 8192 * 2 * (3 * 64) * 2  # layers x cells x K and V x KV width x f16


def test_ctx_size_draft_is_refused(cli: CliRun, smollm2_path: Path) -> None:
    r = cli("mem", "-c", "4096", "-md", str(smollm2_path), "-cd", "1024", str(smollm2_path))
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "llama.cpp has no -cd" in r.stderr, r.stderr
