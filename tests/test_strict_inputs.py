"""Inputs are strict: a file named ``.gguf`` is read as a GGUF by every command, the template commands
included, so that a broken one is the same one-line error everywhere (never a template of its bytes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ggufx.chat.sources import load
from ggufx.errors import GGUFError
from tests.support import FIXTURES, CliRun

ROOT = Path(__file__).resolve().parent.parent


def _broken(tmp_path: Path) -> dict[str, Path]:
    """GGUF-named files that are no GGUF: empty, a text file (any case of the suffix), a cut-off GGUF."""
    out = {"empty": tmp_path / "empty.gguf", "readme": tmp_path / "README.GGUF", "cut": tmp_path / "cut.gguf"}
    out["empty"].write_bytes(b"")
    shutil.copy(ROOT / "README.md", out["readme"])
    out["cut"].write_bytes((FIXTURES / "all-types-v3.gguf").read_bytes()[:100])
    return out


@pytest.mark.parametrize("which", ["empty", "readme", "cut"])
@pytest.mark.parametrize("command", [["template", "info"], ["template", "show"], ["template", "render"]])
def test_template_commands_refuse_a_broken_gguf_as_info_does(
    cli: CliRun, tmp_path: Path, which: str, command: list[str]
) -> None:
    path = str(_broken(tmp_path)[which])
    info = cli("info", path)
    assert info.exit_code == 2 and info.stderr.count("\n") == 1 and info.stderr.startswith(f"ggufx: error: {path}: ")
    r = cli(*command, path)
    assert (r.exit_code, r.stdout, r.stderr) == (2, "", info.stderr)


@pytest.mark.parametrize("which", ["empty", "readme", "cut"])
def test_the_library_reads_a_gguf_named_file_as_gguf(tmp_path: Path, which: str) -> None:
    path = _broken(tmp_path)[which]
    with pytest.raises(GGUFError) as e:
        load(str(path))
    assert e.value.path == str(path)


def test_templates_and_real_ggufs_still_load(tmp_path: Path) -> None:
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{{ messages[0].content }}")
    assert load(str(jinja)).default == "{{ messages[0].content }}"
    assert load(str(FIXTURES / "all-types-v3.gguf")).kind == "gguf"
    # a GGUF without the suffix is still recognised by its magic
    renamed = tmp_path / "model.bin"
    shutil.copy(FIXTURES / "all-types-v3.gguf", renamed)
    assert load(str(renamed)).kind == "gguf"
