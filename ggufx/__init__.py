"""ggufx: audit and fix GGUF model files (llama.cpp, Ollama, LM Studio).

>>> import ggufx
>>> model = ggufx.open("model.gguf")          # headers only, never tensor data
>>> model.metadata["general.architecture"]
>>> [t.name for t in model.tensors][:3]
>>> ggufx.info("model.gguf").to_dict()        # what `ggufx info --json` prints
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ggufx.errors import (
    FormatError,
    GGUFError,
    ShardError,
    SourceError,
    TruncatedError,
    UnsupportedVersionError,
    ValidationError,
)

if TYPE_CHECKING:
    from ggufx.analysis.summary import ModelSummary
    from ggufx.io.remote import RemoteConfig
    from ggufx.model import GGUFModel

from ggufx._version import __version__

__all__ = [
    "open",
    "info",
    "GGUFError",
    "FormatError",
    "TruncatedError",
    "UnsupportedVersionError",
    "ValidationError",
    "ShardError",
    "SourceError",
    "__version__",
]


def open(path: str | os.PathLike[str], remote: RemoteConfig | None = None) -> GGUFModel:  # noqa: A001 - mirrors builtins.open on purpose
    """Parse a GGUF file's header (and its sibling shards' if it is split). Reads no tensor data.

    ``path`` may be an ``https://`` URL or ``hf://ORG/REPO[@REV]/FILE``: ``remote`` then holds the
    options (a :class:`ggufx.remote.RemoteConfig`; default :data:`ggufx.remote.CONFIG`)."""
    from ggufx.model import open_model

    return open_model(path, remote=remote)


def info(path: str | os.PathLike[str], remote: RemoteConfig | None = None) -> ModelSummary:
    """The summary ``ggufx info`` prints: same object the CLI renders as a table or JSON."""
    from ggufx.analysis.summary import summarize

    return summarize(open(path, remote=remote))
