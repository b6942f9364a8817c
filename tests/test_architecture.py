"""The layering contract of ARCHITECTURE.md, enforced: imports flow down only, no cycles, the faces
reach the library through results only, and the faces stay thin."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FACE_FUNCTION = 40  # lines of a function's body in cli/ or mcp/, its docstring and decorators not counted


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True)


def test_import_layers_hold() -> None:
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "3 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize(
    ("face", "target"), [("cli/inspect.py", "ggufx.analysis.summary"), ("mcp/tools.py", "ggufx.chat.samples")]
)
def test_a_face_importing_below_results_breaks_the_contract(tmp_path: Path, face: str, target: str) -> None:
    """The faces contract is not vacuous: one import of analysis or chat inside a function of a face
    (the kind of import that slipped in before) fails lint-imports."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "ggufx", copy / "ggufx", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    path = copy / "ggufx" / face
    path.write_text(path.read_text() + f"\n\ndef _sneaky() -> None:\n    import {target}  # noqa\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, '.'); from importlinter.cli import lint_imports_command; "
            "sys.argv = ['lint-imports', '--no-cache']; lint_imports_command()",
        ],
        cwd=copy,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "The faces (CLI, MCP)" in proc.stdout and "BROKEN" in proc.stdout, proc.stdout[
        -3000:
    ]


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        if len(body) == 1:
            return 0
        first = body[1]
    assert node.end_lineno is not None
    return node.end_lineno - first.lineno + 1


def test_faces_are_thin() -> None:
    """No function in cli/ or mcp/ is longer than 40 lines (options -> request -> result -> render):
    anything longer is work that belongs in results or render."""
    long = []
    for path in sorted((ROOT / "ggufx" / "cli").glob("*.py")) + sorted((ROOT / "ggufx" / "mcp").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(node) > MAX_FACE_FUNCTION:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({_body_lines(node)} lines)")
    assert not long, long


def test_body_lines_counts_what_it_should() -> None:
    fn = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n    return a\n').body[0]
    assert isinstance(fn, ast.FunctionDef) and _body_lines(fn) == 2


def test_exceptions_live_in_errors_and_are_still_where_they_were() -> None:
    import ggufx.errors as errors
    from ggufx.analysis.policy import PolicyError
    from ggufx.chat.render import RenderError
    from ggufx.mcp.access import AccessError

    assert (PolicyError, RenderError, AccessError) == (errors.PolicyError, errors.RenderError, errors.AccessError)
    assert issubclass(PolicyError, errors.GGUFError)  # a bad policy is exit code 2, like a bad file


def test_constants_the_results_repeat_are_the_memory_model_s() -> None:
    """results.memory names llama.cpp's -fa and -sm choices without importing the memory model, and results
    its -ctk/-ctv types without the type table (the CLI's options need them at start-up); they must stay the
    memory model's and the format layer's own."""
    import importlib

    import ggufx.results
    from ggufx.analysis.memory.buffers import FLASH_ATTN
    from ggufx.analysis.memory.placement import SPLIT_MODES
    from ggufx.format.ggmltypes import CACHE_TYPES

    memory = importlib.import_module("ggufx.results.memory")  # the module: results.memory is its function
    assert (memory.FLASH_ATTN, memory.SPLIT_MODES) == (FLASH_ATTN, SPLIT_MODES)
    assert ggufx.results.CACHE_TYPES == CACHE_TYPES  # the package's own tuple (the CLI's options import it)


def test_info_imports_no_memory_model() -> None:
    """The results package imports the memory model only in the functions that use it."""
    code = "import sys, ggufx.results; print(any(m.startswith('ggufx.analysis.memory') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr
