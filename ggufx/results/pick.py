"""``ggufx pick``: every model of a repository, folder or list of files held against the GPUs and a
context (the analysis is :mod:`ggufx.analysis.pick`; this is the request the faces fill)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ggufx.analysis.pick import PickResult
    from ggufx.io.remote import RemoteConfig

MiB = 1 << 20


def pick(
    sources: Sequence[str],
    gpus: str,
    *,
    ctx: int | None = None,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    mmproj: str = "auto",
    tool: str = "llama-server",
    fit_target_mib: float = 1024.0,
    llama_args: str | Sequence[str] = (),
    remote: RemoteConfig | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    allow: Callable[[str], str | None] | None = None,
) -> PickResult:
    """``gpus`` as the faces take it (``24GiB,24GiB`` or ``none``; an InputError naming ``--gpus``
    otherwise), ``fit_target_mib`` llama.cpp's ``-fitt`` in MiB; the rest as
    :func:`ggufx.analysis.pick.pick` takes it."""
    from ggufx.analysis.pick import parse_gpus
    from ggufx.analysis.pick import pick as run_pick

    return run_pick(
        list(sources),
        parse_gpus(gpus),
        n_ctx=ctx,
        cache_type_k=cache_type_k,
        cache_type_v=cache_type_v,
        mmproj=mmproj,
        tool=tool,
        margin=int(fit_target_mib * MiB),
        llama_args=llama_args,
        remote=remote,
        progress=progress,
        allow=allow,
    )
