"""Facts about ggml tensor types and llama.cpp file types.

The table is llama.cpp's own (:mod:`ggufx.format.ggml_type_table`, generated from the pinned
llama.cpp source by ``tools/gen_ggml_types.py`` and checked against it by the tests), not gguf-py's:
the gguf package on PyPI lags behind ggml (it sizes ``Q8_1`` at 40 bytes per block where ggml's
``block_q8_1`` is 36, and lacks ``Q2_0``). Names are spelled as gguf-py spells them (``Q4_K``).

A type id newer than the table is a :class:`GGMLType` with ``known=False`` and the name
``UNKNOWN(id)``; the reader then derives its size from tensor offsets. An id ggml has removed
(``Q4_0_4_4``...) is ``known=False`` with ``removed`` set to ggml's note: llama.cpp refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ggufx.format import ggml_type_table as _table

_TYPES = {tid: (name, block, size) for tid, name, block, size in _table.GGML_TYPES}
_REMOVED = {tid: (name, note) for tid, name, _block, _size, note in _table.REMOVED_GGML_TYPES}
_FILE_TYPES = {fid: name for fid, name, _label in _table.LLAMA_FTYPES}
_FILE_TYPES.update({fid: name for fid, name in _table.REMOVED_LLAMA_FTYPES})
_FTYPE_GUESS = dict(_table.FTYPE_GUESS_FROM_TYPE)


@dataclass(frozen=True, slots=True)
class GGMLType:
    """One ggml tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int
    known: bool = True
    removed: str | None = None  # ggml's note for an id it no longer supports

    @property
    def bits_per_weight(self) -> float:
        """Nominal bits per element of this type (0.0 for unknown types)."""
        return 8.0 * self.type_size / self.block_size if self.known else 0.0

    @property
    def is_quantized(self) -> bool:
        """Block-quantized (Q*, IQ*, TQ*, MXFP4...) rather than a plain float or integer type."""
        return self.known and self.name not in _table.NOT_QUANTIZED

    def nbytes(self, n_elements: int) -> int:
        """Bytes of a contiguous tensor of this type, exactly as ``ggml_nbytes`` computes them."""
        if not self.known:
            raise ValueError(f"size of {self.name} is not known")
        return n_elements // self.block_size * self.type_size

    def __str__(self) -> str:
        return self.name


@cache
def ggml_type(type_id: int) -> GGMLType:
    """The :class:`GGMLType` for a numeric id; never raises for an unknown id."""
    entry = _TYPES.get(type_id)
    if entry is not None:
        return GGMLType(type_id, *entry)
    if type_id in _REMOVED:
        name, note = _REMOVED[type_id]
        return GGMLType(type_id, name, 0, 0, known=False, removed=note)
    return GGMLType(type_id, f"UNKNOWN({type_id})", 0, 0, known=False)


@cache
def ggml_type_by_name(name: str) -> GGMLType:
    """Look a type up by the name gguf-py spells (``Q4_K``, ``iq4_xs`` is accepted too)."""
    wanted = name.upper()
    for type_id, entry in _TYPES.items():
        if entry[0] == wanted:
            return ggml_type(type_id)
    raise ValueError(f"unknown ggml type {name!r}")


def all_types() -> list[GGMLType]:
    """Every type ggml supports, ordered by nominal bits per weight."""
    types = [ggml_type(t) for t in _TYPES]
    return sorted(types, key=lambda t: (t.bits_per_weight, t.id))


def file_type_label(file_type: int | None) -> str | None:
    """``general.file_type`` as the short label quant names use (``Q4_K_M``, ``F16``...)."""
    if file_type is None:
        return None
    name = _FILE_TYPES.get(file_type)
    if name is None:
        return f"UNKNOWN({file_type})"
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def file_type_for_ggml_type(type_name: str) -> int | None:
    """The ``general.file_type`` that llama.cpp guesses from the dominant tensor type (``type_max``
    in ``llama-model-loader.cpp``)."""
    return _FTYPE_GUESS.get(type_name)


def bpw(nbytes: int, n_elements: int) -> float:
    """Bits per weight of a set of tensors, llama.cpp's definition: 8 x bytes / elements."""
    return 8.0 * nbytes / n_elements if n_elements else 0.0


# the KV cache types llama.cpp accepts for -ctk/-ctv (common/arg.cpp kv_cache_types)
CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
