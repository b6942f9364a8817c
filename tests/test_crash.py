"""Crash safety: the editing process is SIGKILLed at named points and after N bytes of each write
phase (fault injection through GGUFX_FAULT). Afterwards the next ggufx command must see the old
file or the new one, byte for byte, and leave no journal or temporary file behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import ggufx
from ggufx.edit.engine import Set, edit
from ggufx.edit.safewrite import recover, supports_insert_range
from tests.support import FIXTURES

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" * 30


def _prepare(tmp_path: Path, reserve: int) -> Path:
    p = tmp_path / "model.gguf"
    shutil.copy(FIXTURES / "all-types-v3.gguf", p)
    if reserve:
        edit(p, [Set("general.name", "crash test")], reserve=reserve, strategy="rewrite")
    return p


def _expected_new(src: Path, tmp_path: Path, strategy: str) -> bytes:
    q = tmp_path / "expected.gguf"
    shutil.copy(src, q)
    edit(q, [Set("tokenizer.chat_template", TEMPLATE)], strategy=strategy)
    data = q.read_bytes()
    q.unlink()
    return data


def _killed_edit(path: Path, tmpl_file: Path, strategy: str, fault: str) -> int:
    env = {**os.environ, "GGUFX_FAULT": fault}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ggufx",
            "set",
            str(path),
            "tokenizer.chat_template",
            "--from-file",
            str(tmpl_file),
            "--strategy",
            strategy,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if "ggufx-journal" in p.name or "ggufx-tmp" in p.name)


CASES = {
    "in-place": (
        8192,
        [
            "journal-write:0",
            "journal-write:9",
            "journal-write:700",
            "journal-synced",
            "header-write:0",
            "header-write:1",
            "header-write:33",
            "header-write:400",
            "header-write:1500",
            "header-synced",
            "journal-removed",
        ],
    ),
    "insert-range": (
        0,
        [
            "journal-write:50",
            "journal-synced",
            "insert-range",
            "header-write:0",
            "header-write:100",
            "header-write:2600",
            "header-write:5000",
            "header-synced",
            "journal-removed",
        ],
    ),
    "rewrite": (0, ["tmp-write:0", "tmp-write:100", "tmp-write:2000", "tmp-synced", "renamed"]),
}
NEW_AFTER = {"journal-removed", "renamed"}


@pytest.mark.parametrize("strategy,fault", [(s, f) for s, (_, faults) in CASES.items() for f in faults])
def test_kill_during_edit_leaves_old_or_new(tmp_path: Path, strategy: str, fault: str) -> None:
    reserve, _ = CASES[strategy]
    path = _prepare(tmp_path, reserve)
    if strategy == "insert-range" and not supports_insert_range(str(path)):
        pytest.skip("filesystem without FALLOC_FL_INSERT_RANGE")
    old = path.read_bytes()
    new = _expected_new(path, tmp_path, strategy)
    assert new != old
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text(TEMPLATE)
    rc = _killed_edit(path, tmpl, strategy, fault)
    assert rc == -signal.SIGKILL, f"the fault {fault} was not reached (exit {rc})"
    # the next ggufx command (any reader) restores a consistent file first
    m = ggufx.open(path)
    after = path.read_bytes()
    expected = new if fault.split(":")[0] in NEW_AFTER else old
    assert after == expected, f"{fault}: file is neither old nor new as expected"
    assert len(m.tensors) == 9
    recover(str(path))  # an edit's recovery also removes stale temporary files
    assert _leftovers(path) == []


def test_kill_during_recovery_is_recovered_again(tmp_path: Path) -> None:
    path = _prepare(tmp_path, 8192)
    old = path.read_bytes()
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text(TEMPLATE)
    assert _killed_edit(path, tmpl, "in-place", "header-write:200") == -signal.SIGKILL
    env = {**os.environ, "GGUFX_FAULT": "recover-write:10"}
    proc = subprocess.run([sys.executable, "-m", "ggufx", "info", str(path)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    proc = subprocess.run([sys.executable, "-m", "ggufx", "info", "--json", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert path.read_bytes() == old and _leftovers(path) == []


def test_incomplete_journal_is_discarded_without_touching_the_file(tmp_path: Path) -> None:
    path = _prepare(tmp_path, 8192)
    old = path.read_bytes()
    Path(str(path) + ".ggufx-journal").write_bytes(b"GGUFXJ01" + b"\x01" * 30)  # torn, no trailer
    ggufx.open(path)
    assert path.read_bytes() == old and _leftovers(path) == []


def test_journal_for_a_different_size_is_refused(tmp_path: Path) -> None:
    path = _prepare(tmp_path, 8192)
    tmpl = tmp_path / "t.jinja"
    tmpl.write_text(TEMPLATE)
    assert _killed_edit(path, tmpl, "in-place", "header-write:200") == -signal.SIGKILL
    with open(path, "ab") as f:  # someone else appended to the file meanwhile
        f.write(b"junk")
    with pytest.raises(ggufx.GGUFError, match="changed by something other than ggufx"):
        ggufx.open(path)
