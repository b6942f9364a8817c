"""One graph builder per llama.cpp model (``src/models/<arch>.cpp``): a module whose ``build(c, g)``
returns the graph's logits. Which architecture uses which module is the architecture registry's
``builder`` field (:mod:`ggufx.analysis.memory.archs`): adding an architecture is one module here and
its registry entry. A module whose layers differ in ways the layer signatures of graphsim do not see
(the hyper-parameters, weights and caches of each layer) says so with ``layer_kind(il)``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ggufx.analysis.memory.archs import ARCHS, builder_of

#: the architectures whose compute graph is rebuilt
BUILT: frozenset[str] = frozenset(a.name for a in ARCHS.values() if a.builder)


def builder(arch: str) -> Callable[..., Any]:
    """The ``build`` function of an architecture's module (KeyError: none)."""
    name = builder_of(arch)
    if name is None:
        raise KeyError(arch)
    build: Callable[..., Any] = importlib.import_module(f"{__name__}.{name}").build
    return build


def layer_kind(arch: str) -> Callable[[int], object] | None:
    """The module's ``layer_kind(il)``: what else makes layer ``il``'s part of the graph differ from
    another layer's (None: nothing)."""
    name = builder_of(arch)
    if name is None:
        return None
    kind: Callable[[int], object] | None = getattr(importlib.import_module(f"{__name__}.{name}"), "layer_kind", None)
    return kind
