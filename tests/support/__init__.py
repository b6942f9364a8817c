"""Helpers shared by the test files: ``from tests.support import FIXTURES, CliRun``. conftest.py
holds only the pytest fixtures and hooks; nothing is imported from it."""

from tests.support.cli import CliResult, CliRun, run_cli
from tests.support.paths import (
    FIXTURES,
    GEMMA_PKGS,
    HOSTILE_TEMPLATES,
    LLAMA_CPP_VERSION,
    SMOLLM2_PKG,
    find_llama_bin,
    model_cache,
)

__all__ = [
    "FIXTURES",
    "GEMMA_PKGS",
    "HOSTILE_TEMPLATES",
    "LLAMA_CPP_VERSION",
    "SMOLLM2_PKG",
    "CliResult",
    "CliRun",
    "find_llama_bin",
    "model_cache",
    "run_cli",
]
