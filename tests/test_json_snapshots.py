"""Every ``--json`` output (and the MCP tools that take other arguments than the CLI) is byte for
byte what tests/fixtures/json-snapshots/ recorded: the JSON interface does not change unnoticed.
An intended change regenerates them (``python -m tests.support.json_snapshots``, see its doc)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.json_snapshots import FIXTURES, Case, cases, cli_invoke, make_work, run_case, snapshot_path

CASES = cases()


@pytest.fixture(scope="session")
def snapshot_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("snapshots") / "work"
    make_work(work)
    return work


def test_every_snapshot_has_a_case() -> None:
    """No stale snapshot of a case that was removed (it would never be compared again)."""
    recorded = {p.name for p in snapshot_path(CASES[0]).parent.iterdir()}
    assert recorded == {snapshot_path(c).name for c in CASES}


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.name, marks=[pytest.mark.real] if c.real else []) for c in CASES]
)
def test_json_snapshot(case: Case, snapshot_work: Path, request: pytest.FixtureRequest) -> None:
    paths = {"F": str(FIXTURES), "W": str(snapshot_work), "H": "/nonexistent-holes"}
    if case.real:
        real = request.getfixturevalue("real_models")
        paths.update({k: str(v) for k, v in real.items()})
        if any("{H}" in a for a in case.argv):
            holes = request.getfixturevalue("hole_models")
            paths["H"] = str(next(iter(holes.values())).parent)
    else:
        paths.update({"smollm2": "/nonexistent-smollm2", "gemma": "/nonexistent-gemma"})
    expected = snapshot_path(case).read_bytes()
    assert run_case(case, cli_invoke, paths) == expected
