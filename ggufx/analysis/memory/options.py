"""Options of the memory model that the command-line faces parse, kept apart from the modules that
use them so that parsing them imports no graph code (``mem`` without ``--mmproj`` imports no projector)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["POOLING_TYPES", "ProjectorOptions"]

# llama.cpp's --pooling values: enum llama_pooling_type from 0 (include/llama.h; -1 is unspecified: the file's)
POOLING_TYPES = ("none", "mean", "cls", "last", "rank")


@dataclass(frozen=True, slots=True)
class ProjectorOptions:
    """llama.cpp's options for the projector (common/arg.cpp): ``--image-min-tokens``,
    ``--image-max-tokens`` (None: the projector's own limits) and ``--no-mmproj-offload``
    (``offload=False``: its weights and graph stay on the CPU)."""

    image_min_tokens: int | None = None
    image_max_tokens: int | None = None
    offload: bool = True
