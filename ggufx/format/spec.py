"""The GGUF container's constants and limits, as the pinned llama.cpp defines and enforces them.

Each number names where it comes from (llama.cpp ``11434.0.0``, the sdist the type table is
generated from); ``tests/test_gguf_differential.py`` reads them back from that source under the
``llamacpp`` marker. The reader checks every length against these limits *before* it reads the
bytes the length covers.
"""

from __future__ import annotations

from ggufx.format.ggml_type_table import GGML_TYPE_COUNT, LLAMA_CPP_VERSION

__all__ = [
    "GGML_MAX_DIMS",
    "align",
    "GGML_MAX_NAME",
    "GGML_TYPE_COUNT",
    "GGUF_DEFAULT_ALIGNMENT",
    "GGUF_MAGIC",
    "GGUF_MAX_ARRAY_ELEMENTS",
    "GGUF_MAX_STRING_LENGTH",
    "GGUF_VERSION",
    "INT64_MAX",
    "LLAMA_CPP_VERSION",
    "SIZE_MAX",
]

GGUF_MAGIC = b"GGUF"  # ggml/include/gguf.h:41
GGUF_VERSION = 3  # ggml/include/gguf.h:42; gguf.cpp:515 refuses newer versions, :511 version 1, :494 version 0
GGUF_DEFAULT_ALIGNMENT = 32  # ggml/include/gguf.h:46
GGML_MAX_DIMS = 4  # ggml/include/ggml.h:222; gguf.cpp:679 refuses n_dims > GGML_MAX_DIMS
GGML_MAX_NAME = 64  # ggml/include/ggml.h:229 (with the NUL); gguf.cpp:657 refuses names of 64 bytes or more
GGUF_MAX_STRING_LENGTH = 1024 * 1024 * 1024  # gguf.cpp:20, checked at :348 for every string
GGUF_MAX_ARRAY_ELEMENTS = 1024 * 1024 * 1024  # gguf.cpp:21, checked at :280 for every array
INT64_MAX = (1 << 63) - 1  # element counts: gguf.cpp:706
SIZE_MAX = (1 << 64) - 1  # tensor sizes in bytes, padded and summed: gguf.cpp:749, :805, :812


def align(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment`` (GGML_PAD)."""
    return -(-n // alignment) * alignment
