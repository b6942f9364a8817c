"""The typed results of ``mem`` (its ``--json``): the ``TypedDict`` classes, for mypy and for readers of the API.

Apart from :mod:`ggufx.results.memory`, which makes them only when one is asked for (its module
``__getattr__``): nothing reads them when ``mem`` runs, and a ``TypedDict`` compiles each field's
annotation at its creation (5.4 M instructions for these six, 1.4% of ``mem`` on the 27B replica;
issue 21).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from typing_extensions import NotRequired


class DeviceRow(TypedDict):
    """One row of llama.cpp's memory breakdown table (bytes)."""

    name: str
    free: int | None
    model: int
    context: int
    compute: int
    self: int
    output: int
    companions: int


class MemoryResult(TypedDict):
    """``mem --json``: the one-GPU summary of earlier versions (:meth:`Estimate.to_dict`), then every
    buffer per device."""

    path: str
    n_ctx: int
    cache_type_k: str
    cache_type_v: str
    parallel: int
    n_ubatch: int
    flash_attn: bool
    n_gpu_layers: int
    weights: dict[str, int]
    kv_cache: dict[str, Any]
    recurrent_state: dict[str, int]
    compute_estimate: int
    gpu_total: int
    notes: list[str]
    n_gpu_layers_requested: int
    devices: list[DeviceRow]
    buffers: list[dict[str, Any]]
    n_ctx_seq: int
    n_streams: int
    n_batch: int
    swa_cells: int
    layers_offloaded: int
    n_layer: int
    exact: list[str]
    computed: list[str]
    warnings: list[str]
    embeddings: bool  # an embedding run (llama-server --embedding, llama-embedding)
    pooling: str | None  # its pooling type (none, mean, cls, last, rank); None: no embeddings


class CheckRow(TypedDict):
    kind: str
    buft: str
    llama_cpp_mib: float | None
    ggufx_mib: float
    difference_mib: float | None
    difference_pct: float | None
    exact: bool
    ok: bool


class MemoryCheckResult(TypedDict):
    """``mem --check LOG --json``."""

    path: str
    tolerance: float
    ok: bool
    rows: list[CheckRow]
    log_devices: list[dict[str, Any]]
    pipeline_parallel: bool
    notes: list[str]


class FitResult(TypedDict):
    """``mem --fit SIZE --json``: ggufx's fits per cache type and llama.cpp's own decision."""

    path: str
    budget: int | list[int]
    margin: int
    projector_bytes: dict[str, int] | None
    fits: list[dict[str, Any]]
    llama_cpp: dict[str, Any]
    notes: NotRequired[list[str]]  # --spec-type draft-mtp: what the MTP context changes in the answer
    draft: NotRequired[DraftFit]  # -md: whether llama.cpp's decision holds the draft model


class DraftFit(TypedDict):
    """``mem --fit SIZE -md DRAFT --json``'s ``draft``: whether llama.cpp's fit counts the draft model beside the
    target (``fitted``; ``reason`` why not: then its buffers come on top of ``llama_cpp``'s figures) and the draft's
    bytes per GPU (weights, context and compute) at the decision's context."""

    path: str
    fitted: bool
    reason: str
    bytes: dict[str, int]
